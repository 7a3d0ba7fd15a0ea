"""The telemetry client: send any training job's runs, steps and evaluations to the warehouse.

    import mhw

    with mhw.start_run("my-gpt", config=cfg) as run:      # the lake of conf/mhw.yaml, or $MHW_LAKE
        for step in range(steps):
            ...
            run.log(step, loss=loss.item(), lr=lr, tokens_per_s=tps, my_metric=x)
            if step % 500 == 0:
                run.log_eval(step, {"loss": val_loss, "accuracy": acc})

- ``log`` takes any names: those of a ``train_steps`` column (loss, lr, grad_norm, tokens_per_s,
  step_time_ms, ...; ``warehouse.telemetry.STEP_COLUMNS``) fill the step's row, any other becomes a
  ``step_metrics`` row of the same step. CPU, host memory and GPU utilization are filled in from the
  system sampler (a background thread that also writes ``system_samples``) unless given.
- It costs the training thread a few microseconds (bench/RESULTS.md): the row is built and queued,
  and a background thread writes (to the lake) or posts (to a collector) whole blocks.
- Where rows go: ``lake=`` (a folder or ``s3://...``), else ``collector=`` (``mhw collect``'s URL),
  else ``$MHW_LAKE`` / ``$MHW_COLLECTOR``, else conf/mhw.yaml (``collector.url``, else the lake).
- Distributed jobs: only rank 0 (``RANK`` / ``LOCAL_RANK``) writes; on other ranks every call is a
  no-op (per-rank telemetry is issue 16's, ``per_rank=True``). Set ``MHW_RUN_ID`` for every rank to
  name the run yourself.
- The run ends with ``end()`` or the ``with`` block: 'completed' (or 'diverged' when the last loss
  logged is NaN/inf), 'failed' when the block raises. A process that exits without either is marked
  'failed' if it died of an uncaught exception, else 'completed'; one killed outright (SIGKILL, OOM)
  keeps 'running' and its rows up to the last flush.

Imports only ``warehouse`` (never this project's ``model`` or ``pipelines``), so a training repo with
its own ``model.py`` or ``pipelines/`` imports it safely; never torch.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import secrets
import sys
import threading
from pathlib import Path

from warehouse import config as mhw_config, hardware as host
from warehouse.keys import check_slug, slugify
from warehouse.schemas import RUN_ID_CHARS
from warehouse.sinks import HttpSink, LakeSink
from warehouse.telemetry import Telemetry, process_rank, utcnow

ENDED = ("completed", "failed", "diverged", "killed")


class Run:
    """One run's handle: ``log``, ``log_eval``, ``end`` (or use it as a context manager). On a rank
    other than 0 ``enabled`` is False and every method returns at once."""

    def __init__(self, telemetry: Telemetry | None, run_id: str, model: str, hardware: str | None):
        self.run_id, self.model, self.hardware = run_id, model, hardware
        self.telemetry = telemetry
        self.enabled = telemetry is not None
        self.exit_status: str | None = None  # status if the process exits before end(); None: see module doc
        self._last_step = None
        self._last_loss = None
        self._ended = False
        self._lock = threading.Lock()
        if self.enabled:
            atexit.register(self._at_exit)

    def __repr__(self) -> str:
        where = self.telemetry.sink if self.enabled else "disabled on this rank"
        return f"Run({self.run_id!r}, model={self.model!r}, hardware={self.hardware!r}, {where})"

    # -- the hot path --------------------------------------------------------------------------------

    def log(self, step: int, **metrics) -> None:
        """One training step's metrics (any names; see the module docstring). Floats, ints, numpy
        scalars and one-element tensors are accepted; NaN and inf are kept as data."""
        tel = self.telemetry
        if tel is None:
            return
        self._last_step = step
        loss = metrics.get("loss")
        if loss is not None:
            self._last_loss = loss if type(loss) is float else _float(loss)  # a tensor's value now
        sampler = tel.sampler
        tel.log_step(step, metrics, sampler.latest if sampler is not None else None)

    def log_eval(self, step: int, metrics: dict, suite: str = "validation", n: int | None = None,
                 checkpoint: str | None = None) -> None:
        """An evaluation at training step ``step``: one ``eval_results`` row per metric of ``suite``."""
        if self.telemetry is not None:
            self.telemetry.evaluation(step, suite, metrics, n=n, checkpoint=checkpoint)

    def system(self) -> dict:
        """The sampler's latest readings (cpu_util, host_mem_gb, gpu_util)."""
        return self.telemetry.system() if self.telemetry is not None else {}

    # -- flushing and the end ------------------------------------------------------------------------

    def flush(self, wait: bool = True) -> None:
        """Write (or post) every buffered row now; with ``wait``, until it is stored (before a
        checkpoint: the rows it covers are then in the lake)."""
        if self.telemetry is not None:
            self.telemetry.flush(wait=wait)

    def update(self, **fields) -> None:
        """Add to the run's ``runs`` row (dataset, n_params, model_family, config_json, ...)."""
        if self.telemetry is not None:
            self.telemetry.write_run(**fields)

    def end(self, status: str | None = None, steps: int | None = None) -> None:
        """Close the run: its final ``runs`` row (status, steps, final loss, end time), then every
        buffered row written. ``status`` defaults to 'completed', or 'diverged' when the last loss
        logged is NaN/inf; ``steps`` to the last step logged + 1 (steps counted from 0, as in
        ``for step in range(n)``; pass it if yours count from 1). Calling it again does nothing."""
        if status is not None and status not in ENDED:
            raise ValueError(f"status {status!r}: expected one of {', '.join(ENDED)}")
        with self._lock:
            if self._ended or self.telemetry is None:
                self._ended = True
                return
            self._ended = True
        atexit.unregister(self._at_exit)
        final = _float(self._last_loss)
        if status is None:
            status = "diverged" if final is not None and not math.isfinite(final) else "completed"
        if steps is None and self._last_step is not None:
            steps = self._last_step + 1
        fields = {"ended_at": utcnow(), "status": status}
        if steps is not None:  # unknown: what the row says stays
            fields["steps"] = steps
        if final is not None:
            fields["final_loss"] = final
        try:
            self.telemetry.write_run(**fields)
        finally:
            self.telemetry.close()

    def _at_exit(self) -> None:
        if not self._ended:
            self.end(self.exit_status or ("failed" if getattr(sys, "last_value", None) is not None else None))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("failed" if exc_type is not None else None)


