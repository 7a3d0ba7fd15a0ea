"""A seeded, vectorized generator of realistic fleet telemetry, for demos, tests and benchmarks.

Many models × hardware types × precisions × days of training runs, each with a realistic loss curve
(power-law decay to a floor), warmup + cosine LR, grad norms, throughput set by model size, hardware
and precision, system samples, validation evals and latency samples at checkpoints; plus a serving
fleet: every model on every hardware type in fp32, bf16 and int8 is evaluated daily (quality and
robustness suites) and timed on live-like requests, and serves a few minutes of live traffic a day,
seen both as scrapes of its server's /metrics (``serving_scrapes``) and as its request log
(``serving_requests``).

Incidents are planted with ground truth in ``<lake>/_ground_truth/incidents.parquet``, one incident
type per diagnostic rule (pipelines/diagnose.py), so the rules can be scored:

- run level (a share ``incident_rate`` of training runs carries one, from its ``onset_step``):
  divergence, loss_spike, exploding_gradients, vanishing_gradients, plateau, overfitting,
  lr_schedule_anomaly, throughput_drop (a straggler), data_stall, gpu_underutilization,
  memory_pressure, underfitting (the whole run: its loss levels out 0.6 x magnitude above the floor its
  model's other runs reach, as with an LR far too low or a bug that caps capacity);
- fleet level (``fleet_incidents`` of each type, on distinct model × hardware pairs, from an
  ``onset_date``): eval_regression (one suite), latency_slo_breach and error_rate_breach (one serving
  precision), throughput_regression (training runs started from that day are slower: a bad driver or
  node; recorded only where a slowed run has an earlier full-speed run of its precision to be
  compared with), precision_gap (int8 loses accuracy against fp32 for the whole window);
  serving_slo_breach, serving_error_breach and serving_saturation on the live traffic of one
  serving precision (``_serving_tables``).

``magnitude`` scales every incident (1.0 = the default size; smaller is subtler, see ``_pair_tables``
and ``_fleet_tables`` for what it multiplies). Runs without an incident, and model × hardware pairs
without a fleet incident, are clean. Every ``runs`` row is tagged ``source='synthetic'``.

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

from warehouse import audit, config
from warehouse.writer import Lake

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
PRECISIONS = ["bf16", "fp16", "fp32"]  # training
PRECISION_SPEED = {"bf16": 1.0, "fp16": 1.0, "fp32": 0.35}
SERVING_PRECISIONS = ["fp32", "bf16", "int8"]
LATENCY_FACTOR = {"fp32": 1.6, "bf16": 1.0, "fp16": 1.0, "int8": 0.7}  # request latency vs bf16
# serving quality vs fp32: accuracy offset, loss factor (int8 normally loses a little)
PRECISION_QUALITY = {"fp32": (0.0, 1.0), "bf16": (-0.001, 1.001), "int8": (-0.004, 1.005)}
RUN_INCIDENTS = ["divergence", "loss_spike", "exploding_gradients", "vanishing_gradients", "plateau",
                 "overfitting", "lr_schedule_anomaly", "throughput_drop", "data_stall",
                 "gpu_underutilization", "memory_pressure", "underfitting"]
FLEET_INCIDENTS = ["eval_regression", "latency_slo_breach", "error_rate_breach", "throughput_regression",
                   "precision_gap", "serving_slo_breach", "serving_error_breach", "serving_saturation"]
SERVING_INCIDENTS = ("serving_slo_breach", "serving_error_breach", "serving_saturation")
LIVE_DAYS = 7  # live traffic on the window's last days only (serving incidents start on day 4 or later)
LIVE_REQUESTS = 60  # live requests a serving precision answers a day, within one 5-minute window
LIVE_SCRAPES = 6  # scrapes of its server's /metrics in that window, one a minute
LIVE_LE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))  # seconds
INCIDENTS = RUN_INCIDENTS + FLEET_INCIDENTS
EVAL_CHECKPOINTS = 8  # validation evals per training run, evenly spaced
RELEASE_EVERY_DAYS = 5  # the serving fleet promotes a new checkpoint this often
SERVING_METRICS = [("quality", "accuracy"), ("quality", "f1"), ("quality", "loss"), ("robustness", "accuracy")]
TRUTH_SCHEMA = pa.schema([
    ("run_id", pa.string()),  # run-level incidents; null for fleet ones
    ("incident", pa.string()),  # the rule that should fire
    ("onset_step", pa.int64()),  # first affected step (run level)
    ("model", pa.string()), ("hardware", pa.string()),
    ("precision", pa.string()),  # the run's, or the serving precision hit (null: all of them)
    ("suite", pa.string()),  # eval suite hit (null: all or n/a)
    ("onset_date", pa.date32()),  # UTC date the incident starts
    ("level", pa.string()),  # run | fleet
    ("magnitude", pa.float64()),
])


def _dict_col(idx: np.ndarray, values: list[str]) -> pa.Array:
    """A string column built in C++ from small-int codes (no Python string per row)."""
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(values)).cast(pa.string())


def _const(n: int, value: str) -> pa.Array:
    return _dict_col(np.zeros(n, np.int32), [value])


def _ts(epoch_us: np.ndarray) -> pa.Array:
    return pa.array(epoch_us.astype("datetime64[us]"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def _date(epoch_s: float) -> dt.date:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).date()


@audit.audited("simulate", counts=lambda totals: {"rows_in": sum(totals.values()), **totals})
def simulate(lake_root: str, rows: int, seed: int = 0, days: int = 14,
             end_date: dt.date = dt.date(2026, 11, 22), incident_rate: float = 0.15,
             steps_per_run: int | None = None, magnitude: float = 1.0, fleet_incidents: int = 2,
             serving_requests: int = 256) -> dict:
    """Write about ``rows`` train_steps rows (plus runs, evals, latency and system samples, and the
    serving fleet's evals and requests) into the lake at ``lake_root``. Deterministic for a given seed
    and arguments. ``fleet_incidents`` of each fleet incident type are planted (on distinct model ×
    hardware pairs while there are enough)."""
    if magnitude <= 0:
        raise ValueError("magnitude must be > 0")
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
    incident = np.where(has_incident, rng.integers(0, len(RUN_INCIDENTS), n_runs), -1)
    onset = (run_steps * rng.uniform(0.3, 0.7, n_runs)).astype(np.int64)
    run_ids = [f"sim{seed}-{i:07d}" for i in range(n_runs)]
    fleet = _plan_fleet(np.random.default_rng([seed, 1]), len(pairs), days, fleet_incidents)

    # Each (model, hardware) pair is generated and written independently with its own child RNGs,
    # two at a time: numpy and Parquet encoding release the GIL, so both cores do useful work.
    pair_rngs = np.random.SeedSequence(seed).spawn(len(pairs))
    serve_rngs = np.random.SeedSequence([seed, 2]).spawn(len(pairs))

    def one_pair(p: int):
        runs = np.flatnonzero(run_pair == p)
        mi, hi = pairs[p]
        model, hw = MODELS[mi], HARDWARE[hi]
        key = f"sim{seed}-{model[0]}-{hw[0]}"
        plan = [f for f in fleet if f["pair"] == p]
        tables: dict[str, list[pa.Table]] = {}
        truth = []
        if len(runs):
            slow_from = next((start_epoch + f["day"] * 86_400 for f in plan
                              if f["incident"] == "throughput_regression"), None)
            out, run_truth, n_slowed = _pair_tables(
                np.random.default_rng(pair_rngs[p]), runs, model, hw, run_steps, run_prec, incident, onset,
                run_ids, start_epoch, window_s, magnitude, slow_from)
            for name, t in out:
                tables.setdefault(name, []).append(t)
            truth += run_truth
        else:
            n_slowed = 0
        for name, t in _fleet_tables(np.random.default_rng(serve_rngs[p]), seed, mi, model, hw, days,
                                     start_epoch, plan, magnitude, serving_requests):
            tables.setdefault(name, []).append(t)
        for name, t in _serving_tables(np.random.default_rng([seed, 4, p]), model, hw, days, start_epoch, plan,
                                       magnitude):
            tables.setdefault(name, []).append(t)
        for f in plan:
            if f["incident"] == "throughput_regression" and n_slowed == 0:
                continue  # no slowed run has a full-speed run of its precision before it: nothing to see
            truth.append({"run_id": None, "incident": f["incident"], "onset_step": None, "model": model[0],
                          "hardware": hw[0], "precision": f["precision"], "suite": f["suite"],
                          "onset_date": _date(start_epoch + f["day"] * 86_400), "level": "fleet",
                          "magnitude": magnitude})
        results = {name: lake.write(name, pa.concat_tables(ts) if len(ts) > 1 else ts[0], key)
                   for name, ts in tables.items()}
        return results, truth

    totals = {"train_steps": 0, "runs": 0, "eval_results": 0, "latency_samples": 0, "system_samples": 0,
              "serving_scrapes": 0, "serving_requests": 0}
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


def _plan_fleet(rng, n_pairs: int, days: int, per_type: int) -> list[dict]:
    """Which model × hardware pair gets which fleet incident, from which day. Regressions need a few
    days of history before them (onset on day 4 or later); a precision gap holds from day 0."""
    plan = []
    order = rng.permutation(n_pairs)
    slot = 0
    for _ in range(per_type):
        for kind in FLEET_INCIDENTS:
            if kind != "precision_gap" and days < 6:
                continue
            p = int(order[slot % n_pairs])
            slot += 1
            day = 0 if kind == "precision_gap" else int(rng.integers(4, days))
            precision = "int8" if kind == "precision_gap" else None
            if kind in ("latency_slo_breach", "error_rate_breach", *SERVING_INCIDENTS):
                precision = SERVING_PRECISIONS[int(rng.integers(0, len(SERVING_PRECISIONS)))]
            suite = {"eval_regression": ["quality", "robustness"][int(rng.integers(0, 2))],
                     "precision_gap": "quality"}.get(kind)
            plan.append({"incident": kind, "pair": p, "day": day, "precision": precision, "suite": suite})
    return plan


def _pair_tables(rng, runs, model, hw, run_steps, run_prec, incident, onset, run_ids, start_epoch, window_s,
                 m: float, slow_from: float | None):
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
    mc = min(m, 1.0)  # for incidents whose size saturates (a plateau cannot be flatter than flat)

    def hit(name: str, mask=None) -> np.ndarray:
        """Rows of runs carrying incident ``name`` (from onset on unless ``mask`` says otherwise)."""
        return (inc == RUN_INCIDENTS.index(name)) & (after if mask is None else mask)

    # Runs start anywhere in the window. A fleet throughput regression (a bad driver or node on this
    # hardware) slows every run of this pair that starts on or after its onset day, whole.
    run_start = start_epoch + rng.uniform(0, window_s * 0.9, k)
    slowed = run_start >= slow_from if slow_from is not None else np.zeros(k, bool)

    # Throughput: FLOPs per step = 6·N·tokens; achieved fraction of peak ~ MFU 0.40-0.46 (runs of one
    # config differ by a few percent, as they do on a healthy fleet).
    mfu_run = rng.uniform(0.40, 0.46, k) * np.array([PRECISION_SPEED[PRECISIONS[q]] for q in run_prec[runs]])
    step_s_run = 6 * n_params * tokens_per_step / (mfu_run * peak_tflops * 1e12 * gpu_count)
    # Small machines run smaller global batches: cap a step at ~2 s, as teams do with accumulation.
    tokens_run = tokens_per_step * np.minimum(1.0, 2.0 / step_s_run)
    step_s_run = np.minimum(step_s_run, 2.0) * np.where(slowed, 1 + m, 1.0)
    step_s = step_s_run[local] * rng.lognormal(0, 0.03, n)
    data_ms = step_s * 1000 * rng.uniform(0.005, 0.03, n)
    # data stall: the input pipeline cannot keep up for 300 steps; the step waits for data
    stall = hit("data_stall", after & (step < ons + 300))
    data_ms[stall] = step_s[stall] * 1000 * rng.uniform(1.0, 2.0, stall.sum()) * m
    # straggler: one slow node holds every step back by (1 + m) for a fifth of the run
    strag = hit("throughput_drop", after & (step < ons + np.maximum(1, steps[local] // 5)))
    step_s = np.where(strag, step_s * (1 + m), step_s)
    step_ms = step_s * 1000 + np.where(stall, data_ms, 0)
    tps = tokens_run[local] / (step_ms / 1000)
    mfu = 6 * n_params * tps / (peak_tflops * 1e12 * gpu_count)

    # Loss: power-law decay to the model's floor (the smooth curve), with multiplicative noise.
    total = steps[local]
    scale = rng.uniform(0.9, 1.1, k)[local]
    curve = floor + 6.0 * (1 + step) ** -0.45 * scale
    plateau = hit("plateau")
    at_onset = floor + 6.0 * (1 + ons[plateau]) ** -0.45 * scale[plateau]
    curve[plateau] = at_onset + (1 - mc) * (curve[plateau] - at_onset)  # stops improving (m = 1: flat)
    stuck = inc == RUN_INCIDENTS.index("underfitting")  # the whole run, not from its onset
    curve[stuck] += 0.6 * m * floor
    loss = curve * rng.lognormal(0, 0.01, n)
    spike = hit("loss_spike", (step >= ons) & (step < ons + 3))
    loss[spike] *= 1 + rng.uniform(2, 5, spike.sum()) * m
    grad = rng.lognormal(0, 0.15, n) * (0.3 + 2.0 * (1 + step) ** -0.3)
    boom = hit("exploding_gradients")
    grad[boom] *= np.exp(np.minimum(step[boom] - ons[boom], 200) * 0.05 * m)
    vanish = hit("vanishing_gradients")
    grad[vanish] *= 10.0 ** (-3 * m * np.minimum((step[vanish] - ons[vanish]) / 50, 1))
    div = hit("divergence")
    loss = np.where(div, np.where(step == ons, np.inf, np.nan), loss)
    grad = np.where(div, np.nan, grad)

    # LR: linear warmup then cosine decay to 10 %; an anomaly multiplies it by (1 + 9m) from onset
    # (a resume that restored the wrong scale).
    warm = np.maximum(1, (total * 0.05).astype(np.int64))
    peak_lr = np.where(n_params > 1e9, 3e-4, 6e-4)
    prog = np.clip((step - warm) / np.maximum(1, total - warm), 0, 1)
    lr = np.where(step < warm, peak_lr * (step + 1) / warm, peak_lr * (0.1 + 0.45 * (1 + np.cos(np.pi * prog))))
    lr = np.where(hit("lr_schedule_anomaly"), lr * (1 + 9 * m), lr)

    util = np.clip(rng.normal(92, 3, n), 0, 100)
    under = hit("gpu_underutilization")
    util[under] = np.clip(rng.normal(92 - 54 * m, 5, under.sum()), 0, 100)
    mem_frac = np.clip(rng.uniform(0.55, 0.8, k)[local] + rng.normal(0, 0.005, n), 0, 1)
    pressure = hit("memory_pressure")  # headroom shrinks to 0.5-2.5 % (at m = 1)
    mem_frac[pressure] = np.clip(1 - rng.uniform(0.005, 0.025, pressure.sum()) / m, 0, 1)

    # Time: each step ends step_ms after the previous.
    ts_s = np.repeat(run_start, steps) + np.cumsum(step_ms / 1000) - np.repeat(
        np.concatenate([[0], np.cumsum(step_ms / 1000)[np.cumsum(steps)[:-1] - 1]]), steps)
    ts_us = (ts_s * 1e6).astype(np.int64)

    precs = _dict_col(prec, PRECISIONS)
    rid = _dict_col(local, [run_ids[r] for r in runs])
    steps_t = pa.table({
        "run_id": rid, "step": step, "ts": _ts(ts_us), "precision": precs,
        "epoch": step / np.maximum(1, total) * 3, "loss": loss, "lr": lr, "grad_norm": grad,
        # Rounded to what real sources report (NVML: whole percent; timers: microseconds; memory: MB).
        "tokens_per_s": tps, "samples_per_s": tps / 1024, "step_time_ms": np.round(step_ms, 3),
        "data_time_ms": np.round(data_ms, 3),
        "loss_scale": np.where(prec == PRECISIONS.index("fp16"), 65536.0, np.nan), "mfu": mfu,
        "gpu_util": np.round(util), "gpu_mem_gb": np.round(mem_frac * mem_gb, 3), "gpu_mem_total_gb": np.full(n, mem_gb),
        "cpu_util": np.round(np.clip(rng.normal(60, 10, n), 0, 100), 1), "host_mem_gb": np.round(rng.normal(48, 2, n), 3),
        "model": _const(n, m_name), "hardware": _const(n, h_name),
    })

    last = np.cumsum(steps) - 1
    status = np.where(incident[runs] == RUN_INCIDENTS.index("divergence"), "diverged", "completed")
    runs_t = pa.table({
        "run_id": [run_ids[r] for r in runs], "kind": ["train"] * k, "model_family": [family] * k,
        "n_params": np.full(k, n_params), "gpu_name": [gpu_name] * k, "gpu_count": np.full(k, gpu_count, np.int32),
        "precision": [PRECISIONS[q] for q in run_prec[runs]], "dataset": ["synthetic-web"] * k,
        "config_hash": [f"{hash((m_name, h_name, int(q))) & 0xffffffff:08x}" for q in run_prec[runs]],
        "code_version": ["sim"] * k, "started_at": _ts((run_start * 1e6).astype(np.int64)),
        "ended_at": _ts(ts_us[last]), "status": list(status), "source": ["synthetic"] * k,
        "final_loss": loss[last], "steps": steps, "model": [m_name] * k, "hardware": [h_name] * k,
    })
    truth = [{"run_id": run_ids[r], "incident": RUN_INCIDENTS[incident[r]], "onset_step": int(onset[r]),
              "model": m_name, "hardware": h_name, "precision": PRECISIONS[run_prec[r]], "suite": None,
              "onset_date": _date(ts_s[first[i] + min(onset[r], steps[i] - 1)]), "level": "run", "magnitude": m}
             for i, r in enumerate(runs) if incident[r] >= 0]
    # Validation loss follows the smooth curve (a plateau flattens it, a divergence makes it NaN);
    # overfitting detaches it from training at onset: it rises from there, by 15 %·m at the end of the
    # run, while training loss still falls.
    val = curve * 1.02
    over = hit("overfitting")
    val_onset = (floor + 6.0 * (1 + ons[over]) ** -0.45 * scale[over]) * 1.02
    val[over] = val_onset * (1 + 0.15 * m * (step[over] - ons[over]) / np.maximum(1, total[over] - ons[over]))
    val[div] = np.nan
    out = [("train_steps", steps_t), ("runs", runs_t)]
    out += _evals(rng, runs, run_ids, steps, ts_us, first, val, run_prec, m_name, h_name, n_params, gpu_count,
                  peak_tflops)
    # A regression is only observable against earlier runs of the same precision that ran at full speed.
    prec_run = run_prec[runs]
    observable = sum(1 for i in np.flatnonzero(slowed)
                     if np.any(~slowed & (prec_run == prec_run[i]) & (run_start < run_start[i])))
    return out, truth, observable


def _latency_base_ms(n_params: int, precision: str, peak_tflops: float) -> float:
    return (2.0 + n_params / 5e7) * LATENCY_FACTOR[precision] * (989.0 / peak_tflops) ** 0.3


def _evals(rng, runs, run_ids, steps, ts_us, first, val, run_prec, m_name, h_name, n_params, gpu_count,
           peak_tflops):
    """Per run: EVAL_CHECKPOINTS validation evals (loss, perplexity, accuracy), 64 timed requests at
    every other checkpoint, and one system sample per device every 1000 steps. Vectorized like the
    steps: no Python loop per row."""
    k = len(runs)
    rid = [run_ids[r] for r in runs]
    eval_ids = [f"{r}-eval" for r in rid]
    prec = run_prec[runs]
    c = EVAL_CHECKPOINTS
    ck_run = np.repeat(np.arange(k), c)
    ck_step = np.maximum(0, (steps[ck_run] * np.tile(np.arange(1, c + 1), k) // c) - 1)
    ck_row = first[ck_run] + ck_step
    ck_ts = ts_us[ck_row]
    ck_loss = val[ck_row] * rng.lognormal(0, 0.003, len(ck_run))
    metrics = ["loss", "perplexity", "accuracy"]
    values = np.stack([ck_loss, np.exp(np.minimum(ck_loss, 50)), np.clip(1 - ck_loss / 8, 0, 1)], axis=1).ravel()
    e_ck = np.repeat(np.arange(len(ck_run)), 3)
    ne = len(e_ck)
    eval_t = pa.table({
        "run_id": _dict_col(ck_run[e_ck], eval_ids), "train_run_id": _dict_col(ck_run[e_ck], rid),
        "checkpoint": pa.array([f"ckpt-{s}" for s in ck_step[e_ck]]), "checkpoint_step": ck_step[e_ck],
        "ts": _ts(ck_ts[e_ck]), "precision": _dict_col(prec[ck_run[e_ck]], PRECISIONS),
        "suite": _const(ne, "validation"),
        "metric": _dict_col(np.tile(np.arange(3), len(ck_run)), metrics), "value": values,
        "n": np.full(ne, 1000), "model": _const(ne, m_name), "hardware": _const(ne, h_name),
    })
    timed = np.flatnonzero(np.tile(np.arange(c) % 2 == 1, k))  # every other checkpoint
    l_ck = np.repeat(timed, 64)
    nl = len(l_ck)
    base = np.array([_latency_base_ms(n_params, p, peak_tflops) for p in PRECISIONS])[prec[ck_run[l_ck]]]
    lat_t = pa.table({
        "run_id": _dict_col(ck_run[l_ck], eval_ids), "checkpoint_step": ck_step[l_ck], "ts": _ts(ck_ts[l_ck]),
        "precision": _dict_col(prec[ck_run[l_ck]], PRECISIONS), "batch_size": np.ones(nl, np.int32),
        "seq_len": np.full(nl, 512, np.int32), "latency_ms": base * rng.lognormal(0, 0.25, nl),
        "ok": np.ones(nl, bool), "model": _const(nl, m_name), "hardware": _const(nl, h_name),
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
        "model": _const(ns, m_name), "hardware": _const(ns, h_name),
    })
    return [("eval_results", eval_t), ("latency_samples", lat_t), ("system_samples", sys_t)]


def _fleet_tables(rng, seed, mi, model, hw, days, start_epoch, plan, m, n_requests):
    """The serving fleet on one model × hardware pair: every day, each serving precision is evaluated
    (SERVING_METRICS) and timed on ``n_requests`` requests. A new checkpoint is promoted every
    RELEASE_EVERY_DAYS days (slightly better). Planted here:

    - eval_regression: the suite's higher-is-better metrics drop by 0.03·m, its loss rises 4 %·m;
    - precision_gap: int8 quality metrics lose 0.03·m more (loss +4 %·m) than usual, all window;
    - latency_slo_breach: 10 % of the precision's requests take (1 + 2m)× longer;
    - error_rate_breach: 5 %·m of the precision's requests fail.
    """
    m_name, _, n_params, _, _ = model
    h_name, _, _, _, peak_tflops = hw
    sp, nm = len(SERVING_PRECISIONS), len(SERVING_METRICS)
    # model quality is shared across hardware: its own generator, seeded by model
    mrng = np.random.default_rng([seed, 3, mi])
    acc0 = mrng.uniform(0.62, 0.88)
    f1_0 = acc0 - mrng.uniform(0.01, 0.04)
    loss0 = mrng.uniform(0.3, 1.2)
    hw_offset = rng.normal(0, 0.002)

    # evals: one row per (day, precision, metric)
    day = np.repeat(np.arange(days), sp * nm)
    p = np.tile(np.repeat(np.arange(sp), nm), days)
    mt = np.tile(np.arange(nm), days * sp)
    release = day // RELEASE_EVERY_DAYS
    suites = np.array([s for s, _ in SERVING_METRICS])[mt]
    is_loss = np.array([mm == "loss" for _, mm in SERVING_METRICS])[mt]
    acc_off = np.array([PRECISION_QUALITY[q][0] for q in SERVING_PRECISIONS])[p]
    loss_fac = np.array([PRECISION_QUALITY[q][1] for q in SERVING_PRECISIONS])[p]
    base = np.array([acc0, f1_0, loss0, acc0 - 0.05])[mt]
    value = np.where(is_loss, base * loss_fac * 0.995 ** release * rng.lognormal(0, 0.0015, len(day)),
                     base + acc_off + hw_offset + 0.002 * release + rng.normal(0, 0.001, len(day)))
    for f in plan:
        if f["incident"] == "eval_regression":
            sel = (suites == f["suite"]) & (day >= f["day"])
        elif f["incident"] == "precision_gap":
            sel = (suites == f["suite"]) & (p == SERVING_PRECISIONS.index(f["precision"]))
        else:
            continue
        value = np.where(sel & is_loss, value * (1 + 0.04 * m), np.where(sel, value - 0.03 * m, value))
    n = len(day)
    eval_ts = start_epoch + day * 86_400 + 43_200 + p * 600 + rng.uniform(0, 300, n)
    ids = [f"sim{seed}-serve-{m_name}-{h_name}-{q}-d{d:03d}" for d in range(days) for q in SERVING_PRECISIONS]
    id_idx = day * sp + p
    releases = [f"release-{r}" for r in range(days // RELEASE_EVERY_DAYS + 1)]
    eval_t = pa.table({
        "run_id": _dict_col(id_idx, ids), "train_run_id": pa.nulls(n, pa.string()),
        "checkpoint": _dict_col(release, releases), "checkpoint_step": (release + 1) * 10_000,
        "ts": _ts((eval_ts * 1e6).astype(np.int64)), "precision": _dict_col(p, SERVING_PRECISIONS),
        "suite": _dict_col(mt, [s for s, _ in SERVING_METRICS]),
        "metric": _dict_col(mt, [mm for _, mm in SERVING_METRICS]), "value": value,
        "n": np.full(n, 5000), "model": _const(n, m_name), "hardware": _const(n, h_name),
    })

    # requests: n_requests per (day, precision), spread over the day
    rd = np.repeat(np.arange(days), sp * n_requests)
    rp = np.tile(np.repeat(np.arange(sp), n_requests), days)
    nr = len(rd)
    lat = np.array([_latency_base_ms(n_params, q, peak_tflops) for q in SERVING_PRECISIONS])[rp]
    lat = lat * rng.lognormal(0, 0.25, nr)
    ok = rng.random(nr) >= 0.0002
    for f in plan:
        if f["incident"] not in ("latency_slo_breach", "error_rate_breach"):
            continue
        sel = (rp == SERVING_PRECISIONS.index(f["precision"])) & (rd >= f["day"])
        if f["incident"] == "latency_slo_breach":
            lat = np.where(sel & (rng.random(nr) < 0.10), lat * (1 + 2 * m), lat)
        else:
            ok = ok & ~(sel & (rng.random(nr) < 0.05 * m))
    req_ts = start_epoch + rd * 86_400 + rng.uniform(0, 86_400, nr)
    lat_t = pa.table({
        "run_id": _dict_col(rd * sp + rp, ids), "checkpoint_step": (rd // RELEASE_EVERY_DAYS + 1) * 10_000,
        "ts": _ts((req_ts * 1e6).astype(np.int64)), "precision": _dict_col(rp, SERVING_PRECISIONS),
        "batch_size": np.ones(nr, np.int32), "seq_len": np.full(nr, 512, np.int32), "latency_ms": lat,
        "ok": ok, "model": _const(nr, m_name), "hardware": _const(nr, h_name),
    })
    return [("eval_results", eval_t), ("latency_samples", lat_t)]


def _serving_tables(rng, model, hw, days, start_epoch, plan, m):
    """Live traffic of one model × hardware pair: each of the last LIVE_DAYS days, each serving precision
    answers LIVE_REQUESTS requests within one 5-minute window (its peak), logged one line per request (serving_requests)
    and scraped from its server's /metrics once a minute (serving_scrapes, as warehouse/scrape.py lands
    them: cumulative values beside the previous scrape's; the server starts just before the window).
    A live request takes about four times the eval latency (a generation, not one forward pass), 2 %
    are clients' 400s, 0.2 % server errors, a couple of requests wait. Planted from the incident's
    day, on its precision:

    - serving_slo_breach: live requests take (1 + 12m)× longer;
    - serving_error_breach: 15 %·m of them fail with 500;
    - serving_saturation: 8 + 6m requests wait in the queue.
    """
    m_name, _, n_params, _, _ = model
    h_name, _, _, _, peak_tflops = hw
    incidents = {(f["incident"], f["precision"]): f["day"] for f in plan if f["incident"] in SERVING_INCIDENTS}
    # one scrape's series: (metric, status, le); values are computed for all of them at once
    series = [("requests", "2xx", None), ("requests", "4xx", None), ("requests", "5xx", None),
              ("e2e_seconds_sum", None, None), ("e2e_seconds_count", None, None), ("output_tokens", None, None),
              *[("e2e_seconds_bucket", None, le) for le in LIVE_LE],
              ("queue_depth", None, None), ("cache_usage", None, None), ("up", None, None)]
    n_series, n = len(series), LIVE_REQUESTS
    les = np.array(LIVE_LE) * 1e3
    log_cols: dict[str, list] = {k: [] for k in ("ts", "p", "status", "e2e", "ttft", "out", "prompt")}
    sc_cols: dict[str, list] = {k: [] for k in ("at", "p", "value", "prev", "created", "prev_at")}
    for d in range(max(0, days - LIVE_DAYS), days):
        for pi, q in enumerate(SERVING_PRECISIONS):
            hit = {k for k in SERVING_INCIDENTS if d >= incidents.get((k, q), days)}
            t_w = start_epoch + d * 86_400 + int(rng.integers(12 * 12, 20 * 12)) * 300  # a 5-minute boundary
            arrival = t_w + np.sort(rng.uniform(0, 296, n))
            e2e = 4 * _latency_base_ms(n_params, q, peak_tflops) * rng.lognormal(0, 0.25, n)
            if "serving_slo_breach" in hit:
                e2e = e2e * (1 + 12 * m)
            u = rng.random(n)
            fail = 0.15 * m if "serving_error_breach" in hit else 0.002
            status = np.where(u < 0.02, 400, np.where(u < 0.02 + fail, 500, 200))
            out = rng.integers(16, 65, n)
            for k, v in (("ts", arrival), ("p", np.full(n, pi)), ("status", status), ("e2e", e2e),
                         ("ttft", e2e * rng.uniform(0.1, 0.3, n)), ("out", out), ("prompt", rng.integers(20, 400, n))):
                log_cols[k].append(v)
            # the scrapes: cumulative counts of the requests that arrived by each scrape
            at = t_w + 1 + 59 * np.arange(LIVE_SCRAPES)
            done = arrival[None, :] <= at[:, None]
            ok = done & (status == 200)[None, :]
            vals = np.column_stack([
                ok.sum(1), (done & (status == 400)).sum(1), (done & (status == 500)).sum(1),
                (ok * e2e).sum(1) / 1e3, ok.sum(1), (ok * out).sum(1),
                *[(ok & (e2e <= le)[None, :]).sum(1) for le in les],
                rng.poisson((8 + 6 * m if "serving_saturation" in hit else 0.0) + 0.3, LIVE_SCRAPES),
                rng.uniform(0.1, 0.6, LIVE_SCRAPES), np.ones(LIVE_SCRAPES)]).astype(float)
            prev = np.vstack([np.full(n_series, np.nan), vals[:-1]])
            sc_cols["at"].append(np.repeat(at, n_series).astype(float))
            sc_cols["p"].append(np.full(LIVE_SCRAPES * n_series, pi))
            sc_cols["value"].append(vals.ravel())
            sc_cols["prev"].append(prev.ravel())
            sc_cols["created"].append(np.full(LIVE_SCRAPES * n_series, t_w - 5.0))
            sc_cols["prev_at"].append(np.repeat(np.concatenate([[np.nan], at[:-1]]), n_series).astype(float))
    lc = {k: np.concatenate(v) for k, v in log_cols.items()}
    ok = lc["status"] == 200
    nl = len(ok)
    itl = (lc["e2e"] - lc["ttft"]) / (lc["out"] - 1)
    codes = np.select([lc["status"] == 200, lc["status"] == 400], [0, 1], 2)
    logs = pa.table({
        "ts": _ts((lc["ts"] * 1e6).astype(np.int64)), "precision": _dict_col(lc["p"], SERVING_PRECISIONS),
        "status": _dict_col(codes, ["200", "400", "500"]),
        "status_class": _dict_col(codes, ["ok", "client_error", "server_error"]), "e2e_ms": lc["e2e"],
        "ttft_ms": pa.array(lc["ttft"], mask=~ok), "itl_ms": pa.array(itl, mask=~ok),
        "prompt_tokens": lc["prompt"].astype(np.int64), "output_tokens": np.where(ok, lc["out"], 0).astype(np.int64),
        "model": _const(nl, m_name), "hardware": _const(nl, h_name)})
    sc = {k: np.concatenate(v) for k, v in sc_cols.items()}
    ns = len(sc["value"])
    idx = np.tile(np.arange(n_series), ns // n_series)
    names = sorted({x[0] for x in series})
    status_names = ["2xx", "4xx", "5xx"]
    st_idx = np.array([status_names.index(x[1]) if x[1] else -1 for x in series])[idx]
    le = np.array([np.nan if x[2] is None else x[2] for x in series])[idx]

    def ts_col(secs: np.ndarray) -> pa.Array:
        return pa.array(np.nan_to_num(secs * 1e6).astype(np.int64).astype("datetime64[us]"),
                        pa.timestamp("us"), mask=np.isnan(secs)).cast(pa.timestamp("us", tz="UTC"))

    targets = [f"sim://{m_name}/{h_name}/{q}/metrics" for q in SERVING_PRECISIONS]
    scrapes = pa.table({
        "target": _dict_col(sc["p"], targets), "scraped_at": ts_col(sc["at"]),
        "precision": _dict_col(sc["p"], SERVING_PRECISIONS), "server": _const(ns, "vllm"),
        "metric": _dict_col(np.array([names.index(x[0]) for x in series])[idx], names),
        "status": pa.DictionaryArray.from_arrays(pa.array(st_idx, mask=st_idx < 0).cast(pa.int32()),
                                                 pa.array(status_names)).cast(pa.string()),
        "status_class": pa.DictionaryArray.from_arrays(pa.array(st_idx, mask=st_idx < 0).cast(pa.int32()),
                                                       pa.array(["ok", "client_error", "server_error"])).cast(pa.string()),
        "le": pa.array(le, mask=np.isnan(le)), "labels": _const(ns, ""), "value": sc["value"],
        "created_at": ts_col(sc["created"]), "prev_scraped_at": ts_col(sc["prev_at"]),
        "prev_value": pa.array(sc["prev"], mask=np.isnan(sc["prev"])), "source_metric": _dict_col(
            np.array([names.index(x[0]) for x in series])[idx], names),
        "model": _const(ns, m_name), "hardware": _const(ns, h_name)})
    return [("serving_requests", logs), ("serving_scrapes", scrapes)]


def _write_truth(lake: Lake, truth: list[dict]) -> None:
    t = pa.Table.from_pylist(truth, schema=TRUTH_SCHEMA)
    lake.put_table(f"{lake.root}/_ground_truth/incidents.parquet", t)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="train_steps rows to generate")
    p.add_argument("--out", help="lake root (default from config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 22))
    p.add_argument("--incident-rate", type=float, default=0.15, help="share of runs with a planted incident")
    p.add_argument("--magnitude", type=float, default=1.0, help="size of every planted incident (1 = default)")
    p.add_argument("--fleet-incidents", type=int, default=2, help="planted incidents of each fleet type")
    p.add_argument("--serving-requests", type=int, default=256,
                   help="timed requests per model × hardware × serving precision × day")


def run(args: argparse.Namespace) -> int:
    out = args.out or config.load().lake_root
    t0 = time.perf_counter()
    totals = simulate(out, args.rows, seed=args.seed, days=args.days, end_date=args.end_date,
                      incident_rate=args.incident_rate, magnitude=args.magnitude,
                      fleet_incidents=args.fleet_incidents, serving_requests=args.serving_requests)
    secs = time.perf_counter() - t0
    print(f"simulated {sum(totals.values()):,} rows into {out} in {secs:.2f} s "
          f"({sum(totals.values()) / secs:,.0f} rows/s)")
    for name, n in totals.items():
        print(f"  {name:16s} {n:>12,}")
    return 0
