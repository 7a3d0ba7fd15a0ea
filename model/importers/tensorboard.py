"""TensorBoard event files: scalar summaries become ``train_steps`` and ``eval_results`` rows.

A source is one event file, or one folder of them (a run; ``mhw ingest LOGDIR`` makes each folder
under LOGDIR that holds event files a source). Events are read with tensorboard's own
``EventFileLoader``, which also upgrades old ``simple_value`` scalars to the tensor form.

Mapping, by tag (compared lower-case):

- a tag in ``TRAIN_ALIASES`` sets that ``train_steps`` column at the event's step (one row per step;
  ``ts`` = the latest wall time among the step's events);
- a tag starting with one of ``EVAL_PREFIXES`` is an ``eval_results`` row: suite ``tb-eval``, metric =
  the tag without the prefix (``eval/accuracy`` -> ``accuracy``), ``checkpoint_step`` = step,
  ``ts`` = wall time;
- any other tag (and non-scalar summaries: images, histograms, text) is not imported; a note lists them.

Scalars are stored by TensorBoard as float32, so values read back are float32-rounded. A value logged
twice for the same tag and step (a resumed run) keeps the later one. One ``runs`` row per source:
``started_at``/``ended_at`` = first/last event wall time, ``steps`` = last step, ``final_loss`` =
loss at that step; ``status`` is left empty (event files do not say how a run ended).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from model.importers import Parsed, Record, RunMeta, SourceError, identity, is_event_file

SOURCE = "tensorboard"
SUITE = "tb-eval"

# tag (lower-case) -> (train_steps column, factor applied to the value)
TRAIN_ALIASES: dict[str, tuple[str, float]] = {
    **{t: ("loss", 1.0) for t in ("loss", "train/loss", "train_loss", "training/loss", "loss/train")},
    **{t: ("lr", 1.0) for t in ("lr", "learning_rate", "train/lr", "train/learning_rate", "optimizer/lr")},
    **{t: ("grad_norm", 1.0) for t in ("grad_norm", "train/grad_norm", "gradient_norm", "train/gradient_norm")},
    **{t: ("epoch", 1.0) for t in ("epoch", "train/epoch")},
    **{t: ("tokens_per_s", 1.0) for t in ("tokens_per_s", "tokens_per_sec", "tokens_per_second",
                                          "train/tokens_per_s", "train/tokens_per_second",
                                          "throughput/tokens_per_sec", "perf/tokens_per_sec")},
    **{t: ("samples_per_s", 1.0) for t in ("samples_per_s", "samples_per_sec", "samples_per_second",
                                           "train/samples_per_s", "train/samples_per_second",
                                           "throughput", "throughput/samples_per_sec", "perf/samples_per_sec")},
    **{t: ("step_time_ms", 1.0) for t in ("step_time_ms", "train/step_time_ms", "perf/step_time_ms")},
    **{t: ("step_time_ms", 1000.0) for t in ("step_time", "step_time_s", "train/step_time", "perf/step_time")},
    **{t: ("data_time_ms", 1.0) for t in ("data_time_ms", "train/data_time_ms")},
    **{t: ("loss_scale", 1.0) for t in ("loss_scale", "train/loss_scale", "amp/loss_scale")},
    **{t: ("mfu", 1.0) for t in ("mfu", "train/mfu", "perf/mfu")},
    **{t: ("gpu_mem_gb", 1.0) for t in ("gpu_mem_gb", "train/gpu_mem_gb", "memory/gpu_gb")},
}
EVAL_PREFIXES = ("eval/", "eval_", "val/", "val_", "validation/", "valid/")


def parse(path: str, meta: RunMeta) -> Parsed:
    files = _event_files(path)
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    ident = identity(path, meta, "tb")
    precision = {"precision": meta.precision} if meta.precision else {}

    points, wall_times, other_plugins = [], [], set()
    for f in files:
        n_events = 0
        for index, event in enumerate(_events(f), start=1):
            n_events += 1
            wall_times.append(event.wall_time)
            for v in event.summary.value:
                value = _scalar(v)
                if value is None:
                    other_plugins.add(v.metadata.plugin_data.plugin_name or "unknown")
                    continue
                points.append((event.wall_time, event.step, v.tag, value, os.path.basename(f), index))
        if n_events == 0:
            raise SourceError(f"{f}: no TensorBoard events in the file (empty, or not an event file)")
    points.sort(key=lambda p: p[0])  # later values of a (tag, step) win

    steps: dict[int, dict] = {}
    evals: dict[tuple[str, int], tuple] = {}
    unmapped: dict[str, int] = {}
    for wall, step, tag, value, fname, index in points:
        key = tag.lower()
        if key in TRAIN_ALIASES:
            column, factor = TRAIN_ALIASES[key]
            row = steps.setdefault(step, {"_at": (fname, index), "_tags": {}})
            row[column] = value * factor
            row["_tags"][tag] = value
            row["ts"] = max(row.get("ts", wall), wall)
        elif key.startswith(EVAL_PREFIXES):
            prefix = next(p for p in EVAL_PREFIXES if key.startswith(p))
            evals[(tag[len(prefix):], step)] = (wall, value, tag, fname, index)
        else:
            unmapped[tag] = unmapped.get(tag, 0) + 1

    for step in sorted(steps):
        row = steps[step]
        (fname, index), tags = row.pop("_at"), row.pop("_tags")
        raw = json.dumps({"file": fname, "step": step, "wall_time": row["ts"], "tags": tags})
        out.records.append(Record("train_steps", {**ident, **precision, **row, "step": step, "ts": _utc(row["ts"])},
                                  index, raw))
    for (metric, step), (wall, value, tag, fname, index) in sorted(evals.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        raw = json.dumps({"file": fname, "step": step, "wall_time": wall, "tag": tag, "value": value})
        out.records.append(Record("eval_results", {
            **ident, **precision, "train_run_id": ident["run_id"], "suite": SUITE, "metric": metric,
            "value": value, "checkpoint_step": step, "ts": _utc(wall)}, index, raw))

    last = max(steps) if steps else None
    run = {**ident, **meta.run_columns(), "kind": "train", "source": SOURCE,
           "started_at": meta.started_at or _utc(min(wall_times)), "ended_at": _utc(max(wall_times)),
           "steps": last, "final_loss": steps[last].get("loss") if last is not None else None}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))

    if unmapped:
        listed = ", ".join(f"{t} ({n})" for t, n in sorted(unmapped.items()))
        out.notes.append(f"scalar tags with no alias, not imported (points): {listed}")
    if other_plugins:
        out.notes.append(f"non-scalar summaries not imported: {', '.join(sorted(other_plugins))}")
    return out


def _event_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if is_event_file(f))
        if files:
            return files
    raise SourceError(f"{path}: no TensorBoard event files (*tfevents*) here")


def _events(path: str):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        yield from EventFileLoader(path).Load()
    except Exception as e:  # the loader raises assorted errors on files that are not event files
        raise SourceError(f"{path}: cannot read TensorBoard events: {e}") from e


def _scalar(v) -> float | None:
    """The value of a scalar summary (after the loader's upgrade to tensors), else None."""
    if v.HasField("simple_value"):
        return float(v.simple_value)
    if v.metadata.plugin_data.plugin_name != "scalars" or not v.HasField("tensor"):
        return None
    from tensorboard.util import tensor_util

    arr = tensor_util.make_ndarray(v.tensor)
    return float(arr.item()) if arr.size == 1 else None


def _utc(wall_time: float) -> datetime:
    return datetime.fromtimestamp(wall_time, tz=timezone.utc)
