"""Model Health Warehouse telemetry for HF ``transformers.Trainer`` users, by adding one callback:

    from mhw.integrations.hf import MHWCallback
    trainer = Trainer(model=model, args=args, ..., callbacks=[MHWCallback(model_slug="my-bert")])

(``model.hf_callback`` is its old path, kept.) Built on ``mhw.start_run``, so the rows go where the
client's go: the lake (``lake_root=``, ``$MHW_LAKE``, conf/mhw.yaml) or a collector (``collector=``,
``$MHW_COLLECTOR``).

- ``on_train_begin`` / ``on_train_end`` write the run's ``runs`` row (source 'hf-trainer'; rewritten
  under the same key as its status changes);
- ``on_log`` writes a ``train_steps`` row for each training log (loss, learning_rate, grad_norm,
  epoch, plus the step time this callback measures and the system sampler's CPU/GPU readings), a
  ``step_metrics`` row for every other number of the log (``mean_token_accuracy``, ``num_tokens``,
  ...), and ``eval_results`` rows (suite 'validation') for each ``eval_*`` metric, stamped with the
  global step;
- a background sampler writes ``system_samples`` while training runs.

As in HF's own integrations: every hook is a no-op except on the world's process zero, the run is
created lazily at ``on_train_begin``, and rows are flushed at each save and at the end. Set
``logging_steps=1`` for a row per step, and ``logging_nan_inf_filter=False`` so that a NaN/inf loss
reaches the lake as NaN/inf instead of being replaced by the window's mean: divergence is data here.
A crash inside ``Trainer.train`` calls no callback: the callback leaves an exit hook instead, so when
the process ends without ``on_train_end`` (an uncaught exception, sys.exit, Ctrl-C) the run is marked
'failed' at its last logged step and its buffered rows are flushed. A process killed outright
(SIGKILL, OOM killer) runs no hook and keeps status 'running' with its rows up to the last flush.
"""
from __future__ import annotations

import atexit
import json
import math
import time

import torch
from transformers import TrainerCallback

from mhw.client import Run, start_run
from warehouse import config as mhw_config, hardware
from warehouse.keys import PartitionError, slugify
from warehouse.schemas import RUN_ID_CHARS
from warehouse.telemetry import checkpoint_block_rows, utcnow

# a training log's numbers that are not step metrics: those on_log passes as columns, and HF's totals
NOT_STEP_METRICS = frozenset(("loss", "learning_rate", "lr", "grad_norm", "epoch", "step_time_ms", "samples_per_s",
                              "gpu_mem_gb", "total_flos"))


class MHWCallback(TrainerCallback):
    def __init__(self, lake_root: str | None = None, model_slug: str | None = None, run_id: str | None = None,
                 hardware_key: str | None = None, dataset: str | None = None, system_interval_s: float = 5.0,
                 flush_rows: int | None = None, flush_seconds: float | None = None, collector: str | None = None):
        self.lake_root, self.model_slug, self.run_id = lake_root, model_slug, run_id
        self.hardware_key, self.dataset, self.system_interval_s = hardware_key, dataset, system_interval_s
        self.flush_rows, self.flush_seconds, self.collector = flush_rows, flush_seconds, collector
        self.run: Run | None = None
        self._t_step = None
        self._step_s = None
        self._last_loss = None
        self._last_step = 0

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _precision(args) -> str:
        return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"

    def _samples_per_step(self, args) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)

    # -- hooks ---------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        settings = mhw_config.load()
        family = getattr(getattr(model, "config", None), "model_type", None) or "model"
        name = getattr(getattr(model, "config", None), "name_or_path", "") or family
        try:
            slug = self.model_slug or slugify(name)
        except PartitionError:  # a local folder saved as '.' or './': no name in it, the architecture names it
            slug = slugify(family)
        # through slugify: a long model slug leaves an id short enough for the sinks' file keys
        # (hash-suffixed, not cut)
        self.run_id = self.run_id or slugify(f"{slug}-{utcnow().strftime('%Y%m%dT%H%M%S')}-hf", RUN_ID_CHARS)
        use_cuda = torch.cuda.is_available() and not getattr(args, "use_cpu", False)
        # blocks that start at every save: a resume_from_checkpoint rewrites whole blocks
        save_every = args.save_steps if str(args.save_strategy).endswith("steps") and args.save_steps >= 1 else 0
        args_json = args.to_json_string()
        self.run = start_run(
            slug, run_id=self.run_id, hardware=hardware.fingerprint(self.hardware_key, args.world_size if use_cuda else 1),
            precision=self._precision(args), config=json.loads(args_json), dataset=self.dataset,
            model_family=getattr(model.config, "model_type", None) if model is not None else None,
            n_params=sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else None,
            lake=self.lake_root, collector=self.collector, system_interval_s=self.system_interval_s,
            block_rows=checkpoint_block_rows(self.flush_rows or settings.flush_rows, int(save_every)),
            flush_seconds=self.flush_seconds, source="hf-trainer", settings=settings,
            run_fields={"gpu_name": hardware.gpu_name() if use_cuda else None,
                        "gpu_count": args.world_size if use_cuda else 0, "steps": state.global_step,
                        "config_json": args_json})
        self._use_cuda = use_cuda
        self._last_step = state.global_step
        atexit.register(self._ended_without_train_end)

    def _ended_without_train_end(self):
        """Exit hook: training did not reach on_train_end (it raised, or the process was stopped)."""
        if self.run is not None:
            run, self.run = self.run, None
            run.end("failed", steps=self._last_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t_step = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t_step is not None:
            self._step_s = time.perf_counter() - self._t_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.run is None or not logs:
            return
        step = state.global_step
        self._last_step = step
        if "loss" in logs:
            loss = float(logs["loss"])
            self._last_loss = loss
            dt = self._step_s
            extra = {k: v for k, v in logs.items() if k not in NOT_STEP_METRICS and not k.startswith("eval_")
                     and isinstance(v, (int, float))}
            self.run.log(
                step, loss=loss, lr=logs.get("learning_rate"), grad_norm=_num(logs.get("grad_norm")),
                epoch=logs.get("epoch", state.epoch), step_time_ms=dt * 1e3 if dt else None,
                samples_per_s=self._samples_per_step(args) / dt if dt else None,
                gpu_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if self._use_cuda else None, **extra)
        evals = {k[len("eval_"):]: _num(v) for k, v in logs.items()
                 if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
        if evals:
            self.run.log_eval(step, evals)

    def on_save(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.flush(wait=False)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run is None:
            return
        atexit.unregister(self._ended_without_train_end)
        run, self.run = self.run, None
        final = self._last_loss
        run.end("diverged" if final is not None and not math.isfinite(final) else "completed", steps=state.global_step)


def _num(v):
    return float(v) if isinstance(v, (int, float)) else None
