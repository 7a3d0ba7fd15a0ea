"""What a job writes to the lake: its ``runs`` row, one ``train_steps`` row per step (with the
numbers that have no column of their own as ``step_metrics`` rows), validation results, and
``system_samples`` from a background sampler thread. Used by this project's trainer and evaluator,
the telemetry client (``mhw.start_run``) and its HF / Lightning integrations alike; when disabled
(a rank other than 0) every call is a no-op.

Where the rows go is a sink (warehouse/sinks.py): the lake itself, or a collector over HTTP.

Idempotence across resumes: step rows go into blocks of ``block_rows`` steps (file key
``<run_id>-steps-b<block>``), and every delivery is merged into its block by (run, step): a run
resumed from a checkpoint replaces the steps it logs again and keeps the block's others, and the
lake keeps one row per step however often the run was interrupted. (The trainer still aligns blocks
to its checkpoints, ``checkpoint_block_rows``, so a resume touches only the blocks after it.)

The training thread's cost is the row's queueing (``log_step``); the split into columns and step
metrics happens on the sink's thread. A value that is not a number (a string, a tensor of many
elements) never reaches the Parquet writer, where it would fail a whole block: it is left out of
its row and kept in ``quarantine`` with the step, the name and the reason.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from datetime import datetime, timezone

import psutil

from warehouse.keys import check_slug
from warehouse.schemas import NAME_CHARS, TRAIN_STEPS
from warehouse.sinks import LakeSink

log = logging.getLogger("mhw")

# train_steps' own measurements: a metric of another name is a step_metrics row
STEP_ROW = frozenset(("run_id", "model", "hardware", "precision", "step", "ts"))  # what Telemetry fills in
STEP_COLUMNS = frozenset(c.name for c in TRAIN_STEPS.columns) - STEP_ROW - {"date"}


def process_rank() -> int:
    """This process's rank in a distributed job (RANK, else LOCAL_RANK, as torchrun, Lightning and
    accelerate set them; 0 alone). Telemetry is written by rank 0 unless per-rank telemetry is asked
    for (the seam issue 16 fills)."""
    for name in ("RANK", "LOCAL_RANK"):
        v = os.environ.get(name, "").strip()
        if v.lstrip("-").isdigit():
            return int(v)
    return 0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def checkpoint_block_rows(flush_rows: int, ckpt_interval: int) -> int:
    """The largest block size <= ``flush_rows`` that divides ``ckpt_interval``, so every checkpoint
    step is the first step of a block (a row's block is ``step // block_rows``, warehouse/keys.py)."""
    if ckpt_interval <= 0:
        return max(1, flush_rows)
    if ckpt_interval <= flush_rows:
        return ckpt_interval
    return max(d for d in range(1, flush_rows + 1) if ckpt_interval % d == 0)


class SystemSampler:
    """Samples the process's CPU and memory (psutil) and every GPU (NVML) every ``interval_s`` on a
    daemon thread. ``latest`` is what the step rows copy, so the training loop never calls NVML."""

    def __init__(self, interval_s: float = 5.0, writer=None, const: dict | None = None):
        self.interval_s, self.writer, self.const = interval_s, writer, const or {}
        self.latest: dict = {}
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading is always 0: prime it
        self._mem_total_gb = psutil.virtual_memory().total / 1e9
        self._nvml = self._gpus = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
            self._gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no driver, no GPU, or no pynvml: CPU-only sampling
            self._nvml, self._gpus = None, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mhw-system-sampler", daemon=True)

    def start(self) -> "SystemSampler":
        self.sample()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # telemetry must never take the training run down
                pass

    def sample(self) -> list[dict]:
        ts = utcnow()
        cpu = self._proc.cpu_percent(None)
        rss = self._proc.memory_info().rss / 1e9
        rows = [{"ts": ts, "device": "cpu", "util": cpu, "mem_used_gb": rss, "mem_total_gb": self._mem_total_gb}]
        gpu_utils = []
        for i, h in enumerate(self._gpus or []):
            nv = self._nvml
            row = {"ts": ts, "device": f"cuda:{i}"}
            try:
                row["util"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                row["mem_used_gb"], row["mem_total_gb"] = mem.used / 1e9, mem.total / 1e9
                row["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                row["temperature_c"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
                gpu_utils.append(row["util"])
            except Exception:
                pass  # some fields are unsupported on some boards (e.g. power on MIG slices)
            rows.append(row)
        self.latest = {"cpu_util": cpu, "host_mem_gb": rss,
                       "gpu_util": sum(gpu_utils) / len(gpu_utils) if gpu_utils else None}
        if self.writer is not None:
            for r in rows:
                self.writer.append({**self.const, **r})
        return rows

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, 2 * self.interval_s))
        try:
            self.sample()  # one last sample so short runs have at least two
        except Exception:
            pass
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


class Telemetry:
    """One run's writers. Create with ``enabled=False`` on ranks other than 0: every call is a no-op.
    ``sink`` is a lake root (a folder or an object-store URI) or a sink of warehouse/sinks.py."""

    def __init__(self, sink, run_id: str, model: str, hardware: str, precision: str | None = None,
                 enabled: bool = True, block_rows: int = 2000, flush_seconds: float = 30.0,
                 system_interval_s: float | None = 5.0):
        self.enabled = enabled
        self.run_id = check_slug("run_id", run_id)
        self.model, self.hardware = check_slug("model", model), check_slug("hardware", hardware)
        self.precision = precision
        self.run_row: dict = {}
        self.sampler: SystemSampler | None = None
        self.rejected = 0  # values quarantined instead of written
        if not enabled:
            return
        if isinstance(sink, (str, os.PathLike)):
            sink = LakeSink(str(sink), flush_seconds=flush_seconds, batch_rows=max(block_rows, 1000))
        self.sink, self.block_rows, self.flush_seconds = sink, block_rows, flush_seconds
        self._const = {"run_id": run_id, "model": model, "hardware": hardware}
        self._step_const = {**self._const, "precision": precision}
        self._steps = self._writer("train_steps", f"{run_id}-steps")
        self._steps.prepare = self._split  # run on the sink's thread
        self._evals = self._writer("eval_results", f"{run_id}-val")
        self._metrics = self._rejects = None  # made when first needed
        self._warned: set[str] = set()
        self._writers_lock = threading.Lock()
        # Facts of this process's lifetime (system samples, rejected values) are keyed by its start, so a
        # resumed run adds its own beside the interrupted one's instead of replacing them.
        self._attempt = utcnow().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        if system_interval_s:
            self._system = self._writer("system_samples", f"{run_id}-sys-{self._attempt}")
            self.sampler = SystemSampler(system_interval_s, self._system, self._const).start()

    def _writer(self, table: str, prefix: str):
        return self.sink.writer(table, prefix, self.block_rows, self.flush_seconds)

    def _writers(self) -> list:
        return [w for w in (self._steps, self._evals, self._metrics, self._rejects) if w is not None]

    # -- runs ------------------------------------------------------------------------------------------

    def write_run(self, **fields) -> None:
        """Write (or rewrite: same key) the run's one ``runs`` row, merged with what it said before."""
        if not self.enabled:
            return
        self.run_row.update(fields)
        self.run_row.update(self._const)
        self.sink.put("runs", [dict(self.run_row)], key=self.run_id)

    # -- per step --------------------------------------------------------------------------------------

    def system(self) -> dict:
        """The sampler's latest CPU / GPU readings (a dict lookup: no syscalls in the hot path)."""
        return self.sampler.latest if self.sampler is not None else {}

    def step(self, step: int, **metrics) -> None:
        """One ``train_steps`` row: the metrics named as its columns (``STEP_COLUMNS``) in it, any
        other name as a ``step_metrics`` row of the same step. None means "not measured"."""
        self.log_step(step, metrics)

    def log_step(self, step: int, metrics: dict, fill: dict | None = None) -> None:
        """``step`` with ``metrics`` (a dict this call may keep) and ``fill``'s values where
        ``metrics`` has none. The training thread's whole cost: non-float values are read now
        (a tensor may change after the call), the row is queued; splitting it into columns and
        step metrics, and quarantining what is not a number, happen on the sink's thread
        (``_split``)."""
        if not self.enabled:
            return
        if not STEP_ROW.isdisjoint(metrics):
            metrics = _set_aside_reserved(metrics)
        for v in metrics.values():
            if type(v) is not float and v is not None:
                metrics = {k: _snapshot(v) for k, v in metrics.items()}
                break
        if fill:
            self._steps.append({**self._step_const, **fill, "step": step, "ts": time.time(), **metrics})
        else:
            self._steps.append({**self._step_const, "step": step, "ts": time.time(), **metrics})

    def _split(self, row: dict) -> list:
        """On the sink's thread: a queued step row as (writer, row) pairs: its train_steps row, a
        step_metrics row for each other name, a quarantine row for each value that is not a number."""
        step = row["step"]
        ts = row["ts"] = datetime.fromtimestamp(row["ts"], timezone.utc)
        out = [(self._steps, row)]
        for name, v in row.pop(RESERVED, {}).items():
            out.append(self._reject("train_steps", step, name, ts, v,
                                    f"reserved name: the run fills in {', '.join(sorted(STEP_ROW))}; log it under "
                                    f"another name"))
        for name in [k for k in row if k not in STEP_ROW]:
            v = row[name]
            if name in STEP_COLUMNS:
                if v is not None and type(v) is not float:
                    row[name] = self._number(v, "train_steps", step, name, ts, out)
                continue
            del row[name]
            if v is None:
                continue
            if len(name) > NAME_CHARS:
                out.append(self._reject("step_metrics", step, name[:NAME_CHARS], ts, v,
                                        f"too long: metric name of {len(name):,} characters; the limit is {NAME_CHARS:,}"))
                continue
            if type(v) is not float:
                v = self._number(v, "step_metrics", step, name, ts, out)
                if v is None:
                    continue
            if self._metrics is None:
                self._metrics = self._writer("step_metrics", f"{self.run_id}-metrics")
            out.append((self._metrics, {**self._step_const, "step": step, "ts": ts, "metric": name, "value": v}))
        return out

    def evaluation(self, step: int, suite: str, metrics: dict[str, float], n: int | None = None,
                   checkpoint: str | None = None) -> None:
        """Validation during training: ``eval_results`` rows stamped with the training step, in the
        same blocks as the step rows so a resume rewrites them too."""
        if not self.enabled:
            return
        ts = utcnow()
        for metric, value in metrics.items():
            if value is None:
                value = math.nan
            elif type(value) is not float:
                rejects = []
                value = self._number(_snapshot(value), "eval_results", step, metric, ts, rejects)
                for writer, row in rejects:
                    writer.append(row)
                if value is None:
                    continue
            self._evals.append({**self._const, "train_run_id": self.run_id, "checkpoint": checkpoint,
                                "checkpoint_step": step, "ts": ts, "precision": self.precision,
                                "suite": suite, "metric": metric, "value": value, "n": n},
                               block=step // self.block_rows)

    def _number(self, v, table: str, step: int, name: str, ts: datetime, rejects: list) -> float | None:
        """``v`` (as ``_snapshot`` left it) as a float, else None and a quarantine row in ``rejects``."""
        if isinstance(v, (int, float)):
            return float(v)
        rejects.append(self._reject(table, step, name, ts, v,
                                    f"wrong type: expected a number, got {type(v).__name__} {_shown(v)}"))
        return None

    def _reject(self, table: str, step: int, name: str, ts: datetime, v, reason: str) -> tuple:
        """(the quarantine writer, the row of a value not written), warned about once per name."""
        self.rejected += 1
        if name not in self._warned:
            self._warned.add(name)
            log.warning("mhw: run %s step %s: %s: %s (kept in quarantine; warned once per name)",
                        self.run_id, step, name[:80], reason)
        with self._writers_lock:
            if self._rejects is None:
                self._rejects = self._writer("quarantine", f"{self.run_id}-rejects-{self._attempt}")
        return self._rejects, {"target_table": table, "source": f"mhw client: run {self.run_id}", "line": step,
                               "field": name, "reason": reason, "raw": json.dumps({"step": step, name: _shown(v)}),
                               "ingested_at": ts}

    def flush(self, wait: bool = False) -> None:
        """Hand buffered rows to the writer thread (at checkpoints: what the checkpoint covers is on disk)."""
        if self.enabled:
            for w in self._writers():
                w.flush(wait=wait)
            self.sink.flush(wait=wait)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.sampler is not None:
            self.sampler.stop()
            self._system.close()
        for w in self._writers():
            w.close()
        self.sink.close()


RESERVED = "\0reserved"  # a queued step row's metrics that were named like the row's own fields


def _set_aside_reserved(metrics: dict) -> dict:
    """``metrics`` without the names the row fills in itself (run_id, model, step, ts, ...): those are
    kept aside, to be quarantined, never allowed to move the row to another run or partition."""
    kept = {k: v for k, v in metrics.items() if k not in STEP_ROW}
    kept[RESERVED] = {k: _snapshot(metrics[k]) for k in STEP_ROW if k in metrics}
    return kept


def _snapshot(v):
    """A value as it is now: a number as a float (ints, numpy scalars, one-element tensors: read at
    the call, before the loop changes them), anything else as it is, for the sink's thread to quarantine."""
    if v is None or type(v) is float or isinstance(v, (str, bytes)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return v


def _shown(v) -> str:
    """A value for a message or quarantine: its repr, cut (a tensor or a huge string is never copied whole)."""
    s = repr(v[:200] if isinstance(v, (str, bytes)) else v)
    return s if len(s) <= 200 else s[:197] + "..."
