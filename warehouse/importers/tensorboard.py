"""TensorBoard event files: scalar summaries become ``train_steps`` and ``eval_results`` rows.

A source is one event file, or one folder of them (a run; ``mhw ingest LOGDIR`` makes each folder
under LOGDIR that holds event files a source). Events are read with tensorboard's own
``EventFileLoader``, which also upgrades old ``simple_value`` scalars to the tensor form.

Mapping, by tag (compared lower-case; the names are shared with MLflow, ``warehouse/importers/names.py``):

- a tag in ``TRAIN_ALIASES`` sets that ``train_steps`` column at the event's step (one row per step;
  ``ts`` = the latest wall time among the step's events);
- a tag starting with one of ``EVAL_PREFIXES`` is an ``eval_results`` row: suite ``tb-eval``, metric =
  the tag without the prefix (``eval/accuracy`` -> ``accuracy``), ``checkpoint_step`` = step,
  ``ts`` = wall time; ``test/`` and ``test_`` tags likewise, in suite ``tb-test`` (another data set);
- Keras' TensorBoard callback writes ``logs/train/`` and ``logs/validation/`` with the same tags
  (``epoch_loss``, ``epoch_accuracy``, step = epoch): in a folder named ``validation`` the
  ``epoch_*`` tags are evals of suite ``tb-eval`` (``epoch_loss`` -> metric ``loss``);
- any other scalar tag -> ``step_metrics`` under its own name (``train/total_flos``,
  ``epoch_accuracy`` ...), so no scalar is dropped; non-scalar summaries (images, histograms, text,
  hparams) are not imported and a note lists them.

Scalars are stored by TensorBoard as float32, so values read back are float32-rounded. A value logged
twice for the same tag and step (a resumed run) keeps the later one. One ``runs`` row per source:
``started_at``/``ended_at`` = first/last event wall time, ``steps`` = last step, ``final_loss`` =
loss at that step; ``status`` is left empty (event files do not say how a run ended). The run id is
a hash of the run's first event file as its writer named it (``events.out.tfevents.<time>.<host>.<pid>
...``, unique per writer) and that file's first wall time, so a copy of the logs elsewhere is the same
run and files a resumed run adds later do not change it; ``--run-id`` overrides it.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from warehouse.importers import Parsed, Record, RunMeta, SourceError, content_run_id, identity, is_event_file
from warehouse.importers.names import EVAL_PREFIXES, TRAIN_ALIASES, eval_split  # noqa: F401 (docs read them here)

SOURCE = "tensorboard"
SUITE = "tb-eval"
SUITES = {"eval": SUITE, "test": "tb-test"}


def parse(path: str, meta: RunMeta) -> Parsed:
    files = _event_files(path)
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    precision = {"precision": meta.precision} if meta.precision else {}

    points, wall_times, other_plugins, firsts = [], [], set(), []
    for f in files:
        n_events = 0
        for index, event in enumerate(_events(f), start=1):
            if n_events == 0:
                firsts.append((event.wall_time, _writer_name(f)))
            n_events += 1
            wall_times.append(event.wall_time)
            for v in event.summary.value:
                value = _scalar(v)
                if value is None:
                    other_plugins.add(v.metadata.plugin_data.plugin_name or "unknown")
                    continue
                points.append((event.wall_time, event.step, v.tag, value, f, index))
        if n_events == 0:
            raise SourceError(f"{f}: no TensorBoard events in the file (empty, or not an event file)")
    points.sort(key=lambda p: p[0])  # later values of a (tag, step) win
    first_wall, first_name = min(firsts)
    ident = identity(path, meta, "tb", run_id=content_run_id("tb", {"first_file": first_name, "wall_time": first_wall}))

    keras_validation = os.path.basename(os.path.dirname(os.path.abspath(files[0]))) == "validation"
    steps: dict[int, dict] = {}
    evals: dict[tuple[str, str, int], tuple] = {}
    extra: dict[tuple[str, int], tuple] = {}
    for wall, step, tag, value, fpath, index in points:
        key = tag.lower()
        split = eval_split(tag) or (("eval", tag[len("epoch_"):]) if keras_validation and key.startswith("epoch_")
                                    and len(key) > len("epoch_") else None)
        if split:
            evals[(SUITES[split[0]], split[1], step)] = (wall, value, tag, fpath, index)
        elif key in TRAIN_ALIASES:
            column, factor = TRAIN_ALIASES[key]
            row = steps.setdefault(step, {"_at": (fpath, index), "_tags": {}})
            row[column] = value * factor
            row["_tags"][tag] = value
            row["ts"] = max(row.get("ts", wall), wall)
        else:
            extra[(tag, step)] = (wall, value, fpath, index)

    for step in sorted(steps):
        row = steps[step]
        (fpath, index), tags = row.pop("_at"), row.pop("_tags")
        raw = json.dumps({"file": os.path.basename(fpath), "step": step, "wall_time": row["ts"], "tags": tags})
        out.records.append(Record("train_steps", {**ident, **precision, **row, "step": step, "ts": _utc(row["ts"])},
                                  index, raw, file=fpath))
    for (suite, metric, step), (wall, value, tag, fpath, index) in sorted(evals.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        raw = json.dumps({"file": os.path.basename(fpath), "step": step, "wall_time": wall, "tag": tag, "value": value})
        out.records.append(Record("eval_results", {
            **ident, **precision, "train_run_id": ident["run_id"], "suite": suite, "metric": metric,
            "value": value, "checkpoint_step": step, "ts": _utc(wall)}, index, raw, file=fpath))
    for (tag, step), (wall, value, fpath, index) in sorted(extra.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        raw = json.dumps({"file": os.path.basename(fpath), "step": step, "wall_time": wall, "tag": tag, "value": value})
        out.records.append(Record("step_metrics", {**ident, **precision, "step": step, "ts": _utc(wall),
                                                   "metric": tag, "value": value}, index, raw, file=fpath))

    last = max(steps) if steps else None
    run = {**ident, **meta.run_columns(), "kind": "train", "source": SOURCE,
           "started_at": meta.started_at or _utc(min(wall_times)), "ended_at": _utc(max(wall_times)),
           "steps": last, "final_loss": steps[last].get("loss") if last is not None else None}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))

    if extra:
        counts: dict[str, int] = {}
        for tag, _ in extra:
            counts[tag] = counts.get(tag, 0) + 1
        listed = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items()))
        out.notes.append(f"scalar tags with no train_steps column, kept in step_metrics (points): {listed}")
    if other_plugins:
        out.notes.append(f"non-scalar summaries not imported: {', '.join(sorted(other_plugins))}")
    return out


def _writer_name(path: str) -> str:
    """The event file's name as TensorBoard's writer made it (a prefix added by a copy is dropped)."""
    name = os.path.basename(path)
    at = name.find("events.out.tfevents")
    return name[at:] if at >= 0 else name


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
