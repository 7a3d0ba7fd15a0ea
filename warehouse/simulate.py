"""A seeded, vectorized generator of realistic fleet telemetry, for demos, tests and benchmarks.

Many models × hardware types × precisions × days of training runs, each with a realistic loss curve
(power-law decay to a floor), warmup + cosine LR, grad norms, throughput set by model size, hardware
and precision, and system samples, evals and latency samples. A share of runs carries one planted
incident (divergence, loss spike, exploding gradients, data stall, GPU under-use, memory pressure,
plateau); the ground truth lands in ``<lake>/_ground_truth/incidents.parquet`` so diagnostics can be
scored. Every ``runs`` row is tagged ``source='synthetic'``.

    mhw simulate --rows 10000000 --out .mhw/lake
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse import config
from warehouse.writer import Lake, WriteResult

# model slug, family, parameters, loss floor, tokens per optimizer step
MODELS = [
    ("gpt2-124m", "gpt2", 124_000_000, 2.9, 524_288),
    ("gpt2-355m", "gpt2", 355_000_000, 2.6, 524_288),
    ("gpt2-774m", "gpt2", 774_000_000, 2.4, 524_288),
    ("llama-1b", "llama", 1_100_000_000, 2.2, 1_048_576),
    ("llama-7b", "llama", 6_700_000_000, 1.9, 4_194_304),
    ("bert-base-cls", "bert", 110_000_000, 0.25, 65_536),
    ("bert-large-cls", "bert", 335_000_000, 0.20, 65_536),
    ("t5-small", "t5", 60_000_000, 1.8, 262_144),
]
# hardware key, device name, devices, memory per device (GB), peak dense bf16 TFLOP/s per device
HARDWARE = [
    ("h100-sxm-80gb-x8", "NVIDIA H100 80GB HBM3", 8, 80.0, 989.0),
    ("a100-sxm-80gb-x8", "NVIDIA A100-SXM4-80GB", 8, 80.0, 312.0),
    ("a100-pcie-40gb-x4", "NVIDIA A100-PCIE-40GB", 4, 40.0, 312.0),
    ("l4-24gb-x1", "NVIDIA L4", 1, 24.0, 121.0),
    ("mi300x-192gb-x8", "AMD Instinct MI300X", 8, 192.0, 1307.0),
]
PRECISIONS = ["bf16", "fp16", "fp32"]
PRECISION_SPEED = {"bf16": 1.0, "fp16": 1.0, "fp32": 0.35}
INCIDENTS = ["divergence", "loss_spike", "exploding_gradients", "data_stall", "gpu_underutilization",
             "memory_pressure", "plateau"]


def _dict_col(idx: np.ndarray, values: list[str]) -> pa.Array:
    """A string column built in C++ from small-int codes (no Python string per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(values)).cast(pa.string())


