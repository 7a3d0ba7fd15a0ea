"""MLflow's file store: one run folder of ``mlruns/<experiment_id>/<run_id>/`` is one source.

``mhw ingest mlruns/`` finds every run folder in the store (``warehouse/importers/__init__.sources``);
a run folder or an experiment folder works too. A run folder holds:

- ``meta.yaml``: ``run_id``, ``status`` (1 RUNNING, 2 SCHEDULED, 3 FINISHED, 4 FAILED, 5 KILLED,
  MLflow's ``RunStatus``; or the names) -> ``running | scheduled | completed | failed | killed``;
  ``start_time``/``end_time`` (epoch ms) -> ``started_at``/``ended_at``; ``lifecycle_stage``
  (``deleted`` runs are imported, and a note says so).
- ``metrics/<name>``: one line per point, ``<timestamp ms> <value> <step>`` (files of MLflow < 1.0
  have no step: 0). Names may hold ``/`` (nested folders). By name (``warehouse/importers/names.py``,
  shared with TensorBoard): train-loss-like names (``loss``, ``train_loss``, ``train/loss`` ...) and the
  other ``train_steps`` aliases (``lr``, ``grad_norm`` ...) -> ``train_steps`` at the point's step
  (``ts`` = the step's latest timestamp); ``val_*``, ``validation_*``, ``eval_*`` (and ``/`` forms) ->
  ``eval_results`` suite ``mlflow-eval``, ``test_*`` -> suite ``mlflow-test`` (another data set),
  metric without the prefix, ``checkpoint_step`` = step; every other metric -> ``step_metrics``.
  A line that cannot be read is quarantined with its metric file and line number.
- ``params/<name>`` and ``tags/<name>`` (one value per file) -> ``config_json`` (``params``,
  ``tags``, the experiment's id and name, the run name); ``tags/mlflow.runName`` is the run name.

The run id is MLflow's own. Model: ``--model``, else a ``model_name``/``model`` param or tag, else
the experiment's name (``<experiment>/meta.yaml``); MLflow does not record the hardware:
``--hardware`` is required.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from warehouse.importers import (Parsed, Record, RunMeta, SourceError, cut_raw, identity, line_too_long, number,
                             read_lines)
from warehouse.importers.names import eval_split, train_column

SOURCE = "mlflow"
SUITES = {"eval": "mlflow-eval", "test": "mlflow-test"}
STATUS = {1: "running", 2: "scheduled", 3: "completed", 4: "failed", 5: "killed",
          "RUNNING": "running", "SCHEDULED": "scheduled", "FINISHED": "completed", "FAILED": "failed",
          "KILLED": "killed"}
MODEL_KEYS = ("model_name", "model")


def parse(path: str, meta: RunMeta) -> Parsed:
    run_dir = os.path.abspath(path)
    info = _yaml(os.path.join(run_dir, "meta.yaml"))
    if not isinstance(info, dict) or not (info.get("run_id") or info.get("run_uuid")):
        raise SourceError(f"{path}: not an MLflow run folder: its meta.yaml has no run_id")
    out = Parsed(source=run_dir, format=SOURCE)
    params, tags = _values(run_dir, "params"), _values(run_dir, "tags")
    experiment = _yaml(os.path.join(os.path.dirname(run_dir), "meta.yaml"))
    experiment = experiment if isinstance(experiment, dict) else {}
    model = next((d[k] for d in (params, tags) for k in MODEL_KEYS if d.get(k)), None) or experiment.get("name")
    ident = identity(path, meta, "mlflow", model=model or None, run_id=str(info.get("run_id") or info["run_uuid"]))
    precision = {"precision": meta.precision} if meta.precision else {}

    steps: dict[int, dict] = {}
    last_loss = None
    for name, fpath in _metric_files(run_dir):
        train = train_column(name)
        split = None if train else eval_split(name)
        table = "train_steps" if train else "eval_results" if split else "step_metrics"
        for lineno, line, point in _points(fpath, table, out):
            ts_ms, value, step = point
            ts = datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc)
            raw = json.dumps({"metric": name, "line": line})
            if train:
                column, factor = train
                row = steps.setdefault(step, {**ident, **precision, "step": step, "_at": (lineno, raw, fpath)})
                row[column] = value * factor
                row["ts"] = max(row.get("ts", ts), ts)
            elif split:
                out.records.append(Record("eval_results", {
                    **ident, **precision, "train_run_id": ident["run_id"], "suite": SUITES[split[0]],
                    "metric": split[1], "value": value, "checkpoint_step": step, "ts": ts}, lineno, raw, file=fpath))
            else:
                out.records.append(Record("step_metrics", {**ident, **precision, "step": step, "ts": ts,
                                                           "metric": name, "value": value}, lineno, raw, file=fpath))
    for step in sorted(steps):
        row = steps[step]
        lineno, raw, fpath = row.pop("_at")
        out.records.append(Record("train_steps", row, lineno, raw, file=fpath))
        if "loss" in row:
            last_loss = row["loss"]

    status = info.get("status")
    stage = info.get("lifecycle_stage")
    config = {"params": params, "tags": tags, "experiment_id": info.get("experiment_id"),
              "experiment_name": experiment.get("name"), "run_name": tags.get("mlflow.runName") or info.get("run_name"),
              "lifecycle_stage": stage, "user_id": info.get("user_id"), "artifact_uri": info.get("artifact_uri")}
    run = {**ident, **meta.run_columns(), "kind": "train", "source": SOURCE,
           "started_at": meta.started_at or _ms(info.get("start_time")), "ended_at": _ms(info.get("end_time")),
           "status": STATUS.get(status, None if status is None else str(status)),
           "steps": max(steps) if steps else None, "final_loss": last_loss,
           "config_json": json.dumps({k: v for k, v in config.items() if v is not None}, sort_keys=True, default=str)}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))
    if stage == "deleted":
        out.notes.append("the run is marked deleted in MLflow (lifecycle_stage: deleted); imported as it is")
    if not os.path.isdir(os.path.join(run_dir, "metrics")):
        out.notes.append("the run has no metrics/ folder: only its runs row is imported")
    return out


def _yaml(path: str):
    import yaml

    try:
        with open(path, "rb") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML: {e}") from e


def _values(run_dir: str, folder: str) -> dict[str, str]:
    """``params/`` or ``tags/``: one value per file, the file's path below the folder its name."""
    base = os.path.join(run_dir, folder)
    found = {}
    for root, _, files in os.walk(base):
        for f in sorted(files):
            p = os.path.join(root, f)
            with open(p, encoding="utf-8", errors="replace") as fh:
                found[os.path.relpath(p, base).replace(os.sep, "/")] = fh.read().strip()
    return dict(sorted(found.items()))


