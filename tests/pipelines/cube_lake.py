"""A small lake with known contents for the cube tests: 2 models × 2 hardware × 3 days, with the
values that break naive cubes planted on purpose (NaN and ±inf losses, null/zero/negative/inf/NaN
step times, ties in (ts, step) across runs, failed requests, NaN latencies, idle devices), plus one
run whose step times sit on, just below and just above every sketch bucket edge."""
from __future__ import annotations

import datetime as dt
import math
import shutil

import duckdb
import numpy as np
import pyarrow as pa

from pipelines import sketch
from warehouse.writer import Lake

UTC = dt.timezone.utc
MODELS = ["m-alpha", "m-beta"]
HARDWARE = ["h100-x8", "l4-x1"]
DAY0 = dt.date(2026, 1, 1)
DAYS = 3


def edge_values() -> np.ndarray:
    """Every bucket's lower bound and its neighbouring doubles, and random values in between."""
    lo = sketch.bounds_table().filter(pa.compute.is_valid(sketch.bounds_table()["lo"]))["lo"].to_numpy()
    lo = lo[::3]
    rng = np.random.default_rng(7)
    rand = np.exp(rng.uniform(math.log(1e-9), math.log(1e12), 4000))
    return np.concatenate([lo, np.nextafter(lo, 0), np.nextafter(lo, np.inf), rand,
                           [0.0, -0.0, -3.5, -1e-3, 1e-300, 1e300, np.inf, -np.inf, np.nan]])


def _ts(day: dt.date, seconds: np.ndarray) -> list[dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), UTC)
    return [start + dt.timedelta(seconds=float(s)) for s in seconds]


def train_rows(rng, model: str, hw: str, run: str, precision: str, day: dt.date, steps: range) -> pa.Table:
    n = len(steps)
    step = np.array(list(steps))
    secs = (step - step[0]) * 20.0  # the same (ts, step) in every run of the day: a tie to break
    loss = 3.0 * np.exp(-step / 400) + rng.normal(0, 0.02, n)
    step_time = rng.lognormal(math.log(800), 0.15, n)
    tokens_per_s = 5e5 / step_time * 1000
    grad = rng.lognormal(0, 0.3, n)
    gpu_util = rng.uniform(60, 99, n)
    if n > 50:  # the values a naive cube gets wrong
        loss[10], loss[11], loss[12] = np.nan, np.inf, -np.inf
        grad[13] = np.nan
        step_time[20], step_time[21] = 0.0, np.inf
        step_time[22] = np.nan
    st = pa.array(step_time)
    if n > 50:
        st = pa.array([None if i == 30 else v for i, v in enumerate(step_time.tolist())], pa.float64())
    return pa.table({
        "run_id": [run] * n, "step": step.astype(np.int64), "ts": _ts(day, secs),
        "precision": [precision] * n, "loss": loss, "grad_norm": grad, "tokens_per_s": tokens_per_s,
        "step_time_ms": st, "data_time_ms": step_time * 0.05, "gpu_util": gpu_util,
        "gpu_mem_gb": rng.uniform(20, 70, n), "gpu_mem_total_gb": [80.0] * n, "mfu": rng.uniform(0.2, 0.5, n),
        "model": [model] * n, "hardware": [hw] * n,
    })


def latency_rows(rng, model: str, hw: str, day: dt.date, ckpt: int, n: int = 150) -> pa.Table:
    lat = rng.lognormal(math.log(40 if hw == "l4-x1" else 8), 0.4, n)
    lat[0], lat[1] = np.nan, 0.0
    ok = rng.random(n) > 0.05
    return pa.table({
        "run_id": [f"{model}-{hw}-eval"] * n, "checkpoint_step": [ckpt] * n,
        "ts": _ts(day, np.arange(n) * 3.0 + 3600), "precision": ["bf16"] * n,
        "batch_size": pa.array([1] * n, pa.int32()), "seq_len": pa.array([512] * n, pa.int32()),
        "latency_ms": lat, "ok": ok, "model": [model] * n, "hardware": [hw] * n,
    })


def eval_rows(rng, model: str, hw: str, day: dt.date, ckpt: int) -> pa.Table:
    """Checkpoint ``ckpt`` of runs r0 and r1 (runs share checkpoint steps), evaluated the same day
    with different values; r1's quality evals on day 0 name no training run (a bare checkpoint)."""
    rows = []
    for train_run in ("r0", "r1"):
        for suite, metric in [("quality", "loss"), ("quality", "accuracy"), ("robustness", "accuracy")]:
            value = float(rng.uniform(0.5, 2.0)) if not (ckpt == 200 and metric == "loss") else math.nan
            bare = train_run == "r1" and ckpt == 100 and suite == "quality"
            rows.append({"run_id": f"{model}-{hw}-eval" + ("" if train_run == "r0" else "-r1"),
                         "train_run_id": None if bare else f"{model}-{hw}-{train_run}",
                         "checkpoint": f"ckpt-{ckpt}", "checkpoint_step": ckpt,
                         "ts": dt.datetime.combine(day, dt.time(2 + (train_run == "r1")), UTC), "precision": "bf16",
                         "suite": suite, "metric": metric, "value": value, "n": 500,
                         "model": model, "hardware": hw})
    return pa.Table.from_pylist(rows)