def start_run(model: str, *, run_id: str | None = None, hardware: str | None = None, precision: str | None = None,
              config: dict | None = None, dataset: str | None = None, model_family: str | None = None,
              n_params: int | None = None, lake: str | None = None, collector: str | None = None,
              token: str | None = None, system_interval_s: float | None = 5.0, block_rows: int | None = None,
              flush_seconds: float | None = None, source: str = "client", per_rank: bool = False,
              run_fields: dict | None = None, settings: mhw_config.Settings | None = None) -> Run:
    """Start a run (see the module docstring) and write its ``runs`` row (status 'running').

    ``model``: the model's name (a hub name like ``org/name`` is made a slug: ``org--name``);
    ``hardware``: the partition key, default the fingerprint of this machine (``h100-sxm-80gb-x8``,
    ``cpu-x86_64-16c``); ``config``: the run's settings, stored as JSON with their hash;
    ``block_rows``: steps per file block (make it divide your checkpoint interval so that a resumed
    run rewrites its blocks instead of adding to them); ``flush_seconds``: how often buffered rows are
    written (a crash loses at most this much); ``run_fields``: more ``runs`` columns, or other values
    for those derived here (an integration's gpu_count, source, config_json)."""
    if per_rank:
        raise NotImplementedError("per-rank telemetry (every rank's timing) is issue 16; rank 0 writes for now")
    model = model if isinstance(model, str) and _is_slug(model) else slugify(str(model))
    run_id = check_slug("run_id", run_id or os.environ.get("MHW_RUN_ID")
                        or slugify(f"{model}-{utcnow().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}",
                                   RUN_ID_CHARS))
    if process_rank() != 0:  # before anything is asked of the machine: other ranks pay nothing
        return Run(None, run_id, model, hardware)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    hw = host.fingerprint(None, world) if hardware is None else check_slug("hardware", hardware)

    settings = settings or mhw_config.load()
    sink, default_flush = _sink(settings, lake, collector, token)
    telemetry = Telemetry(sink, run_id, model, hw, precision, block_rows=block_rows or settings.flush_rows,
                          flush_seconds=flush_seconds or default_flush, system_interval_s=system_interval_s)
    gpu = host.gpu_name()
    script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] and Path(sys.argv[0]).exists() \
        else Path.cwd()
    telemetry.write_run(**{
        "kind": "train", "model_family": model_family, "n_params": n_params, "gpu_name": gpu,
        "gpu_count": (max(world, 1) if world > 1 else host.gpu_count()) if gpu else 0, "precision": precision,
        "dataset": dataset, **config_fields(config), "code_version": host.code_version(str(script)),
        "started_at": utcnow(), "ended_at": None, "status": "running", "source": source, "steps": 0,
        **(run_fields or {})})
    return Run(telemetry, run_id, model, hw)


init = start_run  # the name W&B and others use


def config_fields(config: dict | None) -> dict:
    """A run's settings as the ``runs`` row keeps them: JSON (sorted keys) and its hash."""
    if config is None:
        return {"config_json": None, "config_hash": None}
    text = json.dumps(config, sort_keys=True, default=str)
    return {"config_json": text, "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _sink(settings: mhw_config.Settings, lake: str | None, collector: str | None, token: str | None):
    """(sink, default flush seconds): the lake or the collector, by the precedence of the module doc."""
    if lake and collector:
        raise ValueError("give lake= or collector=, not both")
    section = settings.section("collector")
    if lake is None and collector is None:
        if os.environ.get("MHW_LAKE"):
            lake = os.environ["MHW_LAKE"]
        else:
            collector = os.environ.get("MHW_COLLECTOR") or section.get("url")
    if collector is None:
        return LakeSink(lake or settings.lake_root), settings.flush_seconds
    token = token or os.environ.get("MHW_COLLECTOR_TOKEN") or _token_from_file(settings)
    return HttpSink(collector, token, flush_seconds=float(section.get("flush_seconds", 5)),
                    max_rows=int(section.get("max_rows", 200_000))), float(section.get("flush_seconds", 5))


def _token_from_file(settings: mhw_config.Settings) -> str | None:
    path = settings.path("collector", "token_file", ".mhw/collector.token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _is_slug(s: str) -> bool:
    try:
        check_slug("model", s)
        return True
    except ValueError:
        return False


def _float(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None