def _metric_files(run_dir: str) -> list[tuple[str, str]]:
    base = os.path.join(run_dir, "metrics")
    return sorted((os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"), os.path.join(root, f))
                  for root, _, files in os.walk(base) for f in files)


def _points(path: str, table: str, out: Parsed):
    """(line number, line, (timestamp ms, value, step)) per readable line; the others become
    quarantine records naming the metric file, line and field."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    with f:
        yield from _lines(path, f, table, out)


def _lines(path: str, f, table: str, out: Parsed):
    for lineno, bline, size in read_lines(f):  # a line over the bound is rejected unparsed
        line = bline.decode("utf-8", errors="replace")
        if size is not None:
            raw = json.dumps({"metric": os.path.basename(path), "line": cut_raw(line, size)})
            out.records.append(Record(table, None, lineno, raw, (None, line_too_long(size)), file=path))
            continue
        if not line.strip():
            continue
        parts = line.split()
        ts_ms, value, step = _int(parts[0]) if parts else None, _float(parts[1]) if len(parts) > 1 else None, \
            (_int(parts[2]) if len(parts) > 2 else 0)
        problem = ((None, f"expected '<timestamp ms> <value> <step>', got {len(parts)} fields")
                   if len(parts) not in (2, 3) else
                   ("ts", f"timestamp {parts[0]!r} is not integer milliseconds") if ts_ms is None else
                   ("value", f"value {parts[1]!r} is not a number") if value is None else
                   ("step", f"step {parts[2]!r} is not an integer") if step is None else None)
        if problem:
            raw = json.dumps({"metric": os.path.basename(path), "line": line})
            out.records.append(Record(table, None, lineno, raw, (problem[0], f"bad MLflow metric line: {problem[1]}"),
                                      file=path))
            continue
        yield lineno, line, (ts_ms, value, step)


def _int(s: str):
    try:
        return int(s)
    except ValueError:
        return None


def _float(s: str):
    try:
        return float(s)  # 'nan', 'inf' as MLflow writes them
    except ValueError:
        return None


def _ms(v) -> datetime | None:
    s = number(v)
    return datetime.fromtimestamp(s / 1000.0, tz=timezone.utc) if s is not None else None
