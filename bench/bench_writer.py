"""Writer throughput, per-step logging overhead and simulate speed, measured side by side in one run.

    .venv/bin/python bench/bench_writer.py [--rows 2000000] [--sim-rows 10000000]

Prints rows/s for: one big Lake.write (one partition, then spread over many), with and without fsync;
BufferedWriter.append per-step cost (background vs inline flushing) next to an empty loop; and
`mhw simulate`. The machine's load average is printed with the figures: these machines are noisy.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa

from warehouse.simulate import simulate
from warehouse.writer import BufferedWriter, Lake

UTC = dt.timezone.utc


def steps_table(n: int, models: int = 1, days: int = 1) -> pa.Table:
    rng = np.random.default_rng(0)
    ts = 1_793_000_000_000_000 + np.sort(rng.integers(0, days * 86_400_000_000, n))
    return pa.table({
        "run_id": pa.array(np.char.add("run-", (np.arange(n) % 50).astype(str))), "step": np.arange(n),
        "ts": pa.array(ts.astype("datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        "loss": rng.random(n), "lr": rng.random(n), "grad_norm": rng.random(n), "tokens_per_s": rng.random(n) * 1e5,
        "step_time_ms": rng.random(n) * 500, "data_time_ms": rng.random(n) * 5, "gpu_util": np.round(rng.random(n) * 100),
        "model": pa.array(np.char.add("model-", (np.arange(n) % models).astype(str))),
        "hardware": pa.array(["h100-sxm-80gb-x8"] * n),
    })


def best_of(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--sim-rows", type=int, default=10_000_000)
    ap.add_argument("--steps", type=int, default=200_000, help="appends for the per-step overhead test")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="mhw-bench-")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    try:
        one = steps_table(a.rows)
        many = steps_table(a.rows, models=8, days=14)  # 112 partitions
        print(f"\n## Lake.write, {a.rows:,} train_steps rows (best of 3)")
        for label, t in (("1 partition", one), ("112 partitions", many)):
            for durable in (True, False):
                secs = best_of(lambda: Lake(root, durable=durable).write("train_steps", t, "bench"))
                print(f"{label:15s} fsync={str(durable):5s} {secs:6.3f} s  {a.rows / secs:>12,.0f} rows/s")

        print(f"\n## Per-step logging cost, {a.steps:,} steps (median of 5, µs per step)")
        row = {"run_id": "r", "ts": dt.datetime.now(UTC), "loss": 1.0, "lr": 1e-3, "grad_norm": 0.5,
               "tokens_per_s": 1e5, "step_time_ms": 100.0, "model": "m", "hardware": "h"}

        def loop(log):
            for i in range(a.steps):
                log({**row, "step": i})

        def empty():
            loop(lambda r: None)

        def logged(background):
            def go():
                w = BufferedWriter(Lake(root), "train_steps", "bench", flush_rows=2000, background=background)
                loop(w.append)
                w.close()
            return go
        res = {}
        for label, fn in (("no logging", empty), ("buffered, background", logged(True)), ("buffered, inline", logged(False))):
            res[label] = statistics.median(best_of(fn, 1) for _ in range(5)) / a.steps * 1e6
        for label, us in res.items():
            print(f"{label:22s} {us:7.2f} µs/step")
        over = res["buffered, background"] - res["no logging"]
        print(f"logging adds {over:.2f} µs/step: {over / 1e3 / 100 * 100:.4f} % of a 100 ms training step, "
              f"{over / 1e3 / 10 * 100:.3f} % of a 10 ms step")

        print(f"\n## mhw simulate --rows {a.sim_rows:,}")
        sim = os.path.join(root, "sim")
        t0 = time.perf_counter()
        totals = simulate(sim, a.sim_rows)
        secs = time.perf_counter() - t0
        n = sum(totals.values())
        print(f"{n:,} rows in {secs:.2f} s: {n / secs:,.0f} rows/s (train_steps alone {totals['train_steps'] / secs:,.0f}/s)")
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
