"""Diagnose against build, and the freshness of one appended block, side by side in one run.

    .venv/bin/python bench/bench_freshness.py [--rows 2000000 10000000]

For each lake size (``mhw simulate``): a full build and a full diagnose (in process, so start-up is
not counted), their ratio; then one 2,000-step block of a new run is appended through the training
writer and the incremental diagnose and build that bring it to the alerts and the serving file are
timed. The ratios are what to read: these machines are noisy, and the load average is printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time

import pyarrow as pa

from pipelines.build import build
from pipelines.diagnose import diagnose
from warehouse.simulate import simulate
from warehouse.writer import Lake


def block(n: int = 2000) -> pa.Table:
    t0 = dt.datetime(2026, 11, 22, 12, tzinfo=dt.timezone.utc)
    return pa.table({
        "run_id": ["fresh-run"] * n, "step": list(range(n)),
        "ts": [t0 + dt.timedelta(seconds=i) for i in range(n)], "loss": [3.0 / (1 + i / 200) for i in range(n)],
        "lr": [1e-4] * n, "grad_norm": [1.0] * n, "tokens_per_s": [5e4] * n, "step_time_ms": [300.0] * n,
        "data_time_ms": [2.0] * n, "model": ["gpt2-124m"] * n, "hardware": ["a100-sxm-80gb-x8"] * n,
    })


def measure(rows: int, work: str) -> dict:
    lake, serving = os.path.join(work, f"lake-{rows}"), os.path.join(work, f"serving-{rows}.duckdb")
    simulate(lake, rows, seed=5)
    out = {"rows": rows}
    t = time.perf_counter()
    build(lake, serving, full=True)
    out["full build"] = time.perf_counter() - t
    t = time.perf_counter()
    diagnose(lake, full=True, notify_alerts=False)
    out["full diagnose"] = time.perf_counter() - t
    Lake(lake).write("train_steps", block(), "fresh-run-b000000000")
    t = time.perf_counter()
    diagnose(lake, notify_alerts=False)
    out["incr. diagnose"] = time.perf_counter() - t
    t = time.perf_counter()
    build(lake, serving)
    out["incr. build"] = time.perf_counter() - t
    shutil.rmtree(lake)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 10_000_000])
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mhw-fresh-") as work:
        results = [measure(n, work) for n in args.rows]
    print(f"# diagnose vs build, {dt.date.today()}; load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print("| train_steps rows | full build s | full diagnose s | diagnose / build | appended block: diagnose s "
          "| build s | together s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['full build']:.1f} | {r['full diagnose']:.1f} | "
              f"{r['full diagnose'] / r['full build']:.2f} | {r['incr. diagnose']:.2f} | {r['incr. build']:.2f} | "
              f"{r['incr. diagnose'] + r['incr. build']:.2f} |")
    if len(results) > 1:
        a, b = results[0], results[-1]
        fa, fb = a["incr. diagnose"] + a["incr. build"], b["incr. diagnose"] + b["incr. build"]
        print(f"\nappended block, {b['rows'] / a['rows']:.0f}x the history: {fb / fa:.2f}x the time")


if __name__ == "__main__":
    main()
