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


SERVING_LE = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf]


def serving_scrape_rows(rng, model: str, hw: str, day: dt.date, n: int = 40, hour: int = 5, *,
                        failed_at: int | None = 10, restart_at: int | None = 20, slow_from: int | None = None,
                        fail_from: int | None = None, queue_from: int | None = None,
                        p_status=(0.9, 0.06, 0.04)) -> pa.Table:
    """One target scraped every minute as warehouse/scrape.py lands it: cumulative counters and
    buckets with the previous scrape's values beside them, a failed scrape (up = 0) at minute
    ``failed_at``, a restart at ``restart_at`` (the counters fall back, the series start again), queue
    and cache gauges. From ``slow_from`` requests take ~3 s, from ``fail_from`` a fifth fail with 5xx,
    from ``queue_from`` about 10 requests wait (incidents for the serving rules)."""
    target = f"http://{model}-{hw}:8000/metrics"
    start = dt.datetime.combine(day, dt.time(hour), UTC)
    rows, prev, prev_at, created = [], {}, None, start - dt.timedelta(seconds=30)
    cum: dict = {}
    for i in range(n):
        at = start + dt.timedelta(minutes=i, seconds=float(rng.uniform(0, 2)))
        if i == failed_at:  # the target did not answer: nothing but up = 0
            rows.append({"target": target, "scraped_at": at, "precision": "bf16", "metric": "up", "labels": "",
                         "value": 0.0, "prev_scraped_at": prev_at, "model": model, "hardware": hw})
            continue
        if i == restart_at:  # restarted: every series starts again from zero
            cum, created = {}, at - dt.timedelta(seconds=5)
        served = rng.poisson(30)
        slow = slow_from is not None and i >= slow_from
        lat = rng.lognormal(math.log(3.0 if slow else 0.08), 0.3 if slow else 0.6, served)
        p = (0.76, 0.04, 0.2) if fail_from is not None and i >= fail_from else p_status
        status = rng.choice(["2xx", "4xx", "5xx"], p=list(p), size=served)
        for st in ("2xx", "4xx", "5xx"):
            cum[("requests", st, None)] = cum.get(("requests", st, None), 0.0) + float((status == st).sum())
        for le in SERVING_LE:
            cum[("e2e_seconds_bucket", None, le)] = cum.get(("e2e_seconds_bucket", None, le), 0.0) + float((lat <= le).sum())
        cum[("e2e_seconds_sum", None, None)] = cum.get(("e2e_seconds_sum", None, None), 0.0) + float(lat.sum())
        cum[("e2e_seconds_count", None, None)] = cum.get(("e2e_seconds_count", None, None), 0.0) + served
        cum[("output_tokens", None, None)] = cum.get(("output_tokens", None, None), 0.0) + 40.0 * served
        values = dict(cum)
        queued = queue_from is not None and i >= queue_from
        values[("queue_depth", None, None)] = float(rng.integers(8, 13) if queued else rng.integers(0, 6))
        values[("cache_usage", None, None)] = float(rng.uniform(0.2, 0.9))
        values[("up", None, None)] = 1.0
        for (metric, st, le), v in values.items():
            cls = {"2xx": "ok", "4xx": "client_error", "5xx": "server_error"}.get(st)
            rows.append({"target": target, "scraped_at": at, "precision": "bf16", "server": "vllm", "metric": metric,
                         "status": st, "status_class": cls, "le": le, "labels": "engine=0", "value": v,
                         "created_at": created, "prev_scraped_at": prev_at, "prev_value": prev.get((metric, st, le)),
                         "source_metric": metric, "model": model, "hardware": hw})
        prev, prev_at = values, at
    return pa.Table.from_pylist(rows)


