"""Hugging Face Trainer ``trainer_state.json``: its ``log_history`` becomes lake rows.

``log_history`` holds three kinds of entries:

- train rows ``{loss, grad_norm, learning_rate, epoch, step}``      -> ``train_steps``
- eval rows ``{eval_loss, eval_accuracy, eval_runtime, ..., step}`` -> ``eval_results``: suite
  ``hf-eval``, metric = the key without ``eval_``, ``checkpoint_step`` = step (``eval_samples``,
  where logged, is the row count ``n`` rather than a metric)
- the final summary ``{train_runtime, train_loss, total_flos, ...}`` -> the ``runs`` row (status
  ``completed``; the summary itself is kept in ``config_json``)

Time. The file has no timestamps, so they are derived:
``ts = started_at + step / max_steps * train_runtime``, where ``started_at`` defaults to
``file mtime - train_runtime`` (the Trainer writes the file when training ends) and ``--started-at``
overrides it. Without a summary row (a file saved mid-run, or by a trainer that stopped early) the
run time is unknown: it is taken as ``mtime - --started-at``, or as zero when no start is given, in
which case every row carries the file's mtime; a note says so.

A run whose summary is missing still counts as ``completed`` when ``global_step >= max_steps``;
otherwise it is ``running`` (as of the file). ``final_loss`` is the last logged training loss,
else the summary's mean ``train_loss``. The quarantine ``line`` of a row is its 1-based index in
``log_history``. An entry repeated verbatim is kept once: it says nothing new and would be
counted twice.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from model.importers import Parsed, Record, RunMeta, SourceError, identity, number

SOURCE = "hf-trainer"
SUITE = "hf-eval"
# log_history key -> train_steps column
TRAIN_COLUMNS = {"step": "step", "epoch": "epoch", "loss": "loss", "learning_rate": "lr",
                 "grad_norm": "grad_norm"}
SUMMARY_KEYS = ("train_runtime", "train_loss", "total_flos", "train_samples_per_second",
                "train_steps_per_second")


def parse(path: str, meta: RunMeta) -> Parsed:
    doc = _load(path)
    history = doc["log_history"]
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    model, family = _model_beside(os.path.dirname(os.path.abspath(path)))
    ident = identity(path, meta, "hf", model=model)
    precision = {"precision": meta.precision} if meta.precision else {}

    train, evals, summary, ignored, seen = [], [], None, set(), set()
    for i, entry in enumerate(history, start=1):
        raw = json.dumps(entry, sort_keys=True)
        if not isinstance(entry, dict):
            out.records.append(Record("train_steps", entry, i, raw, (None, "log_history entry is not an object")))
            continue
        if raw in seen:
            out.notes.append(f"log_history entry {i} repeats an earlier one verbatim; kept once")
            continue
        seen.add(raw)
        if "train_runtime" in entry:
            summary = (i, entry, raw)
        elif any(k.startswith("eval_") for k in entry):
            evals.append((i, entry, raw))
        elif any(k in entry for k in ("loss", "grad_norm", "learning_rate")):
            train.append((i, entry, raw))
        else:
            ignored.update(entry)
            out.notes.append(f"log_history entry {i} has no train, eval or summary keys; skipped: {raw}")

    steps = [s for _, e, _ in train + evals for s in [number(e.get("step"))] if s is not None]
    global_step = number(doc.get("global_step")) or (max(steps) if steps else 0.0)
    max_steps = number(doc.get("max_steps")) or global_step
    completed = summary is not None or (max_steps > 0 and global_step >= max_steps)

    # Derive the clock (see module docstring).
    mtime = datetime.fromtimestamp(os.path.getmtime(path), tz=timezone.utc)
    runtime = number(summary[1].get("train_runtime")) if summary else None
    if runtime is not None:
        started = meta.started_at or mtime - timedelta(seconds=runtime)
        span = runtime
    else:
        started = meta.started_at or mtime
        span = max(0.0, (mtime - started).total_seconds())
        out.notes.append(
            "no train_runtime summary in log_history, so the run time is unknown: "
            + ("rows spread evenly by step from --started-at to the file's mtime" if meta.started_at else
               "every row stamped with the file's mtime (pass --started-at to spread them by step)"))

    def ts(step):
        s = number(step)
        if s is None:
            return None
        frac = s / max_steps if max_steps else 0.0
        return started + timedelta(seconds=frac * span)

    for i, e, raw in train:
        row = {**ident, **precision}
        row.update({col: e[k] for k, col in TRAIN_COLUMNS.items() if k in e})
        row["ts"] = ts(e.get("step"))
        extra = sorted(set(e) - set(TRAIN_COLUMNS))
        ignored.update(extra)
        out.records.append(Record("train_steps", row, i, raw))

    for i, e, raw in evals:
        base = {**ident, **precision, "train_run_id": ident["run_id"], "suite": SUITE,
                "checkpoint_step": e.get("step"), "ts": ts(e.get("step"))}
        if "eval_samples" in e:
            base["n"] = e["eval_samples"]
        for k, v in e.items():
            if k.startswith("eval_") and k != "eval_samples":
                out.records.append(Record("eval_results", {**base, "metric": k[len("eval_"):], "value": v}, i, raw))
            elif k not in ("step", "epoch", "eval_samples"):
                ignored.add(k)

    losses = [(number(e.get("step")) or 0.0, e["loss"]) for _, e, _ in train if "loss" in e]
    final_loss = max(losses, key=lambda p: p[0])[1] if losses else (summary[1].get("train_loss") if summary else None)
    config = {k: v for k, v in doc.items() if k not in ("log_history", "stateful_callbacks")}
    if summary:
        config["summary"] = summary[1]
    run = {
        **ident, **meta.run_columns(),
        "kind": "train", "source": SOURCE, "model_family": meta.model_family or family,
        "started_at": started, "ended_at": started + timedelta(seconds=span) if completed else None,
        "status": "completed" if completed else "running",
        "final_loss": final_loss, "steps": int(global_step),
        "config_json": json.dumps(config, sort_keys=True, default=str),
    }
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None},
                              summary[0] if summary else None, summary[2] if summary else None))
    if ignored:
        out.notes.append(f"log_history keys with no lake column, not imported: {', '.join(sorted(ignored))}")
    return out


def _load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    except ValueError as e:
        raise SourceError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("log_history"), list):
        raise SourceError(f"{path}: not a trainer_state.json (no log_history list)")
    return doc


def _model_beside(folder: str) -> tuple[str | None, str | None]:
    """The model name and family from the checkpoint's own config.json (or a PEFT adapter_config.json)
    in the same folder, where present."""
    model = family = None
    for name, model_key, family_key in (("config.json", "_name_or_path", "model_type"),
                                        ("adapter_config.json", "base_model_name_or_path", None)):
        try:
            with open(os.path.join(folder, name)) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(cfg, dict):
            continue
        if not model and isinstance(cfg.get(model_key), str) and cfg[model_key]:
            model = cfg[model_key]
        if not family and family_key and isinstance(cfg.get(family_key), str) and cfg[family_key]:
            family = cfg[family_key]
    return model, family
