"""Model Health Warehouse telemetry for PyTorch Lightning users, as a logger:

    from mhw.integrations.lightning import MHWLogger
    trainer = lightning.Trainer(logger=MHWLogger(model="my-model"), log_every_n_steps=1, ...)

Built on ``mhw.start_run``, so the rows go where the client's go (the lake, or a collector). What
``self.log`` records lands as follows:

- a training metric whose name, without a ``train_`` / ``train/`` prefix and a ``_step`` suffix, is a
  ``train_steps`` column (``train_loss`` -> loss, ``lr``, ``grad_norm``, ``tokens_per_s``, ...) fills
  the step's row; any other number is a ``step_metrics`` row of that step under its own name. Every
  metric Lightning logs for one step (``*_step`` and ``*_epoch`` values, a LearningRateMonitor's)
  goes into that step's one row.
- a metric named ``val_*`` / ``val/*`` (also ``valid``, ``validation``, ``eval``) is an
  ``eval_results`` row of suite 'validation', ``test_*`` / ``test/*`` of suite 'test', stamped with
  the global step.
- the run's ``runs`` row: the LightningModule's class (model_family), trainable parameters,
  precision (``bf16-mixed`` -> bf16), the hyperparameters as config_json, status at the end
  ('completed', 'diverged' when the last loss is NaN/inf, 'failed' when fit raised).

Lightning logs every ``log_every_n_steps`` (50 by default): set it to 1 for a row per step. Only
rank 0 writes (Lightning's ``rank_zero_only``, and the client's own rank check).
"""
from __future__ import annotations

import math
from argparse import Namespace

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from mhw.client import Run, config_fields, start_run
from warehouse.telemetry import STEP_COLUMNS

SUITES = (("validation", ("val_", "val/", "valid_", "valid/", "validation_", "validation/", "eval_", "eval/")),
          ("test", ("test_", "test/")))
PRECISIONS = {"bf16": "bf16", "16": "fp16", "fp16": "fp16", "32": "fp32", "64": "fp64", "transformer-engine": "fp8"}


class MHWLogger(Logger):
    """A Lightning logger writing a run's telemetry (see the module docstring). ``model`` names the
    model (a slug is made of it); the other arguments are ``mhw.start_run``'s."""

    def __init__(self, model: str, run_id: str | None = None, hardware: str | None = None, dataset: str | None = None,
                 lake: str | None = None, collector: str | None = None, system_interval_s: float | None = 5.0,
                 block_rows: int | None = None, flush_seconds: float | None = None):
        super().__init__()
        self._model, self._run_id, self._kw = model, run_id, dict(
            hardware=hardware, dataset=dataset, lake=lake, collector=collector, system_interval_s=system_interval_s,
            block_rows=block_rows, flush_seconds=flush_seconds)
        self._config: dict | None = None
        self._module_info: dict = {}
        self._run: Run | None = None
        self._ended: dict | None = None  # the runs row of an ended run, for metrics logged after it (a test)
        self._step: int | None = None  # the step whose metrics are being gathered into one row
        self._row: dict = {}
        self._last_loss = self._steps_done = None

    # -- Logger's interface --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "mhw"

    @property
    def version(self) -> str | None:
        return self._run.run_id if self._run is not None else self._run_id

    @property
    def experiment(self) -> Run | None:
        """The ``mhw`` run (None before the first metric, and on ranks other than 0)."""
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self._config = {**(self._config or {}), **params}
        if self._run is not None:
            self._run.update(**config_fields(self._config))

    @rank_zero_only
    def log_graph(self, model, input_array=None) -> None:
        """Lightning hands the module over here at the start of fit: what the runs row says of it."""
        trainer = getattr(model, "_trainer", None)
        precision = str(getattr(trainer, "precision", "") or "") if trainer is not None else ""
        self._module_info = {
            "model_family": type(model).__name__,
            "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "precision": PRECISIONS.get(precision.split("-")[0], precision or None),
        }

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        run = self._start()
        if run is None:
            return
        step = int(step) if step is not None else (self._step if self._step is not None else 0)
        if step != self._step:
            self._write_step()
            self._step = step
        evals: dict[str, dict] = {}
        for name, value in metrics.items():
            suite, metric = _suite(name)
            if suite is not None:
                evals.setdefault(suite, {})[metric] = value
            else:
                self._row[_column(name)] = value
        for suite, values in evals.items():
            run.log_eval(step, values, suite=suite)

    def save(self) -> None:
        pass  # Lightning calls it after every log_metrics: rows are written on the sink's own schedule

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """'success' ends the run (completed, or diverged), 'failed' marks it failed; 'finished' (a
        SLURM requeue: the job comes back) writes what is buffered and leaves it running."""
        if self._run is None:
            return
        self._write_step()
        if status == "finished":
            self._run.flush(wait=True)
            return
        final = _float(self._last_loss)
        run, self._run = self._run, None
        run.end("failed" if status == "failed" else "diverged" if final is not None and not math.isfinite(final)
                else "completed", steps=self._steps_done)
        self._ended = dict(run.telemetry.run_row) if run.enabled else None

    # -- helpers -------------------------------------------------------------------------------------

    def _start(self) -> Run | None:
        """The run, started at the first metric; after fit ended it, the same run again (a
        ``trainer.test`` adds its results to it; its runs row is kept as fit left it)."""
        if self._run is None:
            info = self._module_info
            self._run = start_run(self._model, run_id=self._run_id, precision=info.get("precision"),
                                  config=self._config, model_family=info.get("model_family"),
                                  n_params=info.get("n_params"), source="lightning", run_fields=self._ended,
                                  **self._kw)
            self._run.exit_status = "failed"  # exiting without finalize: fit did not end
            self._run_id = self._run.run_id
        return self._run if self._run.enabled else None

    def _write_step(self) -> None:
        """The gathered step's row, when it has more than Lightning's own ``epoch``."""
        row, self._row = self._row, {}
        if self._step is None or not row or set(row) <= {"epoch"}:
            return
        if "loss" in row:
            self._last_loss = row["loss"]
        self._steps_done = self._step + 1  # Lightning's step counts optimizer steps from 0
        self._run.log(self._step, **row)


def _column(name: str) -> str:
    """``train_loss_step`` -> ``loss``: a train_steps column's name where the metric is one."""
    bare = name
    for prefix in ("train_", "train/"):
        if bare.startswith(prefix):
            bare = bare[len(prefix):]
    if bare.endswith("_step"):
        bare = bare[: -len("_step")]
    return bare if bare in STEP_COLUMNS else name


def _suite(name: str) -> tuple[str | None, str]:
    for suite, prefixes in SUITES:
        for prefix in prefixes:
            if name.startswith(prefix) and len(name) > len(prefix):
                return suite, name[len(prefix):]
    return None, name


def _float(v):
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
