"""`mhw` start-up: what a command costs before it does anything, side by side in one run.

    .venv/bin/python bench/bench_startup.py [--reps 7]

Runs each command in a fresh process ``--reps`` times (the commands take turns, so a burst of load
on this shared machine hits all of them alike) and prints the best and median wall time, the best
CPU time (user + system of the child), and which heavy packages the command imported (one more run
under ``python -X importtime``). ``mhw query`` and ``mhw alerts`` run on an empty temporary lake;
``python -c pass`` is the floor (the interpreter alone); `import duckdb` and a `select 1` on a fresh connection is the floor of `mhw query`. The machine's load average is printed with
the figures: these machines are noisy.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HEAVY = ("numpy", "pyarrow", "pyarrow.dataset", "pandas", "yaml", "torch", "pyspark", "airflow", "transformers")


def commands() -> list[tuple[str, list[str]]]:
    mhw = str(BIN / "mhw")
    return [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("import duckdb; select 1 (floor of mhw query)",
         [sys.executable, "-c", "import duckdb; duckdb.connect().execute('select 1').fetchall()"]),
        ("mhw --help", [mhw, "--help"]),
        ('mhw query "select 1"', [mhw, "query", "select 1"]),
        ("mhw alerts", [mhw, "alerts"]),
        ("mhw build --help", [mhw, "build", "--help"]),
    ]


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh process running ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heavy_imports(argv: list[str], env: dict) -> list[str]:
    """The packages of HEAVY that ``argv`` imports (from ``python -X importtime``)."""
    if Path(argv[0]).name == "mhw":  # the console script is a Python file: run it under the flag
        argv = [sys.executable, "-X", "importtime", *argv]
    else:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    err = subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True).stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    return [h for h in HEAVY if h in names]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mhw-bench-startup-")
    env = {**os.environ, "MHW_LAKE": f"{tmp}/lake", "MHW_SERVING": f"{tmp}/serving.duckdb"}
    cmds = commands()
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores")
    try:
        for _, argv in cmds:  # warm the page cache and the .pyc files once
            timed(argv, env)
        walls: dict[str, list[float]] = {name: [] for name, _ in cmds}
        cpus: dict[str, list[float]] = {name: [] for name, _ in cmds}
        for _ in range(a.reps):
            for name, argv in cmds:
                w, c = timed(argv, env)
                walls[name].append(w)
                cpus[name].append(c)
        heavy = {name: heavy_imports(argv, env) for name, argv in cmds}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"load average at end:   {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print()
    print(f"| command | best wall (s, of {a.reps}) | median wall (s) | best CPU (s) | heavy packages imported |")
    print("|---|---:|---:|---:|---|")
    for name, _ in cmds:
        print(f"| `{name}` | {min(walls[name]):.3f} | {statistics.median(walls[name]):.3f} | {min(cpus[name]):.3f} "
              f"| {', '.join(heavy[name]) or '–'} |")


if __name__ == "__main__":
    main()