def serving_request_rows(rng, model: str, hw: str, day: dt.date, n: int = 200, start_s: float = 7200,
                         every_s: float = 17.0, slow_from: int | None = None, fail_from: int | None = None,
                         p_status=(0.85, 0.05, 0.07, 0.03)) -> pa.Table:
    """A per-request log: successes and failures of every class, and the latencies a naive cube gets
    wrong (NaN, inf, zero, null TTFT). From request ``slow_from`` they take ~3 s, from ``fail_from``
    a fifth fail with 500."""
    e2e = rng.lognormal(math.log(120), 0.5, n)
    if slow_from is not None:
        e2e[slow_from:] = rng.lognormal(math.log(3000), 0.3, n - slow_from)
    ttft = e2e * rng.uniform(0.05, 0.3, n)
    itl = (e2e - ttft) / 20
    e2e[3], e2e[4], e2e[5], ttft[6] = np.nan, np.inf, 0.0, np.nan
    status = rng.choice(["200", "400", "500", "abort"], p=list(p_status), size=n)
    if fail_from is not None:
        status[fail_from:] = rng.choice(["200", "500"], p=[0.8, 0.2], size=n - fail_from)
    cls = [{"200": "ok", "400": "client_error", "500": "server_error"}.get(x, "error") for x in status]
    return pa.table({
        "request_id": [f"r{i}" for i in range(n)], "ts": _ts(day, np.arange(n) * every_s + start_s),
        "precision": ["bf16"] * n, "status": status.tolist(), "status_class": cls, "e2e_ms": e2e,
        "ttft_ms": pa.array([None if i == 7 else float(v) for i, v in enumerate(ttft)], pa.float64()),
        "itl_ms": itl, "prompt_tokens": rng.integers(10, 500, n), "output_tokens": rng.integers(1, 40, n),
        "model": [model] * n, "hardware": [hw] * n,
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
            lake.write("serving_scrapes", serving_scrape_rows(rng, model, hw, day), key)
            lake.write("serving_requests", serving_request_rows(rng, model, hw, day), key)


def write_edge_run(lake: Lake) -> None:
    v = edge_values()
    n = len(v)
    day = DAY0
    lake.write("train_steps", pa.table({
        "run_id": ["edge"] * n, "step": np.arange(n, dtype=np.int64), "ts": _ts(day, np.arange(n) * 0.001),
        "precision": ["fp32"] * n, "loss": np.ones(n), "step_time_ms": v, "model": [MODELS[0]] * n,
        "hardware": [HARDWARE[0]] * n,
    }), "edge")


def write_repairs(lake: Lake) -> dict:
    """Training-run alerts over two days and the repairs that answered some of them (a repair healed
    on its second attempt, one escalated, one advised, one still running; an alert never repaired,
    NaN and null measurements), through the writers pipelines use. Returns the funnel they make, per
    (date, model, hardware, rule): (n_alerts, n_repairs, n_attempts, n_healed, n_escalated, n_advised)."""
    from pipelines.alerts import alert_key, write_alerts
    from pipelines.repair import write_attempt

    m, hw = MODELS[0], HARDWARE[0]
    day = [dt.datetime.combine(DAY0 + dt.timedelta(days=d), dt.time(6), UTC) for d in range(2)]
    alerts = []
    for i, (rule, sev, d) in enumerate([("divergence", "critical", 0), ("underfitting", "warning", 0),
                                        ("underfitting", "warning", 1), ("plateau", "info", 1),
                                        ("throughput_drop", "warning", 1), ("overfitting", "warning", 0)]):
        alerts.append({"alert_id": f"a{i}", "rule": rule, "severity": sev, "scope": "run", "run_id": f"r{i}",
                       "step_start": 10, "start_at": day[d], "detected_at": day[d], "model": m, "hardware": hw,
                       "date": day[d].date(), "message": "m", "action": "a"})
    write_alerts(lake, alerts, {alert_key(a["rule"], m, hw) for a in alerts})

    def attempt(alert_i, n, action, verdict, child=None, compute=None, secs=None, observed=None):
        a = alerts[alert_i]
        write_attempt(lake, {"attempt_id": f"t{alert_i}-{n}", "repair_id": f"rep{alert_i}", "attempt": n,
                             "alert_id": a["alert_id"], "rule": a["rule"], "severity": a["severity"], "onset_step": 10,
                             "parent_run_id": a["run_id"], "child_run_id": child, "action": action, "patch": "p",
                             "verdict": verdict, "compute_s": compute, "samples": 100 if compute else None,
                             "observed": observed, "seconds_to_verdict": secs, "alert_start_at": a["start_at"],
                             "alert_detected_at": a["start_at"], "started_at": a["start_at"], "model": m,
                             "hardware": hw})
    attempt(0, 1, "retrain", "not_healed", "c0-1", 12.5, 30.0, float("nan"))
    attempt(0, 2, "retrain", "healed", "c0-2", 10.0, 95.0, 2.1)
    attempt(1, 1, "retrain", "escalated", "c1-1", 7.0, 40.0, 3.0)
    attempt(4, 0, "escalate", "escalated", secs=5.0)
    attempt(2, 1, "retrain", "running", "c2-1")
    attempt(5, 0, "advise", "advised", secs=1.0)
    d0, d1 = DAY0, DAY0 + dt.timedelta(days=1)
    return {(d0, m, hw, "divergence"): (1, 1, 2, 1, 0, 0), (d0, m, hw, "underfitting"): (1, 1, 1, 0, 1, 0),
            (d1, m, hw, "underfitting"): (1, 1, 1, 0, 0, 0), (d1, m, hw, "plateau"): (0, 0, 0, 0, 0, 0),
            (d1, m, hw, "throughput_drop"): (1, 1, 0, 0, 1, 0), (d0, m, hw, "overfitting"): (1, 1, 0, 0, 0, 1)}


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
        # then timestamps and doubles: rows the exact columns do not tell apart (an hour, a bound)
        keys += [c for c in t.column_names if pa.types.is_timestamp(t.schema.field(c).type)]
        keys += [c for c in t.column_names if pa.types.is_floating(t.schema.field(c).type)]
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
