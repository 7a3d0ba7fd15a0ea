"""
Train a GPT-2-style causal LM or a BERT-style classifier and write its telemetry to the lake: one
``runs`` row, one ``train_steps`` row per optimizer step (or per ``telemetry.every_steps``),
validation into ``eval_results`` and a background sampler into ``system_samples``.

On one device (CPU or one GPU):
    mhw train --config configs/gpt2-tiny.yaml
    mhw train --config configs/gpt2-tiny.yaml --trainer.max_steps=500 --trainer.batch_size=32
    mhw train --config configs/gpt2-tiny.yaml --telemetry.every_steps=10     # a row per 10 steps
Stream a corpus that does not fit in memory (a file, a folder, a named pipe), validating on a file:
    mhw train --config configs/gpt2-tiny.yaml --data.name=jsonl --data.streaming=true \
        --data.path=/mnt/corpus/train.jsonl --data.val_path=val.jsonl
Resume an interrupted run (same run_id, same loss curve) or fine-tune from weights:
    mhw train --config configs/gpt2-tiny.yaml --resume out/<run_id>          # latest ckpt in the folder
    mhw train --config configs/bert-tiny-cls.yaml --init-from path/to/hf_dir  # or a ckpt-*.pt
Fork a new run from another run's checkpoint with changed hyperparameters (what mhw repair does):
    mhw train --config configs/gpt2-tiny.yaml --trainer.fork_from=out/<run_id>/ckpt-0000100.pt \
        --trainer.lr=1e-3 --trainer.grad_clip=1.0 --telemetry.parent_run_id=<run_id>
DDP on 8 GPUs of one node (telemetry from rank 0 only):
    torchrun --standalone --nproc_per_node=8 -m model.train --config configs/gpt2-124m.yaml
DDP on 2 CPU processes (gloo), as the tests do:
    torchrun --standalone --nproc_per_node=2 -m model.train --config configs/gpt2-tiny.yaml --trainer.device=cpu
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import checkpoint, data, models
from model.config import CfgNode, add_override_arguments, load_yaml, overrides_from_args
from model.metrics import forward_loss, score
from warehouse import audit, config as mhw_config, hardware
from warehouse.telemetry import Telemetry, checkpoint_block_rows, utcnow


def default_config() -> CfgNode:
    C = CfgNode()
    C.model = models.default_config()
    C.data = data.default_config()
    C.trainer = CfgNode(
        max_steps=200,          # optimizer steps in the whole run (a resumed run continues to it)
        batch_size=16,          # micro-batch per process, in samples
        grad_accum=1,           # micro-batches per optimizer step, per process
        lr=1e-3,                # peak learning rate, reached after warmup
        min_lr=1e-4,            # cosine decays to this at max_steps (~lr/10, per Chinchilla)
        warmup_steps=20,        # linear warmup from 0 (Adam's second moments are noisy at first)
        weight_decay=0.1,       # on matrices only: biases and LayerNorm gains are not decayed
        beta1=0.9,
        beta2=0.95,             # 0.95 rather than 0.999: steadier for transformers at large batch
        grad_clip=1.0,          # clip the global grad norm to this; 0 disables clipping
        precision="auto",       # auto (bf16 on GPUs that have it, else fp16; fp32 on CPU) | fp32 | bf16 | fp16
                                # (bf16 and fp16 autocast work on CPU too, but run several times slower there)
        compile=False,          # torch.compile the model (PyTorch 2): faster on GPU, slow to start
        device="auto",          # auto | cpu | cuda | cuda:1
        seed=1337,              # model init and data order
        eval_interval=50,       # validate every this many steps (and at the first and last)
        eval_batches=8,         # validation batches (the same ones every time)
        ckpt_interval=100,      # checkpoint every this many steps (and at the end); 0 = end only
        keep_last=3,            # checkpoints kept in out_dir
        out_dir="out/{run_id}",  # checkpoints; {run_id} and {slug} are filled in
        init_from=None,         # fine-tune from a ckpt-*.pt of this project or a HF save_pretrained folder
        resume=None,            # continue a run from a ckpt-*.pt, or the latest one in a folder
        fork_from=None,         # start a new run from another run's ckpt-*.pt: its weights, optimizer moments,
                                # step and data order, with this config's LR, schedule, clipping and weight
                                # decay (the architecture, dropout included, is the checkpoint's); a resume wins
        keep_best=True,         # keep the checkpoint of lowest validation loss as best.pt (+ best.json), a
                                # hard link that keep_last never prunes: early stopping after the fact
        log_interval=10,        # print to the console every this many steps (telemetry: telemetry.every_steps)
        stop_on_nan=False,      # stop at the first non-finite loss, status 'diverged'
        skip_nonfinite=True,    # skip the optimizer step when gradients are not finite (fp16 always does)
        inject_nan_at_step=None,    # test knob: make this step's loss NaN
        inject_error_at_step=None,  # test knob: raise at the start of this step (a crash)
    )
    C.telemetry = CfgNode(
        enabled=True,           # write runs / train_steps / eval_results / system_samples
        lake=None,              # lake root; null = conf/mhw.yaml (or $MHW_LAKE)
        run_id=None,            # null = <slug>-<utc time>-<random>; a resume keeps the checkpoint's
        parent_run_id=None,     # the run this one repairs or was forked from (runs.parent_run_id)
        every_steps=1,          # one train_steps row per this many steps (HF's logging_steps): see log_row
        hardware=None,          # hardware partition key; null = fingerprint of this machine
        system_interval_s=5.0,  # system sampler period; 0 disables the sampler
        flush_rows=None,        # rows per block; null = conf/mhw.yaml (aligned to ckpt_interval)
        flush_seconds=None,     # partial blocks are written this often; null = conf/mhw.yaml
    )
    return C


# Fields that name where a run writes, not what it computes: left out of config_hash, so the same
# recipe hashes the same wherever and however often it ran.
HASH_EXCLUDE = ("telemetry.lake", "telemetry.run_id", "telemetry.hardware", "telemetry.system_interval_s",
                "telemetry.flush_rows", "telemetry.flush_seconds", "telemetry.enabled", "telemetry.every_steps",
                "trainer.out_dir",
                "trainer.resume", "trainer.log_interval", "trainer.inject_nan_at_step",
                "trainer.inject_error_at_step", "trainer.keep_last", "trainer.keep_best", "telemetry.parent_run_id",
                "data.prefetch_batches")


def build_config(path: str | None = None, overrides: dict | None = None) -> CfgNode:
    """Defaults <- YAML file <- dotted overrides, each checked against the known keys."""
    cfg = default_config()
    if path:
        cfg.merge_from_dict(load_yaml(path))
    cfg.merge_from_overrides(overrides or {})
    return cfg


def resolve_precision(precision: str, device_type: str) -> str:
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown trainer.precision {precision!r} (auto | fp32 | bf16 | fp16)")
    return precision  # fp16 on CPU: autocast float16 with GradScaler("cpu"), as on a GPU


def autocast_for(precision: str, device_type: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class WarmupCosine:
    """LR multiplier: linear warmup, then cosine decay to min_lr/lr at max_steps (LambdaLR saves it)."""

    def __init__(self, warmup: int, max_steps: int, min_ratio: float):
        self.warmup, self.max_steps, self.min_ratio = warmup, max_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step >= self.max_steps:
            return self.min_ratio
        progress = (step - self.warmup) / max(1, self.max_steps - self.warmup)
        return self.min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_ratio)


def configure_optimizer(model, tc: CfgNode, device_type: str) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused AdamW is one kernel per step on GPU; on CPU the default (foreach) is the fast one
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), **extra)


class LogSpan:
    """The steps since the last ``train_steps`` row. With ``telemetry.every_steps`` = N > 1 a row is
    written every N steps, HF Trainer's ``logging_steps`` convention: stamped with the span's last
    step, it carries the span's mean loss (NaN when any step's was: a divergence is never averaged
    away), the last step's LR, grad norm and loss scale, and the span's mean step and data times
    (so tokens/s and MFU are the span's). A span also ends at each checkpoint, so a resumed run
    rewrites exactly the rows the interrupted one wrote (spans are counted from the last checkpoint
    step), and at the last step."""

    def __init__(self):
        self.n, self.loss, self.seconds, self.data_seconds = 0, 0.0, 0.0, 0.0

    def add(self, loss: float, seconds: float, data_seconds: float) -> None:
        self.n += 1
        self.loss += loss
        self.seconds += seconds
        self.data_seconds += data_seconds


def new_run_id(slug: str) -> str:
    return f"{slug}-{utcnow().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


def _lake(a: dict) -> str:
    return a["cfg"].telemetry.lake or (a.get("settings") or mhw_config.load()).lake_root


@audit.audited("train", lake=_lake, counts=lambda s: {k: s[k] for k in ("run_id", "status", "steps", "model")})
def train(cfg: CfgNode, settings: mhw_config.Settings | None = None) -> dict:
    """Run one training job to the end (or to divergence). Returns a summary: run_id, status, steps,
    final_loss, nonfinite_steps, losses (this process's per-step losses), val (last validation),
    checkpoint (last written)."""
    settings = settings or mhw_config.load()
    tc, mc = cfg.trainer, cfg.model

    # -----------------------------------------------------------------------------
    # processes and devices: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK for DDP
    ddp = int(os.environ.get("RANK", -1)) != -1
    use_cuda = torch.cuda.is_available() and tc.device != "cpu"
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        device = f"cuda:{local_rank}" if use_cuda else "cpu"
        if use_cuda:
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = ("cuda" if use_cuda else "cpu") if tc.device == "auto" else tc.device
    master = rank == 0  # only rank 0 writes checkpoints, telemetry and the console log
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    precision = resolve_precision(tc.precision, device_type)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (fp32 runs only)
        torch.backends.cudnn.allow_tf32 = True
    ctx = autocast_for(precision, device_type)

    # -----------------------------------------------------------------------------
    # resume or start: a resumed run keeps its run_id, start time and config recipe; a fork is a new
    # run that starts at another run's checkpoint step (a retried fork resumes its own checkpoints)
    forked = bool(tc.fork_from) and not tc.resume
    resume_ckpt = checkpoint.load(tc.resume or tc.fork_from) if (tc.resume or tc.fork_from) else None
    if resume_ckpt is not None and not forked:
        run_id = cfg.telemetry.run_id or resume_ckpt["run_id"]
        started_at = resume_ckpt["started_at"]
        start_step = resume_ckpt["step"]
    else:
        run_id = cfg.telemetry.run_id or new_run_id(mc.slug)
        started_at = utcnow()
        start_step = resume_ckpt["step"] if forked else 0
    out_dir = Path(tc.out_dir.format(run_id=run_id, slug=mc.slug)).resolve()
    tc.out_dir = str(out_dir)

    # -----------------------------------------------------------------------------
    # model and data
    torch.manual_seed(tc.seed)  # the same init on every rank (DDP also broadcasts rank 0's weights)
    task = models.task_of(mc.family)
    init_dir = tc.init_from if tc.init_from and models.is_hf_dir(tc.init_from) else None
    tok = data.build_tokenizer(cfg.data, init_dir)
    if resume_ckpt is not None:
        hf_conf = resume_ckpt["hf_config"]
        model = models.from_hf_config(mc.family, hf_conf)
    elif init_dir:
        model = models.from_hf_dir(mc.family, init_dir, num_labels=mc.num_labels)
        hf_conf = model.config.to_dict()
    elif tc.init_from:
        init = checkpoint.load(tc.init_from)
        hf_conf = init["hf_config"]
        model = models.from_hf_config(mc.family, hf_conf)
        model.load_state_dict(init["model"])
        del init
    else:
        hf_conf = models.hf_config(mc, tok)
        model = models.from_hf_config(mc.family, hf_conf)
    max_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings")
    if mc.block_size > max_pos:
        raise ValueError(f"model.block_size={mc.block_size} exceeds the model's {max_pos} positions")
    train_ds, val_ds = data.build(cfg.data, task, tok, mc.block_size)
    if task == "cls" and len(train_ds.label_names) > model.config.num_labels:
        raise ValueError(f"{len(train_ds.label_names)} labels in the data, model has {model.config.num_labels}")
    model.to(device)
    n_params = models.n_params(model)
    flops_per_token = models.train_flops_per_token(model, mc.family, mc.block_size)

    optimizer = configure_optimizer(model, tc, device_type)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(tc.warmup_steps, tc.max_steps, tc.min_lr / tc.lr))
    # GradScaler only for fp16: bf16 has fp32's exponent range and needs no loss scaling
    scaler = torch.amp.GradScaler(device_type, enabled=(precision == "fp16"))
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if forked:  # the moments are the parent's; LR, schedule and decay are this config's, at its step
            for group, decay in zip(optimizer.param_groups, (tc.weight_decay, 0.0)):
                group.update(initial_lr=tc.lr, weight_decay=decay, betas=(tc.beta1, tc.beta2))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, WarmupCosine(tc.warmup_steps, tc.max_steps, tc.min_lr / tc.lr), last_epoch=start_step - 1)
        else:
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        checkpoint.set_rng_state(resume_ckpt["rng"][rank] if rank < len(resume_ckpt["rng"]) else resume_ckpt["rng"][0])
    else:
        torch.manual_seed(tc.seed + rank)  # dropout differs across ranks; init did not
    resume_ckpt = None  # free its tensors
    raw_model = model
    if tc.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if use_cuda else None)
    sampler = data.Sampler(train_ds.n, tc.batch_size, tc.grad_accum, tc.seed, rank, world)
    loader = data.Loader(train_ds, sampler, start_step, tc.max_steps, tc.grad_accum, cfg.data.prefetch_batches)

    # -----------------------------------------------------------------------------
    # telemetry: rank 0 only; blocks aligned to checkpoints so a resume rewrites instead of duplicating
    hw = hardware.fingerprint(cfg.telemetry.hardware, world if use_cuda else 1)
    block_rows = checkpoint_block_rows(cfg.telemetry.flush_rows or settings.flush_rows, tc.ckpt_interval)
    telemetry = Telemetry(
        cfg.telemetry.lake or settings.lake_root, run_id, mc.slug, hw, precision,
        enabled=master and cfg.telemetry.enabled, block_rows=block_rows,
        flush_seconds=cfg.telemetry.flush_seconds or settings.flush_seconds,
        system_interval_s=cfg.telemetry.system_interval_s)
    telemetry.write_run(
        kind="train", model_family=mc.family, n_params=n_params, gpu_name=hardware.gpu_name() if use_cuda else None,
        gpu_count=world if use_cuda else 0, precision=precision, dataset=cfg.data.path or cfg.data.name,
        config_hash=cfg.hash(HASH_EXCLUDE), code_version=hardware.code_version(), started_at=started_at,
        ended_at=None, status="running", source="trainer", steps=start_step,
        parent_run_id=cfg.telemetry.parent_run_id,
        config_json=json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    peak = hardware.peak_flops(hardware.gpu_name()) if use_cuda else None
    gpu_total = hardware.gpu_mem_total_gb() if use_cuda else None
    tokens_per_step = sampler.global_batch * train_ds.tokens
    if master:
        print(f"run {run_id}: {mc.family} {n_params / 1e6:.2f}M params, {precision} on {hw} (x{world} procs), "
              f"steps {start_step}->{tc.max_steps}, {tokens_per_step} tokens/step, out_dir {out_dir}")

    # best.pt: the checkpoint of lowest validation loss so far (a resume carries on from its best.json)
    val_at: dict[int, dict] = {}
    best_loss = ((checkpoint.best_info(out_dir) or {}).get("metrics", {}).get("loss", math.inf)
                 if tc.resume else math.inf)

    def validate(step: int) -> dict:
        m = score(raw_model, val_ds, task, tc.batch_size, tc.eval_batches, device, autocast_for(precision, device_type))
        n = m.pop("n")
        val_at[step] = dict(m)
        telemetry.evaluation(step, "validation", m, n=n)
        if master:
            print(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        return m

    def state_at(step: int, rngs: list) -> dict:
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "rng": rngs, "config": cfg.to_dict(), "hf_config": hf_conf, "family": mc.family,
                "tokenizer": tok.name, "run_id": run_id, "started_at": started_at, "model_slug": mc.slug,
                "hardware": hw, "precision": precision}

    def save(step: int, rngs: list) -> Path:
        # The rows this checkpoint covers are on disk before it is: a kill between the two then
        # loses only rows the resume rewrites, never rows it skips.
        telemetry.flush(wait=True)
        path = checkpoint.save(checkpoint.path_for(out_dir, step), state_at(step, rngs), keep_last=tc.keep_last)
        keep_best(step, path)
        return path

    def keep_best(step: int, path: Path | None = None) -> None:
        """best.pt, when this step's validation is the lowest so far: a link to the step's checkpoint,
        or, between checkpoints, a save of its own (this rank's RNG: it is a model to keep, not a
        point to resume a DDP run from)."""
        nonlocal best_loss
        loss = val_at.get(step, {}).get("loss", math.nan)
        if not (tc.keep_best and math.isfinite(loss) and loss < best_loss):
            return
        best_loss = loss
        if path is not None:
            checkpoint.mark_best(path, step, val_at[step])
        else:
            checkpoint.save_best(out_dir, step, state_at(step, [checkpoint.rng_state()]), val_at[step])

    status, losses, nonfinite, last_val, last_ckpt = "failed", [], 0, {}, None
    step, loss_f = start_step, math.nan
    every, span = max(1, int(cfg.telemetry.every_steps or 1)), LogSpan()
    iter_ms, t_prev = [], None  # wall time from one step's start to the next's: logging included
    try:
        model.train()
        while step < tc.max_steps:
            # validate and checkpoint on their schedules (validation at the resume step too: it
            # rewrites the block that step starts, exactly as the interrupted run wrote it)
            if tc.eval_interval and step % tc.eval_interval == 0 and master:
                last_val = validate(step)
                if not (tc.ckpt_interval and step % tc.ckpt_interval == 0 and step > start_step):
                    keep_best(step)  # between checkpoints (a checkpoint step links its own below)
            if tc.ckpt_interval and step % tc.ckpt_interval == 0 and step > start_step:
                rngs = gather_rng(ddp, world)
                if master:
                    last_ckpt = save(step, rngs)
            if tc.inject_error_at_step is not None and step == tc.inject_error_at_step:
                raise RuntimeError(f"injected failure at step {step} (trainer.inject_error_at_step)")

            # forward / backward over grad_accum micro-batches; DDP all-reduces on the last only
            t0 = time.perf_counter()
            if t_prev is not None:
                iter_ms.append((t0 - t_prev) * 1e3)
            t_prev = t0
            data_s = 0.0
            loss_sum = torch.zeros((), device=device)
            for micro in range(tc.grad_accum):
                td = time.perf_counter()
                batch = loader.batch(step, micro)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                data_s += time.perf_counter() - td
                if ddp:
                    model.require_backward_grad_sync = micro == tc.grad_accum - 1
                with ctx:
                    loss, _ = forward_loss(model, batch, task)
                    loss = loss / tc.grad_accum  # the sum over micro-batches is the batch mean
                if tc.inject_nan_at_step is not None and step == tc.inject_nan_at_step:
                    loss = loss * float("nan")
                loss_sum += loss.detach()
                scaler.scale(loss).backward()

            # clip the gradient (unscaled first, so the threshold is in real units)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.grad_clip or math.inf)

            # the one CPU-GPU sync of the step: loss, grad norm and loss scale in a single copy,
            # taken before optimizer.step so a non-finite step can be skipped, not applied
            scale_t = scaler._get_scale_async() if scaler.is_enabled() else torch.ones((), device=device)
            loss_f, gn_f, scale_f = torch.stack([loss_sum, grad_norm.to(loss_sum), scale_t.to(loss_sum)]).tolist()

            # step the optimizer (GradScaler skips inf/NaN steps itself; we do the same for bf16/fp32)
            finite_loss, finite_grad = math.isfinite(loss_f), math.isfinite(gn_f)
            if scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
            elif finite_grad or not tc.skip_nonfinite:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            dt = time.perf_counter() - t0

            # time and log: divergence is data, so a NaN loss is written as NaN and counted. Under DDP
            # the loss is rank 0's share of the batch: averaging it would cost a collective per step.
            losses.append(loss_f)
            nonfinite += not finite_loss
            span.add(loss_f, dt, data_s)
            stopping = tc.stop_on_nan and stop_agreed(ddp, not finite_loss, device)
            span_start = (step // tc.ckpt_interval) * tc.ckpt_interval if tc.ckpt_interval else 0
            span_ends = ((step + 1 - span_start) % every == 0 or step + 1 == tc.max_steps or stopping
                         or bool(tc.ckpt_interval and (step + 1) % tc.ckpt_interval == 0))
            if telemetry.enabled and span_ends:
                sysinfo, n, span_s = telemetry.system(), span.n, span.seconds
                telemetry.step(
                    step, epoch=sampler.epoch(step), loss=span.loss / n, lr=lr, grad_norm=gn_f,
                    tokens_per_s=tokens_per_step * n / span_s, samples_per_s=sampler.global_batch * n / span_s,
                    step_time_ms=span_s / n * 1e3, data_time_ms=span.data_seconds / n * 1e3,
                    loss_scale=scale_f if scaler.is_enabled() else None,
                    mfu=flops_per_token * tokens_per_step * n / span_s / (peak * world) if peak else None,
                    gpu_util=sysinfo.get("gpu_util"),
                    gpu_mem_gb=torch.cuda.max_memory_allocated(device) / 1e9 if use_cuda else None,
                    gpu_mem_total_gb=gpu_total, cpu_util=sysinfo.get("cpu_util"),
                    host_mem_gb=sysinfo.get("host_mem_gb"))
            if span_ends:
                span = LogSpan()
            if master and tc.log_interval and (step % tc.log_interval == 0 or not finite_loss):
                print(f"step {step}: loss {loss_f:.4f}, lr {lr:.2e}, grad_norm {gn_f:.3f}, {dt * 1e3:.1f} ms"
                      + (f", mfu {100 * flops_per_token * tokens_per_step / dt / (peak * world):.1f}%" if peak else ""))
            step += 1
            if stopping:
                status = "diverged"
                break
        else:
            status = "completed"

        # the end: a last validation and checkpoint (unless this step already had them)
        if status == "completed" and step > start_step:
            if master and tc.eval_interval:
                last_val = validate(step)
            rngs = gather_rng(ddp, world)
            if master:
                last_ckpt = save(step, rngs)
        if ddp:
            dist.barrier()  # leave together: no rank tears the process group down under another
    finally:
        # a crash still leaves the telemetry up to the last flush, and a runs row that says so
        loader.close()
        try:
            telemetry.write_run(ended_at=utcnow(), status=status, steps=step,
                                final_loss=loss_f if losses else None)
        finally:
            telemetry.close()
            if ddp:
                dist.destroy_process_group()
    if master:
        print(f"run {run_id}: {status} at step {step}, loss {loss_f:.4f}, {nonfinite} non-finite step(s)")
    return {"run_id": run_id, "status": status, "steps": step, "final_loss": loss_f, "nonfinite_steps": nonfinite,
            "losses": losses, "iter_ms": iter_ms, "val": last_val, "checkpoint": str(last_ckpt) if last_ckpt else None,
            "out_dir": str(out_dir), "hardware": hw, "model": mc.slug, "precision": precision}


def gather_rng(ddp: bool, world: int) -> list:
    """Every rank's RNG states (rank order), so a resumed DDP run restores each rank's own."""
    state = checkpoint.rng_state()
    if not ddp:
        return [state]
    out = [None] * world
    dist.all_gather_object(out, state)
    return out


def stop_agreed(ddp: bool, mine: bool, device) -> bool:
    """Whether any rank wants to stop; every rank must leave the loop together or DDP hangs."""
    if not ddp:
        return mine
    flag = torch.tensor([1.0 if mine else 0.0], device=device)  # NCCL reduces GPU tensors only
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# -----------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="train_config", metavar="FILE",
                        help="job YAML, e.g. configs/gpt2-tiny.yaml (a name under configs/ works too)")
    parser.add_argument("--lake", help="lake root (overrides telemetry.lake and conf/mhw.yaml)")
    parser.add_argument("--hardware", help="hardware partition key (default: this machine's fingerprint)")
    parser.add_argument("--run-id", help="run id (default: generated; a resume keeps the checkpoint's)")
    parser.add_argument("--init-from", help="fine-tune from a ckpt-*.pt or a HF save_pretrained folder")
    parser.add_argument("--resume", help="resume from a ckpt-*.pt, or the latest one in a folder")
    add_override_arguments(parser, default_config())


def config_from_args(args) -> CfgNode:
    overrides = overrides_from_args(args)
    for flag, key in (("lake", "telemetry.lake"), ("hardware", "telemetry.hardware"), ("run_id", "telemetry.run_id"),
                      ("init_from", "trainer.init_from"), ("resume", "trainer.resume")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    return build_config(args.train_config, overrides)


def run(args) -> int:
    cfg = config_from_args(args)
    summary = train(cfg, mhw_config.load(getattr(args, "config", None)))
    # a diverged run is not a crash, but a scheduler should still see it
    return {"completed": 0, "diverged": 2}.get(summary["status"], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
