"""MLPerf training logs: the ``:::MLLOG {json}`` lines written by mlperf-logging's ``mllog``.

Each record is ``{"namespace", "time_ms", "event_type": POINT_IN_TIME | INTERVAL_START |
INTERVAL_END, "key", "value", "metadata": {"file", "lineno", "epoch_num" | "step" | ...}}``.
The marker may follow a prefix (``0: :::MLLOG`` from multi-rank launchers); lines without it (the
benchmark's own prints) are ignored.

- ``submission_benchmark`` -> model, ``submission_platform`` -> hardware (``--model``/``--hardware``
  win), ``run_start``/``run_stop`` -> ``started_at``/``ended_at``, ``run_stop``'s ``metadata.status``
  ``success``/``aborted`` -> ``completed``/``failed`` (no ``run_stop``: ``running``); every other
  point-in-time key (``global_batch_size``, ``opt_*``, ``seed``, ``submission_*`` ...) goes into the
  run's ``config_json``. One ``runs`` row per file.
- ``eval_accuracy`` (and ``eval_loss``) -> ``eval_results``: suite ``mlperf``, metric ``accuracy``
  (``loss``), ``n`` = the logged ``eval_samples``.
- ``tracked_stats`` (value ``{throughput, loss, lr}``), ``train_loss`` and ``throughput`` ->
  ``train_steps`` (throughput is samples/s). Rows are keyed by the first of the record's
  ``metadata.step``, ``step_num``, ``samples_count``, ``epoch_num`` (``metadata.epoch_num`` also
  fills ``epoch``); one row per step, ``ts`` = its latest ``time_ms``. A record with none of them, or
  with a step that is not an integer (some logs write ``[phase, step]``), is quarantined.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from model.importers import Parsed, Record, RunMeta, SourceError, identity, number

SOURCE = "mlperf"
SUITE = "mlperf"
MARKER = ":::MLLOG"
EVAL_METRICS = {"eval_accuracy": "accuracy", "eval_loss": "loss"}
# train_steps column of each key (or tracked_stats value key); throughput is samples per second
TRAIN_VALUES = {"train_loss": "loss", "loss": "loss", "lr": "lr", "learning_rate": "lr",
                "throughput": "samples_per_s", "grad_norm": "grad_norm"}
STEP_KEYS = ("step", "step_num", "samples_count", "epoch_num")
RUN_STATUS = {"success": "completed", "aborted": "failed"}
MARKER_KEYS = ("_start", "_stop")  # interval markers: timing only, not imported


def parse(path: str, meta: RunMeta) -> Parsed:
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    events, other_lines = _read(path, out)
    info = {e["key"]: e.get("value") for _, _, e in events
            if e.get("event_type", "POINT_IN_TIME") == "POINT_IN_TIME" and not _is_row_key(e["key"])}
    ident = identity(path, meta, "mlperf", model=_text(info.get("submission_benchmark")),
                     hardware=_text(info.get("submission_platform")))
    precision = {"precision": meta.precision} if meta.precision else {}

    started = stopped = status = None
    times = []
    steps: dict[object, dict] = {}
    unmapped: set[str] = set()
    for lineno, raw, e in events:
        key, value, md = e["key"], e.get("value"), e.get("metadata")
        md = md if isinstance(md, dict) else {}
        ts = _ts(e.get("time_ms"))
        if isinstance(ts, datetime):
            times.append(ts)
        if key == "run_start" and started is None:
            started = ts
        elif key == "run_stop":
            stopped, status = ts, RUN_STATUS.get(md.get("status"))
        elif key in EVAL_METRICS:
            row = {**ident, **precision, "train_run_id": ident["run_id"], "suite": SUITE,
                   "metric": EVAL_METRICS[key], "value": value, "ts": ts}
            step = _step(md)
            if step is not None:
                row["checkpoint_step"] = step
            if "eval_samples" in info:
                row["n"] = info["eval_samples"]
            out.records.append(Record("eval_results", row, lineno, raw))
        elif key in ("tracked_stats", "train_loss", "throughput"):
            values = value if key == "tracked_stats" and isinstance(value, dict) else {key: value}
            mapped = {TRAIN_VALUES[k]: v for k, v in values.items() if k in TRAIN_VALUES}
            unmapped.update(f"{key}.{k}" if key == "tracked_stats" else k for k in values if k not in TRAIN_VALUES)
            if not mapped:
                continue
            step = _step(md)
            if step is None or isinstance(step, (list, dict)):  # cannot key it: let ingest quarantine it
                out.records.append(Record("train_steps", {**ident, **precision, **mapped, "step": step, "ts": ts},
                                          lineno, raw))
                continue
            row = steps.setdefault(json.dumps(step), {**ident, **precision, "step": step, "_at": (lineno, raw)})
            row.update(mapped)
            if "epoch_num" in md:
                row["epoch"] = md["epoch_num"]
            row["ts"] = max(row.get("ts", ts), ts) if _comparable(row.get("ts"), ts) else ts

    train_rows = []
    for row in steps.values():
        lineno, raw = row.pop("_at")
        train_rows.append(row)
        out.records.append(Record("train_steps", row, lineno, raw))

    last = max((r for r in train_rows if isinstance(r["step"], int) and "loss" in r), key=lambda r: r["step"], default=None)
    config = {k: v for k, v in info.items()}
    run = {**ident, **meta.run_columns(), "kind": "train", "source": SOURCE,
           "started_at": meta.started_at or started or (min(times) if times else None),
           "ended_at": stopped, "status": status if stopped else "running",
           "steps": max((r["step"] for r in train_rows if isinstance(r["step"], int)), default=None),
           "final_loss": last["loss"] if last else None,
           "config_json": json.dumps(config, sort_keys=True, default=str)}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))

    if unmapped:
        out.notes.append(f"MLLOG values with no lake column, not imported: {', '.join(sorted(unmapped))}")
    if other_lines:
        out.notes.append(f"{other_lines} lines without {MARKER} ignored")
    return out


def _read(path: str, out: Parsed) -> tuple[list, int]:
    """(line, raw, record) for each well-formed MLLOG record; malformed ones go to ``out`` as
    quarantine records. Also returns the count of non-MLLOG lines."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    events, other, seen = [], 0, 0
    for lineno, bline in enumerate(data.splitlines(), start=1):
        line = bline.decode("utf-8", errors="replace").rstrip()
        at = line.find(MARKER)
        if at < 0:
            other += bool(line.strip())
            continue
        seen += 1
        try:
            rec = json.loads(line[at + len(MARKER):])
        except ValueError as e:
            out.records.append(Record(None, None, lineno, line, (None, f"invalid MLLOG JSON: {e}")))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
            out.records.append(Record(None, rec, lineno, line, ("key", "MLLOG record without a string 'key'")))
            continue
        events.append((lineno, line, rec))
    if not seen:
        raise SourceError(f"{path}: no {MARKER} lines: not an MLPerf log")
    return events, other


def _is_row_key(key: str) -> bool:
    return key in EVAL_METRICS or key in ("tracked_stats", "train_loss", "throughput") or key.endswith(MARKER_KEYS)


def _step(md: dict):
    return next((md[k] for k in STEP_KEYS if md.get(k) is not None), None)


def _ts(time_ms):
    """A datetime from ``time_ms``; anything else is passed on for ingest to reject."""
    ms = number(time_ms)
    if ms is None:
        return time_ms
    try:
        return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return time_ms


def _comparable(a, b) -> bool:
    return isinstance(a, datetime) and isinstance(b, datetime)


def _text(v) -> str | None:
    return v if isinstance(v, str) and v.strip() else None
