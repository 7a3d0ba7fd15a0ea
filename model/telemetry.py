"""What a job writes to the lake: its ``runs`` row, one ``train_steps`` row per step, validation
results, and ``system_samples`` from a background sampler thread. Used by the trainer, the
evaluator and the HF callback alike; when disabled (or on a rank other than 0) every call is a no-op.

Idempotence across resumes: step rows go into blocks of ``block_rows`` steps (file key
``<run_id>-steps-b<block>``). The trainer picks ``block_rows`` so that every checkpoint step starts a
block; a run resumed from a checkpoint therefore rewrites exactly the blocks it logs again, and the
lake keeps one row per step however often the run was interrupted.
"""
from __future__ import annotations

import math
import os
import threading
from datetime import datetime, timezone

import psutil
import pyarrow as pa

from warehouse.writer import BufferedWriter, Lake, check_slug


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def checkpoint_block_rows(flush_rows: int, ckpt_interval: int) -> int:
    """The largest block size <= ``flush_rows`` that divides ``ckpt_interval``, so every checkpoint
    step is the first step of a block (BufferedWriter keys blocks by ``step // block_rows``)."""
    if ckpt_interval <= 0:
        return max(1, flush_rows)
    if ckpt_interval <= flush_rows:
        return ckpt_interval
    return max(d for d in range(1, flush_rows + 1) if ckpt_interval % d == 0)


class SystemSampler:
    """Samples the process's CPU and memory (psutil) and every GPU (NVML) every ``interval_s`` on a
    daemon thread. ``latest`` is what the step rows copy, so the training loop never calls NVML."""

    def __init__(self, interval_s: float = 5.0, writer: BufferedWriter | None = None, const: dict | None = None):
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
    """One run's writers. Create with ``enabled=False`` on ranks other than 0: every call is a no-op."""

    def __init__(self, lake_root: str, run_id: str, model: str, hardware: str, precision: str | None = None,
                 enabled: bool = True, block_rows: int = 2000, flush_seconds: float = 30.0,
                 system_interval_s: float | None = 5.0):
        self.enabled = enabled
        self.run_id = check_slug("run_id", run_id)
        self.model, self.hardware = check_slug("model", model), check_slug("hardware", hardware)
        self.precision = precision
        self.run_row: dict = {}
        self.sampler: SystemSampler | None = None
        if not enabled:
            return
        self.lake = Lake(lake_root)
        self._const = {"run_id": run_id, "model": model, "hardware": hardware}
        self._steps = BufferedWriter(self.lake, "train_steps", f"{run_id}-steps", flush_rows=block_rows,
                                     flush_seconds=flush_seconds)
        self._evals = BufferedWriter(self.lake, "eval_results", f"{run_id}-val", flush_rows=block_rows,
                                     flush_seconds=flush_seconds)
        self.block_rows = block_rows
        self._step_const = {**self._const, "precision": precision}
        if system_interval_s:
            # System samples are facts of this process's lifetime, keyed by its start, so a resumed
            # run adds its own samples beside the interrupted one's instead of replacing them.
            attempt = utcnow().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
            self._system = BufferedWriter(self.lake, "system_samples", f"{run_id}-sys-{attempt}",
                                          flush_rows=block_rows, flush_seconds=flush_seconds)
            self.sampler = SystemSampler(system_interval_s, self._system, self._const).start()

    # -- runs ------------------------------------------------------------------------------------------

    def write_run(self, **fields) -> None:
        """Write (or rewrite: same key) the run's one ``runs`` row, merged with what it said before."""
        if not self.enabled:
            return
        self.run_row.update(fields)
        self.run_row.update(self._const)
        self.lake.write("runs", pa.Table.from_pylist([self.run_row]), key=self.run_id)

    # -- per step --------------------------------------------------------------------------------------

    def system(self) -> dict:
        """The sampler's latest CPU / GPU readings (a dict lookup: no syscalls in the hot path)."""
        return self.sampler.latest if self.sampler is not None else {}

    def step(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        self._steps.append({**self._step_const, "step": step, "ts": utcnow(), **metrics})

    def evaluation(self, step: int, suite: str, metrics: dict[str, float], n: int | None = None,
                   checkpoint: str | None = None) -> None:
        """Validation during training: ``eval_results`` rows stamped with the training step, in the
        same blocks as the step rows so a resume rewrites them too."""
        if not self.enabled:
            return
        ts = utcnow()
        for metric, value in metrics.items():
            self._evals.append({**self._const, "train_run_id": self.run_id, "checkpoint": checkpoint,
                                "checkpoint_step": step, "ts": ts, "precision": self.precision,
                                "suite": suite, "metric": metric,
                                "value": float(value) if value is not None else math.nan, "n": n},
                               block=step // self.block_rows)

    def flush(self, wait: bool = False) -> None:
        """Hand buffered rows to the writer thread (at checkpoints: what the checkpoint covers is on disk)."""
        if self.enabled:
            self._steps.flush(wait=wait)
            self._evals.flush(wait=wait)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.sampler is not None:
            self.sampler.stop()
            self._system.close()
        self._steps.close()
        self._evals.close()

