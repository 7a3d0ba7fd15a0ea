"""lm-evaluation-harness results JSON (v0.4: ``results_<date>.json``, or ``--output_path x.json``).

The file is one evaluation run of one model on one or more tasks:

- ``results: {task: {"acc,none": 0.58, "acc_stderr,none": 0.014, "alias": ...}}`` (group tasks such
  as ``mmlu`` are in ``results`` and again in ``groups``; each task is read once) ->
  ``eval_results``, one row per task x metric x filter: suite ``lm-eval.<task>`` for filter ``none``,
  ``lm-eval.<task>.<filter>`` otherwise (``exact_match,strict-match`` of ``gsm8k`` is metric
  ``exact_match`` of suite ``lm-eval.gsm8k.strict-match``), so the metric keeps lm-eval's own name,
  whose direction ``conf/diagnostics.yaml`` knows, and the suite is a plain name a rule's ``suites``
  parameter can list (characters other than letters, digits and ``. _ + -`` become ``-``). ``n`` = ``n-samples[task].effective`` where the
  file has it.
- Standard errors are kept as their own metric, ``<metric>_stderr`` in the same suite (they say how
  far a change can be noise). The harness writes ``"N/A"`` where it computed none (groups,
  ``bootstrap_iters=0``): that is not an error and gives no row; a note counts them. Other values
  that are not numbers are left for ingest to reject with the task and key named.
- The ``runs`` row: kind ``eval``, source ``lm-eval``, ``started_at`` = ``date`` (epoch seconds),
  ``ended_at`` = ``date`` + ``total_evaluation_time_seconds`` where written, status ``completed``;
  ``config_json`` keeps everything but the scores (``config``, ``configs``, ``versions``, ``n-shot``,
  ``higher_is_better``, ``n-samples``, ``task_hashes``, ``git_hash`` ...), so the directions the file
  declares and the task hashes (which say whether two runs saw the same prompts) stay queryable.
  Eval rows are stamped at ``ended_at`` (else ``started_at``).
- Model: ``--model``, else ``model_name``, else the ``pretrained=``/``model=``/``path=`` part of
  ``config.model_args`` (the same order lm-eval uses); hardware: ``--hardware``, else the GPUs the
  file's ``pretty_env_info`` lists (``GPU 0: NVIDIA A100 80GB PCIe`` -> ``NVIDIA-A100-80GB-PCIe-x1``),
  ``cpu`` where it says CUDA is not available. Precision: ``--precision``, else ``dtype=`` of
  ``model_args`` (``bfloat16`` -> ``bf16``; ``auto`` says nothing). The run id is a hash of the
  model arguments, the date and the task names, so a copy of the file is the same run.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

from warehouse.importers import (Parsed, Record, RunMeta, SourceError, content_run_id, identity, json_type, number,
                             read_json)

SOURCE = "lm-eval"
SUITE = "lm-eval"
MODEL_ARG_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")  # lm-eval's own precedence
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
          "float32": "fp32", "float": "fp32", "fp32": "fp32"}
NOT_SCORES = ("alias", "name", "sample_len", "samples")  # non-metric keys of a results entry


def parse(path: str, meta: RunMeta) -> Parsed:
    doc = _load(path)
    out = Parsed(source=os.path.abspath(path), format=SOURCE)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    model_args = _model_args(config.get("model_args"))
    model = doc.get("model_name") if isinstance(doc.get("model_name"), str) and doc["model_name"] else None
    model = model or next((model_args[k] for k in MODEL_ARG_KEYS if model_args.get(k)), None)
    tasks = {**{k: v for k, v in (doc.get("groups") or {}).items()}, **doc["results"]}
    run_id = content_run_id("lmeval", {"model_args": config.get("model_args"), "date": doc.get("date"),
                                       "tasks": sorted(tasks)})
    ident = identity(path, meta, "lmeval", model=model, hardware=_hardware(doc.get("pretty_env_info")),
                     run_id=run_id)
    prec = meta.precision or DTYPES.get(str(model_args.get("dtype", "")).lower())
    precision = {"precision": prec} if prec else {}

    started = meta.started_at or _epoch(doc.get("date"))
    duration = number(_maybe_float(doc.get("total_evaluation_time_seconds")))
    ended = started + timedelta(seconds=duration) if started and duration is not None else None
    n_samples = doc.get("n-samples") if isinstance(doc.get("n-samples"), dict) else {}

    not_available = 0
    for index, (task, scores) in enumerate(sorted(tasks.items()), start=1):
        raw = json.dumps({task: scores}, sort_keys=True, default=str)
        if not isinstance(scores, dict):
            out.records.append(Record("eval_results", scores, index, raw,
                                      ("results", f"wrong type: results[{task!r}] is a JSON {json_type(scores)}, "
                                                  f"not an object of scores")))
            continue
        n = n_samples.get(task, {}).get("effective") if isinstance(n_samples.get(task), dict) else None
        for key, value in scores.items():
            if key in NOT_SCORES:
                continue
            metric, _, filt = key.partition(",")
            if value == "N/A":
                not_available += 1
                continue
            suite = ".".join([SUITE, _plain(task)] + ([] if filt in ("", "none") else [_plain(filt)]))
            row = {**ident, **precision, "suite": suite, "metric": metric, "value": value,
                   "checkpoint": model, "ts": ended or started}
            if n is not None:
                row["n"] = n
            out.records.append(Record("eval_results", row, index, raw))

    kept = {k: v for k, v in doc.items() if k not in ("results", "groups")}
    run = {**ident, **meta.run_columns(), **precision, "kind": "eval", "source": SOURCE, "started_at": started,
           "ended_at": ended, "status": "completed", "config_json": json.dumps(kept, sort_keys=True, default=str)}
    out.records.append(Record("runs", {k: v for k, v in run.items() if v is not None}))
    if not_available:
        out.notes.append(f"{not_available} scores are \"N/A\" (the harness computed no value, e.g. a group's "
                         f"stderr): no row")
    if started is None:
        out.notes.append("no 'date' in the file: the run has no start time (pass --started-at)")
    return out


def _load(path: str) -> dict:
    doc = read_json(path, "lm-eval results")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise SourceError(f"{path}: not lm-eval results: no 'results' object of task scores")
    return doc


def _plain(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(name)).strip("-") or "-"


def _model_args(args) -> dict:
    """``pretrained=x,dtype=auto`` -> ``{"pretrained": "x", "dtype": "auto"}`` (a dict passes through)."""
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    if not isinstance(args, str):
        return {}
    return dict(part.split("=", 1) for part in args.split(",") if "=" in part)


def _hardware(env) -> str | None:
    """A hardware name from torch's ``collect_env`` text, as lm-eval stores it: the first GPU's name
    and the count (``GPU models and configuration: GPU 0: ...`` then one ``GPU n: ...`` line each)."""
    if not isinstance(env, str):
        return None
    if re.search(r"^Is CUDA available: False", env, re.M):
        return "cpu"
    lines = env.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith("GPU models and configuration:")), None)
    if at is None:
        return None
    gpus = []
    for ln in [lines[at][len("GPU models and configuration:"):].strip(), *lines[at + 1:]]:
        m = re.match(r"GPU \d+: (.+)", ln.strip())
        if m:
            gpus.append(m.group(1).strip())
        elif gpus or ln.strip():
            break
    return f"{gpus[0]}-x{len(gpus)}" if gpus else None


def _maybe_float(v):
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return None


def _epoch(v) -> datetime | None:
    s = number(v)
    if s is None:
        return None
    try:
        return datetime.fromtimestamp(s, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
