"""Hugging Face Trainer ``trainer_state.json``: its ``log_history`` becomes lake rows.

``log_history`` holds three kinds of entries:

- train rows ``{loss, grad_norm, learning_rate, epoch, step}``      -> ``train_steps`` (``lr``, which
  some trainers write instead of ``learning_rate``, is the same column). Every other number in the
  entry (``mean_token_accuracy``, ``num_tokens``, ``rewards/margins`` ...) -> ``step_metrics`` under
  its own name; strings (``remaining_time: "3:02:11"``) and booleans are not metrics and are only
  named in a note.
- eval rows ``{eval_loss, eval_accuracy, eval_runtime, ..., step}`` -> ``eval_results``: suite
  ``hf-eval``, metric = the key without ``eval_``, ``checkpoint_step`` = step (``eval_samples``,
  where logged, is the row count ``n`` rather than a metric). Several eval sets
  (``eval_dataset={"g0": ..., "g1": ...}``) log ``eval_g0_loss``, ``eval_g0_runtime`` ...: each is
  its own suite, ``hf-eval-g0`` with metrics ``loss``, ``runtime`` .... A key ``eval_<p>_<m>`` counts
  as set ``<p>`` only where the same entry has ``eval_<p>_loss`` (the Trainer always logs the loss
  of each set), so ``eval_mean_token_accuracy`` beside ``eval_loss`` stays metric
  ``mean_token_accuracy`` of ``hf-eval``.
- the final summary ``{train_runtime, train_loss, total_flos, ...}`` -> the ``runs`` row (status
  ``completed``; the summary itself is kept in ``config_json``)

The file must be a JSON object with a ``log_history`` list; anything else (whatever its name) is
refused with what is missing, never read as another format.

Run id. Checkpoint copies of one run (``checkpoint-500/trainer_state.json`` ... and the final one)
share their first log entry and the trainer arguments (``max_steps``, ``num_train_epochs``,
``train_batch_size``, ``logging_steps``, ``eval_steps``, ``save_steps``): the id is a hash of those,
the model and the hardware, so every copy lands in one run, and ingest keeps one row per step (see
``warehouse/ingest.py``). ``--run-id`` overrides it.

Time. The file has no timestamps, so they are derived:
``ts = started_at + step / max_steps * train_runtime``, where ``started_at`` defaults to
``file mtime - train_runtime`` (the Trainer writes the file when training ends) and ``--started-at``
overrides it. Without a summary row (a file saved mid-run, or by a trainer that stopped early) the
run time is unknown: it is taken as ``mtime - --started-at``, or as zero when no start is given, in
which case every row carries the file's mtime; a note says so. The same file always gives the same
times. When several files of one run are ingested, every row of the run is re-stamped with the clock
of the most advanced file, so the series never mixes two clocks.

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

from warehouse.importers import (Parsed, Record, RunMeta, SourceError, StepClock, content_run_id, identity, json_type,
                             number, read_json)

SOURCE = "hf-trainer"
SUITE = "hf-eval"
# log_history key -> train_steps column (learning_rate wins over lr where an entry has both)
TRAIN_COLUMNS = {"step": "step", "epoch": "epoch", "loss": "loss", "learning_rate": "lr", "lr": "lr",
                 "grad_norm": "grad_norm"}
SUMMARY_KEYS = ("train_runtime", "train_loss", "total_flos", "train_samples_per_second",
                "train_steps_per_second")
# Trainer arguments written into every checkpoint's state of a run: part of the run's identity.
RUN_ARGS = ("max_steps", "num_train_epochs", "train_batch_size", "logging_steps", "eval_steps", "save_steps")


def parse(path: str, meta: RunMeta) -> Parsed:
    doc = _load(path)
    history = doc["log_history"]
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    model, family = _model_beside(os.path.dirname(os.path.abspath(path)))
    ident = identity(path, meta, "hf", model=model)
    if not meta.run_id:
        ident["run_id"] = run_id_of(doc, ident["model"], ident["hardware"]) or ident["run_id"]
    precision = {"precision": meta.precision} if meta.precision else {}

    train, evals, summary, seen = [], [], None, set()
    not_metrics: dict[str, str] = {}  # key -> JSON type, for keys that are not numbers
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
        elif any(k not in ("step", "epoch") for k in entry):
            train.append((i, entry, raw))
        else:
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
    out.clock = clock = StepClock(started, span, max_steps)

    def extras(i, e, raw, skip) -> None:
        """Numbers of an entry that have no column -> step_metrics; the rest are named in a note."""
        for k, v in e.items():
            if k in skip:
                continue
            if number(v) is None:
                not_metrics.setdefault(k, json_type(v))
                continue
            out.records.append(Record("step_metrics", {**ident, **precision, "step": e.get("step"),
                                                       "ts": clock.at(e.get("step")), "metric": k, "value": v},
                                      i, raw))

    for i, e, raw in train:
        keys = {k: col for k, col in TRAIN_COLUMNS.items() if k in e and not (k == "lr" and "learning_rate" in e)}
        if set(keys) - {"step", "epoch"}:  # a measurement, not just a step number beside extra keys
            row = {**ident, **precision, **{col: e[k] for k, col in keys.items()}, "ts": clock.at(e.get("step"))}
            out.records.append(Record("train_steps", row, i, raw))
        extras(i, e, raw, skip=set(keys) | {"step", "epoch"})

    for i, e, raw in evals:
        for suite, metric, key in eval_keys(e):
            base = {**ident, **precision, "train_run_id": ident["run_id"], "suite": suite,
                    "checkpoint_step": e.get("step"), "ts": clock.at(e.get("step"))}
            samples = e.get(key[: len(key) - len(metric)] + "samples")  # eval_<set>_samples of the same set
            if samples is not None:
                base["n"] = samples
            if metric != "samples":
                out.records.append(Record("eval_results", {**base, "metric": metric, "value": e[key]}, i, raw))
        extras(i, e, raw, skip={k for k in e if k.startswith("eval_")} | {"step", "epoch"})

    losses = [(number(e.get("step")) or 0.0, e["loss"]) for _, e, _ in train if "loss" in e]
    final_loss = max(losses, key=lambda p: p[0])[1] if losses else (summary[1].get("train_loss") if summary else None)
    config = {k: v for k, v in doc.items() if k not in ("log_history", "stateful_callbacks")}
    if summary:
        config["summary"] = summary[1]
    run = {
        **ident, **meta.run_columns(),
        "kind": "train", "source": SOURCE, "model_family": meta.model_family or family,
        "started_at": started, "ended_at": clock.ended_at if completed else None,
        "status": "completed" if completed else "running",
        "final_loss": final_loss, "steps": int(global_step),
        "config_json": json.dumps(config, sort_keys=True, default=str),
    }
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None},
                              summary[0] if summary else None, summary[2] if summary else None))
    if not_metrics:
        listed = ", ".join(f"{k} ({t})" for k, t in sorted(not_metrics.items()))
        out.notes.append(f"log_history keys that are not numbers, kept in no table: {listed}")
    return out


def eval_keys(entry: dict) -> list[tuple[str, str, str]]:
    """(suite, metric, key) of each ``eval_*`` key of an eval entry; ``metric == 'samples'`` is the
    set's row count. A set ``<p>`` exists where the entry has ``eval_<p>_loss``; the longest matching
    set wins (``eval_a_b_loss`` with sets ``a`` and ``a_b`` is set ``a_b``)."""
    sets = sorted((k[len("eval_"):-len("_loss")] for k in entry
                   if k.startswith("eval_") and k.endswith("_loss") and len(k) > len("eval__loss")),
                  key=len, reverse=True)
    out = []
    for k in entry:
        if not k.startswith("eval_"):
            continue
        rest = k[len("eval_"):]
        p = next((p for p in sets if rest.startswith(p + "_") and len(rest) > len(p) + 1), None)
        # hf-eval-<set>, the set's own dashes made underscores: rules find a set's suite by the part
        # before its last dash (sql/diagnostics/overfitting.sql)
        out.append((f"{SUITE}-{p.replace('-', '_')}", rest[len(p) + 1:], k) if p else (SUITE, rest, k))
    return out


def run_id_of(doc: dict, model: str, hardware: str) -> str | None:
    """The content-derived run id (see module docstring), or None for a file with no log entries."""
    first = next((e for e in doc.get("log_history") or [] if isinstance(e, dict)), None)
    if first is None:
        return None
    args = {k: doc[k] for k in RUN_ARGS if k in doc}
    return content_run_id("hf", {"first_log": first, "args": args, "model": model, "hardware": hardware})


def _load(path: str) -> dict:
    doc = read_json(path, "a Hugging Face trainer_state.json")
    if not isinstance(doc, dict):
        raise SourceError(f"{path}: not a Hugging Face trainer_state.json: a JSON {json_type(doc)}, "
                          f"not an object with a 'log_history' list")
    if not isinstance(doc.get("log_history"), list):
        found = ", ".join(sorted(map(str, doc))[:12]) or "none"
        what = "no 'log_history' list" if "log_history" not in doc else \
            f"'log_history' is a JSON {json_type(doc['log_history'])}, not a list"
        raise SourceError(f"{path}: not a Hugging Face trainer_state.json: {what} (top-level keys: {found})")
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