def system_rows(rng, model: str, hw: str, day: dt.date, n: int = 40) -> pa.Table:
    devices = ["cuda:0", "cuda:1"]
    util = rng.uniform(0, 100, n * 2)
    util[:3] = 0.0
    power = [None if i % 7 == 0 else float(rng.uniform(100, 700)) for i in range(n * 2)]
    return pa.table({
        "run_id": [f"{model}-{hw}-r0"] * (2 * n), "ts": _ts(day, np.repeat(np.arange(n) * 60.0, 2)),
        "device": devices * n, "util": util, "mem_used_gb": rng.uniform(10, 70, 2 * n),
        "mem_total_gb": [80.0] * (2 * n), "power_w": pa.array(power, pa.float64()),
        "temperature_c": rng.uniform(40, 80, 2 * n), "model": [model] * (2 * n), "hardware": [hw] * (2 * n),
    })


def write_day(lake: Lake, day_index: int, seed: int = 0, key: str = "k0") -> None:
    """Everything for one day: train steps of two runs per (model, hardware), evals, latency, system.
    One file key per day (the writer lets a key live in one date of a model and hardware only)."""
    day = DAY0 + dt.timedelta(days=day_index)
    key = f"{key}-d{day_index}"
    for mi, model in enumerate(MODELS):
        for hi, hw in enumerate(HARDWARE):
            rng = np.random.default_rng([seed, day_index, mi, hi])
            first = day_index * 100
            parts = [train_rows(rng, model, hw, f"{model}-{hw}-r0", "bf16", day, range(first, first + 100)),
                     # a second run with the same (ts, step) as the first: ties are broken by run_id
                     train_rows(rng, model, hw, f"{model}-{hw}-r1", "fp16" if hi else "bf16", day,
                                range(first, first + 60))]
            lake.write("train_steps", pa.concat_tables(parts, promote_options="default"), key)
            ckpt = 100 * (day_index + 1)
            lake.write("latency_samples", latency_rows(rng, model, hw, day, ckpt), key)
            lake.write("eval_results", eval_rows(rng, model, hw, day, ckpt), key)
            lake.write("system_samples", system_rows(rng, model, hw, day), key)


def write_edge_run(lake: Lake) -> None:
    v = edge_values()
    n = len(v)
    day = DAY0
    lake.write("train_steps", pa.table({
        "run_id": ["edge"] * n, "step": np.arange(n, dtype=np.int64), "ts": _ts(day, np.arange(n) * 0.001),
        "precision": ["fp32"] * n, "loss": np.ones(n), "step_time_ms": v, "model": [MODELS[0]] * n,
        "hardware": [HARDWARE[0]] * n,
    }), "edge")


def make_lake(root: str) -> str:
    lake = Lake(root)
    for d in range(DAYS):
        write_day(lake, d)
    write_edge_run(lake)
    return root


def mutate(lake: str) -> None:
    """Append a new day, rewrite one partition's file, add a second file to another, delete a third."""
    lk = Lake(lake)
    write_day(lk, 3)  # a new date everywhere
    write_day(lk, 1, seed=9)  # same keys: day 1's files are replaced with different rows
    extra = pa.table({"run_id": ["late"] * 3, "step": [1, 2, 3], "loss": [1.0, float("nan"), 2.0],
                      "step_time_ms": [5.0, 6.0, 7.0], "ts": [dt.datetime(2026, 1, 1, 23, tzinfo=dt.timezone.utc)] * 3,
                      "model": [MODELS[1]] * 3, "hardware": [HARDWARE[0]] * 3, "precision": ["bf16"] * 3})
    lk.write("train_steps", extra, "late-file")
    gone = f"{lake}/latency_samples/model={MODELS[0]}/hardware={HARDWARE[1]}/date={DAY0 + dt.timedelta(days=2)}"
    shutil.rmtree(gone)


def copy_lake(src: str, dst: str) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cubes", "_tmp"))
    return dst


def serving_tables(path: str) -> dict[str, pa.Table]:
    """Every base table of a serving file, sorted by all its columns, for exact comparisons."""
    con = duckdb.connect()
    con.execute(f"attach '{path}' as s (read_only)")
    out = {}
    for (name,) in con.execute("select table_name from information_schema.tables "
                               "where table_catalog = 's' and table_type = 'BASE TABLE'").fetchall():
        if name in ("build_info", "audit_entries"):  # the audit trail records the builds themselves:
            continue  # two builds of one lake never serve the same one (tests/warehouse/test_audit.py)
        t = con.sql(f'select * from s.main."{name}"').to_arrow_table()
        keys = [c for c in t.column_names if pa.types.is_string(t.schema.field(c).type)
                or pa.types.is_integer(t.schema.field(c).type) or pa.types.is_date(t.schema.field(c).type)]
        out[name] = t.sort_by([(k, "ascending") for k in keys])
    con.close()
    return out


def assert_tables_equal(a: dict[str, pa.Table], b: dict[str, pa.Table], rel: float = 1e-9) -> None:
    """Same tables, same rows: strings, integers and dates exactly, floats to ``rel`` (NaN = NaN)."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.schema == y.schema, name
        assert x.num_rows == y.num_rows, (name, x.num_rows, y.num_rows)
        for col in x.column_names:
            u, v = x.column(col).to_pylist(), y.column(col).to_pylist()
            if pa.types.is_floating(x.schema.field(col).type):
                for i, (p, q) in enumerate(zip(u, v)):
                    if p is None or q is None or math.isnan(p) or math.isnan(q) or math.isinf(p) or math.isinf(q):
                        assert (p is None) == (q is None) and (p is None or math.isnan(p) == math.isnan(q)) \
                            and (p is None or math.isnan(p) or p == q), (name, col, i, p, q)
                    else:
                        assert abs(p - q) <= rel * max(abs(p), abs(q), 1e-300), (name, col, i, p, q)
            else:
                assert u == v, (name, col, [(i, p, q) for i, (p, q) in enumerate(zip(u, v)) if p != q][:5])
