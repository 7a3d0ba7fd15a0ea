"""Diagnose against build, the raw-scan floor, and the freshness of one appended block, side by side in
one run (issue 14).

    .venv/bin/python bench/bench_freshness.py [--rows 10000000 40000000] [--lakes DIR]

For each lake size (``mhw simulate``, seed 5; kept in ``--lakes`` and reused when there): a full build,
a full diagnose and a raw scan of the columns the build reads (bench_cubes.raw_scan), in process (so
start-up is not counted); then one 2,000-step block of a new run is appended through the lake writer,
and the incremental diagnose and build that bring it to the alerts and the serving file are timed;
``--repeat`` turns of that (another new run each), the median turn reported.
Each figure is wall seconds and CPU seconds of this process (all its threads): this machine is shared
and busy, and CPU seconds move far less with the load than wall seconds; the ratios are what to read.
The peak memory of each step is the process's resident high-water mark (VmHWM), reset before the step
(/proc/self/clear_refs). The load average is printed at start and end.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_cubes import raw_scan  # noqa: E402
from pipelines.build import build  # noqa: E402
from pipelines.diagnose import diagnose  # noqa: E402
from warehouse.simulate import simulate  # noqa: E402
from warehouse.writer import Lake  # noqa: E402


def block(n: int = 2000, run: str = "fresh-run") -> pa.Table:
    t0 = dt.datetime(2026, 11, 22, 12, tzinfo=dt.timezone.utc)
    return pa.table({
        "run_id": [run] * n, "step": list(range(n)),
        "ts": [t0 + dt.timedelta(seconds=i) for i in range(n)], "loss": [3.0 / (1 + i / 200) for i in range(n)],
        "lr": [1e-4] * n, "grad_norm": [1.0] * n, "tokens_per_s": [5e4] * n, "step_time_ms": [300.0] * n,
        "data_time_ms": [2.0] * n, "model": ["gpt2-124m"] * n, "hardware": ["a100-sxm-80gb-x8"] * n,
    })


@contextlib.contextmanager
def appended(writer: Lake, run: str):
    """One 2,000-step block of a new run ``run`` in the lake while inside; its files deleted on leaving."""
    key = f"{run}-b000000000"
    writer.write("train_steps", block(run=run), key)
    try:
        yield key
    finally:
        for path in writer.list_files("train_steps").get(f"{key}.parquet", []):
            writer.delete(path)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_gb() -> float:
    """The resident high-water mark of this process since the last reset, GB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def timed(fn) -> tuple[float, float, float]:
    """(wall s, CPU s, peak resident GB) of one call."""
    reset_peak()
    w, c = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - w, cpu() - c, peak_gb()


def measure(rows: int, lakes: str, repeat: int) -> dict:
    lake = os.path.join(lakes, f"lake-{rows}")
    if not os.path.isdir(os.path.join(lake, "train_steps")):
        simulate(lake, rows, seed=5)
    for leftover in ("cubes", "alerts", "_diagnose", "_checkpoints"):  # what an earlier run of this bench left
        shutil.rmtree(os.path.join(lake, leftover), ignore_errors=True)
    serving = os.path.join(lakes, f"serving-{rows}.duckdb")
    out = {"rows": rows}
    built = []
    out["full build"] = timed(lambda: built.append(build(lake, serving, full=True)))
    out["build models"] = {k: v for k, v in built[0].seconds.items() if ":" not in k and k not in ("total", "list")}
    out["full diagnose"] = timed(lambda: diagnose(lake, full=True, notify_alerts=False))
    out["raw scan"] = timed(lambda: raw_scan(lake))
    writer = Lake(lake)
    with contextlib.ExitStack() as appended_blocks:  # the lake is kept for the next run as simulated
        turns = []
        for i in range(repeat):  # each turn appends another new run's block: the median turn is reported
            appended_blocks.enter_context(appended(writer, f"fresh-run-{i}"))
            turns.append((timed(lambda: diagnose(lake, notify_alerts=False)), timed(lambda: build(lake, serving))))
        turns.sort(key=lambda t: t[0][0] + t[1][0])
        out["incr. diagnose"], out["incr. build"] = turns[len(turns) // 2]
        out["incr. turns"] = [round(d[0] + b[0], 2) for d, b in turns]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000])
    ap.add_argument("--lakes", help="folder that keeps the simulated lakes between runs (default: a temp folder)")
    ap.add_argument("--repeat", type=int, default=3, help="appended blocks per size (each a new run; the median "
                                                          "turn of diagnose + build is reported)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mhw-fresh-") as tmp:
        lakes = args.lakes or tmp
        os.makedirs(lakes, exist_ok=True)
        results = []
        for n in args.rows:
            results.append(measure(n, lakes, args.repeat))
            print(f"measured {n:,} rows, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    print(f"# diagnose vs build, {dt.date.today()}; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end; wall s / CPU s\n")
    print("| train_steps rows | full build | full diagnose | diagnose / build (wall, CPU) | raw scan | "
          "build / raw scan (wall, CPU) | appended block: diagnose | build | together |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ws(x):
        return f"{x[0]:.1f} / {x[1]:.1f}"
    for r in results:
        b, d, s = r["full build"], r["full diagnose"], r["raw scan"]
        inc = (r["incr. diagnose"][0] + r["incr. build"][0], r["incr. diagnose"][1] + r["incr. build"][1])
        print(f"| {r['rows']:,} | {ws(b)} | {ws(d)} | {d[0] / b[0]:.2f}, {d[1] / b[1]:.2f} | {ws(s)} | "
              f"{b[0] / s[0]:.2f}, {b[1] / s[1]:.2f} | {ws(r['incr. diagnose'])} | {ws(r['incr. build'])} | "
              f"{ws(inc)} |")
    print(f"\nappended block, every turn (diagnose + build, wall s, sorted; the median is in the table):")
    for r in results:
        print(f"- {r['rows']:,} rows: {r['incr. turns']}")
    print("\npeak resident memory, GB (each step's own high-water mark):")
    for r in results:
        print(f"- {r['rows']:,} rows: " + ", ".join(f"{k} {r[k][2]:.2f}" for k in
                                                   ("full build", "full diagnose", "incr. diagnose", "incr. build")))
    print("\nwhere the full build's wall time goes (seconds per model, the five longest; models run side by side):")
    for r in results:
        top = sorted(r["build models"].items(), key=lambda kv: -kv[1])[:5]
        print(f"- {r['rows']:,} rows: " + ", ".join(f"{k} {v:.1f}" for k, v in top))
    if len(results) > 1:
        a, z = results[0], results[-1]

        def together(r, i):
            return r["incr. diagnose"][i] + r["incr. build"][i]
        print(f"\nappended block, {z['rows'] / a['rows']:.0f}x the history: {together(z, 0) / together(a, 0):.2f}x "
              f"the wall time, {together(z, 1) / together(a, 1):.2f}x the CPU time")


if __name__ == "__main__":
    main()
