"""One Spark ``local[2]`` full build of an existing lake, with extra settings: for comparing Spark
settings (or code versions, run from another checkout) side by side on the same lake.

    .venv/bin/python bench/bench_spark_settings.py --lake /root/mhw-bench-cubes/lake-10000000 \
        [--conf spark.sql.adaptive.enabled=false ...] [--jobs 4]

Prints the session start and the build's wall time, and its slowest models. A fresh JVM per run: run
the script once per setting, alternating, on a quiet machine (these machines are noisy).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.build import build  # noqa: E402
from pipelines.engines.spark_engine import SparkEngine  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", required=True, help="a lake made by `mhw simulate` (bench_cubes.py leaves one)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, help="models run side by side (default: the build's)")
    args = p.parse_args()
    conf = dict(kv.split("=", 1) for kv in args.conf)
    with tempfile.TemporaryDirectory(prefix="mhw-spark-bench-", dir=os.environ.get("MHW_BENCH_TMP")) as work:
        t = time.perf_counter()
        eng = SparkEngine(master="local[2]", conf=conf)
        start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            r = build(args.lake, f"{work}/serving.duckdb", engine=eng, full=True, cubes_root=f"{work}/cubes",
                      jobs=args.jobs)
            wall = time.perf_counter() - t
        finally:
            eng.close()
    top = sorted(((v, k) for k, v in r.seconds.items() if k != "total" and ":" not in k), reverse=True)[:5]
    print(f"spark local[2] {conf or 'defaults'} jobs={args.jobs or 'default'}: session start {start:.1f} s, "
          f"full build {wall:.1f} s; load average {os.getloadavg()[0]:.1f}")
    print("  slowest: " + ", ".join(f"{k} {v:.1f} s" for v, k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