def _ts(epoch_us: np.ndarray) -> pa.Array:
    return pa.array(epoch_us.astype("datetime64[us]"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def simulate(lake_root: str, rows: int, seed: int = 0, days: int = 14,
             end_date: dt.date = dt.date(2026, 11, 22), incident_rate: float = 0.15,
             steps_per_run: int | None = None) -> dict:
    """Write about ``rows`` train_steps rows (plus runs, evals, latency and system samples) into the
    lake at ``lake_root``. Deterministic for a given seed and arguments."""
    lake = Lake(lake_root, durable=False)  # regenerable from the seed: no fsync per file
    rng = np.random.default_rng(seed)
    spr = steps_per_run or int(np.clip(rows // 40, 50, 3000))
    n_runs = max(1, -(-rows // spr))
    pairs = [(m, h) for m in range(len(MODELS)) for h in range(len(HARDWARE))]
    run_pair = rng.permutation(np.arange(n_runs) % len(pairs))
    run_prec = rng.choice(len(PRECISIONS), n_runs, p=[0.55, 0.2, 0.25])
    window_s = days * 86_400
    start_epoch = int(dt.datetime.combine(end_date - dt.timedelta(days=days - 1), dt.time(),
                                          dt.timezone.utc).timestamp())
    # Runs are sized so the fleet sums to `rows` steps; the last run takes the remainder.
    run_steps = np.full(n_runs, spr, dtype=np.int64)
    run_steps[-1] = rows - spr * (n_runs - 1)
    has_incident = rng.random(n_runs) < incident_rate
    incident = np.where(has_incident, rng.integers(0, len(INCIDENTS), n_runs), -1)
    onset = (run_steps * rng.uniform(0.3, 0.7, n_runs)).astype(np.int64)
    run_ids = [f"sim{seed}-{i:07d}" for i in range(n_runs)]

    # Each (model, hardware) pair is generated and written independently with its own child RNG,
    # two at a time: numpy and Parquet encoding release the GIL, so both cores do useful work.
    pair_rngs = np.random.SeedSequence(seed).spawn(len(pairs))

    def one_pair(p: int):
        runs = np.flatnonzero(run_pair == p)
        if len(runs) == 0:
            return {}, []
        mi, hi = pairs[p]
        model, hw = MODELS[mi], HARDWARE[hi]
        key = f"sim{seed}-{model[0]}-{hw[0]}"
        steps_t, runs_t, extra = _pair_tables(np.random.default_rng(pair_rngs[p]), runs, model, hw, run_steps,
                                              run_prec, incident, onset, run_ids, start_epoch, window_s)
        results = {name: lake.write(name, t, key) for name, t in [("train_steps", steps_t), ("runs", runs_t), *extra]}
        truth = [(run_ids[r], INCIDENTS[incident[r]], int(onset[r]), model[0], hw[0])
                 for r in runs[incident[runs] >= 0]]
        return results, truth

    totals = {"train_steps": 0, "runs": 0, "eval_results": 0, "latency_samples": 0, "system_samples": 0}
    truth, written = [], {name: [] for name in totals}
    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        for results, t in pool.map(one_pair, range(len(pairs))):
            for name, res in results.items():
                totals[name] += res.rows
                written[name] += res.files
            truth += t
    # Re-simulating with the same seed replaces the last simulation whole, even where its rows fell
    # in partitions this one does not touch.
    for name, files in written.items():
        lake.drop_stale(name, files, prefix=f"sim{seed}-")
    _write_truth(lake, truth)
    return totals


def _pair_tables(rng, runs, model, hw, run_steps, run_prec, incident, onset, run_ids, start_epoch, window_s):
    m_name, family, n_params, floor, tokens_per_step = model
    h_name, gpu_name, gpu_count, mem_gb, peak_tflops = hw
    k = len(runs)
    steps = run_steps[runs]
    n = int(steps.sum())
    local = np.repeat(np.arange(k), steps)  # run index within this pair, per row
    first = np.concatenate([[0], np.cumsum(steps)[:-1]])
    step = np.arange(n) - np.repeat(first, steps)
    prec = run_prec[runs][local]
    inc = incident[runs][local]
    ons = onset[runs][local]
    after = step >= ons

    # Throughput: FLOPs per step = 6·N·tokens; achieved fraction of peak ~ MFU 0.35-0.5.
    mfu_run = rng.uniform(0.35, 0.5, k) * np.array([PRECISION_SPEED[PRECISIONS[q]] for q in run_prec[runs]])
    step_s_run = 6 * n_params * tokens_per_step / (mfu_run * peak_tflops * 1e12 * gpu_count)
    # Small machines run smaller global batches: cap a step at ~2 s, as teams do with accumulation.
    tokens_run = tokens_per_step * np.minimum(1.0, 2.0 / step_s_run)
    step_s_run = np.minimum(step_s_run, 2.0)
    step_s = step_s_run[local] * rng.lognormal(0, 0.03, n)
    data_ms = step_s * 1000 * rng.uniform(0.005, 0.03, n)
    stall = (inc == INCIDENTS.index("data_stall")) & after & (step < ons + 300)
    data_ms[stall] = step_s[stall] * 1000 * rng.uniform(1.0, 2.0, stall.sum())  # incident noise: only its rows
    step_ms = step_s * 1000 + np.where(stall, data_ms, 0)
    tps = tokens_run[local] / (step_ms / 1000)
    mfu = 6 * n_params * tps / (peak_tflops * 1e12 * gpu_count)

    # Loss: power-law decay to the model's floor, with multiplicative noise.
    total = steps[local]
    decay = (1 + step) ** -0.45
    loss = (floor + 6.0 * decay * rng.uniform(0.9, 1.1, k)[local]) * rng.lognormal(0, 0.01, n)
    plateau = (inc == INCIDENTS.index("plateau")) & after
    loss[plateau] = (floor + 6.0 * (1 + ons[plateau]) ** -0.45) * rng.lognormal(0, 0.01, plateau.sum())
    spike = (inc == INCIDENTS.index("loss_spike")) & (step >= ons) & (step < ons + 3)
    loss[spike] *= rng.uniform(3, 6, spike.sum())
    grad = rng.lognormal(0, 0.15, n) * (0.3 + 2.0 * (1 + step) ** -0.3)
    boom = (inc == INCIDENTS.index("exploding_gradients")) & after
    grad[boom] *= np.exp(np.minimum(step[boom] - ons[boom], 200) * 0.05)
    div = (inc == INCIDENTS.index("divergence")) & after
    loss = np.where(div, np.where(step == ons, np.inf, np.nan), loss)
    grad = np.where(div, np.nan, grad)

    # LR: linear warmup then cosine decay to 10 %.
    warm = np.maximum(1, (total * 0.05).astype(np.int64))
    peak_lr = np.where(n_params > 1e9, 3e-4, 6e-4)
    prog = np.clip((step - warm) / np.maximum(1, total - warm), 0, 1)
    lr = np.where(step < warm, peak_lr * (step + 1) / warm, peak_lr * (0.1 + 0.45 * (1 + np.cos(np.pi * prog))))

    util = np.clip(rng.normal(92, 3, n), 0, 100)
    under = inc == INCIDENTS.index("gpu_underutilization")
    util[under] = np.clip(rng.normal(38, 5, under.sum()), 0, 100)
    mem_frac = np.clip(rng.uniform(0.55, 0.8, k)[local] + rng.normal(0, 0.005, n), 0, 1)
    pressure = (inc == INCIDENTS.index("memory_pressure")) & after
    mem_frac[pressure] = rng.uniform(0.975, 0.995, pressure.sum())

    # Time: runs start anywhere in the window; each step ends step_ms after the previous.
    run_start = start_epoch + rng.uniform(0, window_s * 0.9, k)
    ts_s = np.repeat(run_start, steps) + np.cumsum(step_ms / 1000) - np.repeat(
        np.concatenate([[0], np.cumsum(step_ms / 1000)[np.cumsum(steps)[:-1] - 1]]), steps)
    ts_us = (ts_s * 1e6).astype(np.int64)

    precs = _dict_col(prec, PRECISIONS)
    rid = _dict_col(local, [run_ids[r] for r in runs])
    const = lambda v: pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([v])).cast(pa.string())
    steps_t = pa.table({
        "run_id": rid, "step": step, "ts": _ts(ts_us), "precision": precs,
        "epoch": step / np.maximum(1, total) * 3, "loss": loss, "lr": lr, "grad_norm": grad,
        # Rounded to what real sources report (NVML: whole percent; timers: microseconds; memory: MB).
        "tokens_per_s": tps, "samples_per_s": tps / 1024, "step_time_ms": np.round(step_ms, 3),
        "data_time_ms": np.round(data_ms, 3),
        "loss_scale": np.where(prec == PRECISIONS.index("fp16"), 65536.0, np.nan), "mfu": mfu,
        "gpu_util": np.round(util), "gpu_mem_gb": np.round(mem_frac * mem_gb, 3), "gpu_mem_total_gb": np.full(n, mem_gb),
        "cpu_util": np.round(np.clip(rng.normal(60, 10, n), 0, 100), 1), "host_mem_gb": np.round(rng.normal(48, 2, n), 3),
        "model": const(m_name), "hardware": const(h_name),
    })

    last = np.cumsum(steps) - 1
    status = np.where(incident[runs] == INCIDENTS.index("divergence"), "diverged", "completed")
    runs_t = pa.table({
        "run_id": [run_ids[r] for r in runs], "kind": ["train"] * k, "model_family": [family] * k,
        "n_params": np.full(k, n_params), "gpu_name": [gpu_name] * k, "gpu_count": np.full(k, gpu_count, np.int32),
        "precision": [PRECISIONS[q] for q in run_prec[runs]], "dataset": ["synthetic-web"] * k,
        "config_hash": [f"{hash((m_name, h_name, int(q))) & 0xffffffff:08x}" for q in run_prec[runs]],
        "code_version": ["sim"] * k, "started_at": _ts((run_start * 1e6).astype(np.int64)),
        "ended_at": _ts(ts_us[last]), "status": list(status), "source": ["synthetic"] * k,
        "final_loss": loss[last], "steps": steps, "model": [m_name] * k, "hardware": [h_name] * k,
    })
    return steps_t, runs_t, _evals(rng, runs, run_ids, steps, ts_us, first, loss, run_prec, m_name, h_name,
                                   n_params, gpu_count)


def _evals(rng, runs, run_ids, steps, ts_us, first, loss, run_prec, m_name, h_name, n_params, gpu_count):
    """Per run: 4 checkpoints evaluated (3 quality metrics and 64 latency requests each), and one
    system sample per device every 1000 steps. Vectorized like the steps: no Python loop per row."""
    k = len(runs)
    rid = [run_ids[r] for r in runs]
    eval_ids = [f"{r}-eval" for r in rid]
    prec = run_prec[runs]
    # checkpoints: 4 per run at 25/50/75/100 % of its steps
    ck_run = np.repeat(np.arange(k), 4)
    ck_step = (steps[ck_run] * np.tile(np.arange(1, 5), k) // 4) - 1
    ck_row = first[ck_run] + ck_step
    ck_ts, ck_loss = ts_us[ck_row], loss[ck_row]
    metrics = ["loss", "perplexity", "accuracy"]
    values = np.stack([ck_loss, np.exp(np.minimum(ck_loss, 50)), np.clip(1 - ck_loss / 8, 0, 1)], axis=1).ravel()
    e_ck = np.repeat(np.arange(len(ck_run)), 3)
    ne = len(e_ck)
    eval_t = pa.table({
        "run_id": _dict_col(ck_run[e_ck], eval_ids), "train_run_id": _dict_col(ck_run[e_ck], rid),
        "checkpoint": pa.array([f"ckpt-{s}" for s in ck_step[e_ck]]), "checkpoint_step": ck_step[e_ck],
        "ts": _ts(ck_ts[e_ck]), "precision": _dict_col(prec[ck_run[e_ck]], PRECISIONS),
        "suite": _dict_col(np.zeros(ne, np.int32), ["quality"]),
        "metric": _dict_col(np.tile(np.arange(3), len(ck_run)), metrics), "value": values,
        "n": np.full(ne, 1000), "model": [m_name] * ne, "hardware": [h_name] * ne,
    })
    l_ck = np.repeat(np.arange(len(ck_run)), 64)
    nl = len(l_ck)
    lat_t = pa.table({
        "run_id": _dict_col(ck_run[l_ck], eval_ids), "checkpoint_step": ck_step[l_ck], "ts": _ts(ck_ts[l_ck]),
        "precision": _dict_col(prec[ck_run[l_ck]], PRECISIONS), "batch_size": np.ones(nl, np.int32),
        "seq_len": np.full(nl, 512, np.int32), "latency_ms": (2.0 + n_params / 5e7) * rng.lognormal(0, 0.25, nl),
        "ok": np.ones(nl, bool), "model": [m_name] * nl, "hardware": [h_name] * nl,
    })
    # system samples: every 1000 steps, one per device
    per_run = (steps + 999) // 1000
    s_run = np.repeat(np.arange(k), per_run)
    s_step = (np.arange(len(s_run)) - np.repeat(np.cumsum(per_run) - per_run, per_run)) * 1000
    s_run, s_step = np.repeat(s_run, gpu_count), np.repeat(s_step, gpu_count)
    dev = np.tile(np.arange(gpu_count), len(s_run) // gpu_count)
    ns = len(s_run)
    sys_t = pa.table({
        "run_id": _dict_col(s_run, rid), "ts": _ts(ts_us[first[s_run] + s_step]),
        "device": _dict_col(dev, [f"cuda:{d}" for d in range(gpu_count)]), "util": rng.normal(90, 4, ns),
        "mem_used_gb": rng.uniform(40, 70, ns), "mem_total_gb": np.full(ns, 80.0),
        "power_w": rng.normal(600, 40, ns), "temperature_c": rng.normal(65, 4, ns),
        "model": [m_name] * ns, "hardware": [h_name] * ns,
    })
    return [("eval_results", eval_t), ("latency_samples", lat_t), ("system_samples", sys_t)]


def _write_truth(lake: Lake, truth: list) -> None:
    t = pa.table({k: list(v) for k, v in zip(("run_id", "incident", "onset_step", "model", "hardware"),
                                             zip(*truth) if truth else [[]] * 5)},
                 schema=pa.schema([("run_id", pa.string()), ("incident", pa.string()), ("onset_step", pa.int64()),
                                   ("model", pa.string()), ("hardware", pa.string())]))
    path = f"{lake.root}/_ground_truth/incidents.parquet"
    lake._write_file(t, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="train_steps rows to generate")
    p.add_argument("--out", help="lake root (default from config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 22))
    p.add_argument("--incident-rate", type=float, default=0.15, help="share of runs with a planted incident")


def run(args: argparse.Namespace) -> int:
    out = args.out or config.load().lake_root
    t0 = time.perf_counter()
    totals = simulate(out, args.rows, seed=args.seed, days=args.days, end_date=args.end_date,
                      incident_rate=args.incident_rate)
    secs = time.perf_counter() - t0
    print(f"simulated {sum(totals.values()):,} rows into {out} in {secs:.2f} s "
          f"({sum(totals.values()) / secs:,.0f} rows/s)")
    for name, n in totals.items():
        print(f"  {name:16s} {n:>12,}")
    return 0
