"""MLPerf training logs: the ``:::MLLOG {json}`` lines written by mlperf-logging's ``mllog``.

Each record is ``{"namespace", "time_ms", "event_type": POINT_IN_TIME | INTERVAL_START |
INTERVAL_END, "key", "value", "metadata": {"file", "lineno", "epoch_num" | "step" | ...}}``.
The marker may follow a prefix (``0: :::MLLOG`` from multi-rank launchers); lines without it (the
benchmark's own prints) are ignored.

- ``submission_benchmark`` -> model, ``submission_platform`` -> hardware (``--model``/``--hardware``
  win), ``run_start``/``run_stop`` -> ``started_at``/``ended_at``, ``run_stop``'s ``metadata.status``
  ``success``/``aborted`` -> ``completed``/``failed`` (no ``run_stop``: ``running``); every other
  point-in-time key (``global_batch_size``, ``opt_*``, ``seed``, ``submission_*`` ...) goes into the
  run's ``config_json``. One ``runs`` row per file; its id is a hash of the benchmark, platform,
  organization, seed and ``run_start`` time, so two copies of one log are one run.
- ``eval_accuracy`` -> ``eval_results``, suite ``mlperf``, ``n`` = the logged ``eval_samples``.
  Every benchmark logs its quality under that one key, but it means something else in each: the
  metric is named for what it is, with the target of mlperf-logging's compliance rules
  (``BENCHMARKS``; kept in ``config_json`` as ``quality_targets``, with whether the run reached
  it), so a falling log-perplexity reads as progress, not as a falling accuracy. Stable diffusion
  logs FID and CLIP score under the same key, told apart by ``metadata.metric``; Mask R-CNN logs
  ``{"BBOX": .., "SEGM": ..}``. ``eval_loss`` -> metric ``loss``. A benchmark not in the table keeps
  metric ``accuracy`` and a note says its direction is unknown.
- ``tracked_stats`` (value ``{throughput, loss, lr, ...}``), ``train_loss`` and ``throughput`` ->
  ``train_steps`` (throughput is samples/s; ``current_lr`` is ``lr``, ``loss_scale`` its column);
  other numbers in ``tracked_stats`` -> ``step_metrics``. Rows are keyed by the first of the
  record's ``metadata.step``, ``step_num``, ``samples_count``, ``epoch_num`` (``metadata.epoch_num``
  also fills ``epoch``); one row per step, ``ts`` = its latest ``time_ms``. A fractional value
  (DLRM logs evals at epoch 0.05, 0.10 ...) is an epoch fraction: it becomes samples seen,
  ``round(x * train_samples)``, the unit BERT and GPT-3 logs already use. A record with none of
  them, or with a step that is not a number (some logs write ``[phase, step]``), is quarantined.
- A value logged twice for one step and metric (stable diffusion re-reports its final FID) keeps
  the later line (ingest keeps one row per key and says so).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from warehouse.importers import (Parsed, Record, RunMeta, SourceError, content_run_id, cut_raw, identity,
                             line_too_long, number, read_lines)

SOURCE = "mlperf"
SUITE = "mlperf"
MARKER = ":::MLLOG"
EVAL_KEYS = ("eval_accuracy", "eval_loss")
# train_steps column of each key (or tracked_stats value key); throughput is samples per second
TRAIN_VALUES = {"train_loss": "loss", "loss": "loss", "lr": "lr", "learning_rate": "lr", "current_lr": "lr",
                "throughput": "samples_per_s", "grad_norm": "grad_norm", "loss_scale": "loss_scale"}
STEP_KEYS = ("step", "step_num", "samples_count", "epoch_num")
RUN_STATUS = {"success": "completed", "aborted": "failed"}
MARKER_KEYS = ("_start", "_stop")  # interval markers: timing only, not imported

# What each benchmark's eval_accuracy is: (metric, higher is better, target). Targets are the
# ATLEAST_ONE_CHECK bounds of mlperf-logging's compliance rules, training_3.0.0 to training_5.1.0
# (mlperf_logging/compliance_checker/training_*/closed_<benchmark>.yaml); they did not change
# across those versions. Dict-valued or metadata-named evals map each part to its own metric.
BENCHMARKS: dict[str, tuple[str, bool, float]] = {
    "bert": ("mlm_accuracy", True, 0.720),               # masked-LM accuracy
    "dlrm": ("auc", True, 0.8025),
    "dlrm_dcnv2": ("auc", True, 0.80275),
    "gpt3": ("log_perplexity", False, 2.69),
    "llama2_70b_lora": ("loss", False, 0.925),          # eval loss of the fine-tune
    "llama31_405b": ("log_perplexity", False, 5.6),
    "llama31_8b": ("log_perplexity", False, 3.3),
    "flux1": ("loss", False, 0.586),                     # validation loss
    "resnet": ("top1_accuracy", True, 0.759),
    "ssd": ("map", True, 0.340),
    "retinanet": ("map", True, 0.340),
    "unet3d": ("dice", True, 0.908),                     # mean dice
    "rnnt": ("wer", False, 0.058),
    "minigo": ("win_rate", True, 0.5),
    "gnn": ("accuracy", True, 0.72),
    "rgat": ("accuracy", True, 0.72),
}
# Parts of evals that carry several metrics: metadata.metric (stable diffusion) or dict keys (maskrcnn).
PART_METRICS: dict[tuple[str, str], tuple[str, bool, float]] = {
    ("stable_diffusion", "FID"): ("fid", False, 90.0),
    ("stable_diffusion", "CLIP"): ("clip_score", True, 0.15),
    ("maskrcnn", "BBOX"): ("bbox_map", True, 0.377),
    ("maskrcnn", "SEGM"): ("segm_map", True, 0.339),
}


def parse(path: str, meta: RunMeta) -> Parsed:
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    events, other_lines = _read(path, out)
    info = {e["key"]: e.get("value") for _, _, e in events
            if e.get("event_type", "POINT_IN_TIME") == "POINT_IN_TIME" and not _is_row_key(e["key"])}
    benchmark = _text(info.get("submission_benchmark"))
    ident = identity(path, meta, "mlperf", model=benchmark, hardware=_text(info.get("submission_platform")),
                     run_id=_run_id(events, info))
    precision = {"precision": meta.precision} if meta.precision else {}
    train_samples = number(info.get("train_samples"))

    started = stopped = status = None
    times = []
    steps: dict[object, dict] = {}
    unmapped: set[str] = set()
    converted = []
    targets: dict[str, dict] = {}
    for lineno, raw, e in events:
        key, value, md = e["key"], e.get("value"), e.get("metadata")
        md = md if isinstance(md, dict) else {}
        ts = _ts(e.get("time_ms"))
        if isinstance(ts, datetime):
            times.append(ts)
        step = _step(md)
        if isinstance(number(step), float) and not float(step).is_integer() and train_samples:
            converted.append(step)
            step = int(round(step * train_samples))
        if key == "run_start" and started is None:
            started = ts
        elif key == "run_stop":
            stopped, status = ts, RUN_STATUS.get(md.get("status"))
        elif key in EVAL_KEYS:
            base = {**ident, **precision, "train_run_id": ident["run_id"], "suite": SUITE, "ts": ts}
            if step is not None:
                base["checkpoint_step"] = step
            if "eval_samples" in info:
                base["n"] = info["eval_samples"]
            for metric, v, target in _eval_parts(benchmark, key, value, md):
                out.records.append(Record("eval_results", {**base, "metric": metric, "value": v}, lineno, raw))
                if target:
                    t = targets.setdefault(metric, {"target": target[1], "higher_is_better": target[0], "reached": False})
                    t["reached"] |= number(v) is not None and (v >= t["target"] if target[0] else v <= t["target"])
        elif key in ("tracked_stats", "train_loss", "throughput"):
            values = value if key == "tracked_stats" and isinstance(value, dict) else {key: value}
            mapped = {TRAIN_VALUES[k]: v for k, v in values.items() if k in TRAIN_VALUES}
            extra = {k: v for k, v in values.items() if k not in TRAIN_VALUES}
            unmapped.update(f"{key}.{k}" if key == "tracked_stats" else k for k, v in extra.items() if number(v) is None)
            for k, v in extra.items():
                if number(v) is not None:
                    out.records.append(Record("step_metrics", {**ident, **precision, "step": step, "ts": ts,
                                                               "metric": k, "value": v}, lineno, raw))
            if not mapped:
                continue
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
    config = dict(info)
    if targets:
        config["quality_targets"] = targets
    run = {**ident, **meta.run_columns(), "kind": "train", "source": SOURCE,
           "started_at": meta.started_at or started or (min(times) if times else None),
           "ended_at": stopped, "status": status if stopped else "running",
           "steps": max((r["step"] for r in train_rows if isinstance(r["step"], int)), default=None),
           "final_loss": last["loss"] if last else None,
           "config_json": json.dumps(config, sort_keys=True, default=str)}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))

    if benchmark and benchmark not in BENCHMARKS and not any(b == benchmark for b, _ in PART_METRICS):
        out.notes.append(f"benchmark {benchmark!r} is not in the importer's table: eval_accuracy kept as metric "
                         f"'accuracy', whose direction is unknown")
    if converted:
        out.notes.append(f"{len(converted)} fractional epoch values (e.g. {converted[0]}) stored as samples seen "
                         f"(x train_samples {int(train_samples)})")
    if unmapped:
        out.notes.append(f"MLLOG values that are not numbers, not imported: {', '.join(sorted(unmapped))}")
    if other_lines:
        out.notes.append(f"{other_lines} lines without {MARKER} ignored")
    return out


def _eval_parts(benchmark: str | None, key: str, value, md: dict):
    """(metric, value, (higher_is_better, target) | None) for each metric an eval record carries."""
    if key == "eval_loss":
        yield "loss", value, None
        return
    part = md.get("metric")
    if isinstance(part, str) and (benchmark, part) in PART_METRICS:
        m, hib, target = PART_METRICS[(benchmark, part)]
        yield m, value, (hib, target)
    elif isinstance(value, dict):  # {"BBOX": .., "SEGM": ..}
        for k, v in value.items():
            m, hib, target = PART_METRICS.get((benchmark, k), (f"{str(k).lower()}", None, None))
            yield m, v, (hib, target) if target is not None else None
    elif benchmark in BENCHMARKS:
        m, hib, target = BENCHMARKS[benchmark]
        yield m, value, (hib, target)
    else:
        yield "accuracy", value, None


def _run_id(events: list, info: dict) -> str | None:
    """Content id: what any copy of this log says about the run (see module docstring)."""
    start = next((e.get("time_ms") for _, _, e in events if e["key"] == "run_start"), None)
    shared = {k: info.get(k) for k in ("submission_benchmark", "submission_platform", "submission_org", "seed")}
    if start is None and not any(shared.values()):
        return None
    return content_run_id("mlperf", {**shared, "run_start_ms": start})


def _read(path: str, out: Parsed) -> tuple[list, int]:
    """(line, raw, record) for each well-formed MLLOG record; malformed ones go to ``out`` as
    quarantine records. Also returns the count of non-MLLOG lines."""
    events, other, seen = [], 0, 0
    try:
        with open(path, "rb") as f:
            for lineno, bline, size in read_lines(f):
                line = bline.decode("utf-8", errors="replace").rstrip()
                at = line.find(MARKER)
                if at < 0:
                    other += bool(line.strip())
                    continue
                seen += 1
                if size is not None:  # over the line bound (the marker in its head): rejected unparsed
                    out.records.append(Record(None, None, lineno, cut_raw(line, size), (None, line_too_long(size))))
                    continue
                try:
                    rec = json.loads(line[at + len(MARKER):])
                except ValueError as e:
                    out.records.append(Record(None, None, lineno, line, (None, f"invalid MLLOG JSON: {e}")))
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                    out.records.append(Record(None, rec, lineno, line, ("key", "MLLOG record without a string 'key'")))
                    continue
                events.append((lineno, line, rec))
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    if not seen:
        raise SourceError(f"{path}: no {MARKER} lines: not an MLPerf log")
    return events, other


def _is_row_key(key: str) -> bool:
    return key in EVAL_KEYS or key in ("tracked_stats", "train_loss", "throughput") or key.endswith(MARKER_KEYS)


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
