"""Where the time of one appended block (or of a full diagnose) goes: cProfile of the incremental
diagnose and build after a 2,000-step block, on a lake that bench_freshness.py simulated and kept.

    .venv/bin/python bench/profile_block.py /work/fresh-lakes/lake-40000000 [--full] [--top 45]

Prints each step's own per-rule / per-model seconds and the cumulative profile. The lake must have been
built and diagnosed (bench_freshness does both); the block is removed at the end, and one more
incremental diagnose and build bring the alerts and the serving file back to the lake as it was.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_freshness import appended  # noqa: E402
from pipelines.build import build  # noqa: E402
from pipelines.diagnose import diagnose  # noqa: E402
from warehouse.writer import Lake  # noqa: E402


def profiled(name: str, fn, top: int) -> None:
    p = cProfile.Profile()
    t = time.perf_counter()
    p.enable()
    r = fn()
    p.disable()
    own = sorted(((k, v) for k, v in r.seconds.items() if k != "total" and ":" not in k), key=lambda kv: -kv[1])
    print(f"== {name}: {time.perf_counter() - t:.2f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in own[:10]))
    pstats.Stats(p).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lake")
    ap.add_argument("--serving", help="serving file (default: bench_freshness's beside the lake)")
    ap.add_argument("--full", action="store_true", help="profile a full diagnose instead")
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    lake = args.lake.rstrip("/")
    serving = args.serving or lake.replace("/lake-", "/serving-") + ".duckdb"
    if args.full:
        profiled("full diagnose", lambda: diagnose(lake, full=True, notify_alerts=False), args.top)
        return
    diagnose(lake, notify_alerts=False)  # whatever an earlier run left changed
    build(lake, serving)
    try:
        with appended(Lake(lake), "profiled-run"):
            profiled("incremental diagnose", lambda: diagnose(lake, notify_alerts=False), args.top)
            profiled("incremental build", lambda: build(lake, serving), args.top)
    finally:  # the block gone: the alerts and the serving file as they were
        diagnose(lake, notify_alerts=False)
        build(lake, serving)

if __name__ == "__main__":
    main()
