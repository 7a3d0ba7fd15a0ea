"""JSONL ingest speed and peak memory per file size, next to the writer's own speed on the same rows.

    .venv/bin/python bench/bench_ingest.py [--rows 500000,2000000] [--keep DIR]

For each size: writes a JSONL file of ``train_steps`` lines of one run (the columns a trainer logs:
run_id, model, hardware, step, ISO ts, loss, lr, grad_norm, tokens_per_s, step_time_ms, data_time_ms,
gpu_util; a ``runs`` line first; a few bad lines of several kinds spread through the file), runs
``mhw ingest`` on it as a fresh process, and prints its wall time, rows/s and peak RSS (the child's
``ru_maxrss``, read by a small wrapper process that runs nothing else: a child of this process would
report this process's own peak). It checks what the lake holds afterwards (every good row once, every
bad line in quarantine) so a fast wrong ingest does not pass. The floor printed beside it is
``Lake.write`` of the same rows as one Arrow table: what ingest costs at least; beside it, parsing
the file alone (no checks, nothing stored) with pyarrow's JSON reader, which ingest uses, and with
DuckDB's read_json on every core. The fixed cost of a
call (start-up, imports, the lock, the small files) is measured as the ingest of a two-line file and
printed; "net rows/s" is rows / (wall - that). The machine's load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
RUN, MODEL, HARDWARE = "gpt2-small-20261101-a1", "gpt2-small", "a100-40gb-x8"
# (what is wrong, the line): spread through the file; each must be quarantined, the rest stored
BAD = [
    ("wrong type", lambda i: {"step": i, "loss": "abc"}),
    ("bad timestamp", lambda i: {"step": i, "ts": "yesterday"}),
    ("unknown field", lambda i: {"step": i, "los": 1.0}),
    ("missing required", lambda i: {"step": i, "run_id": None}),
    ("not a slug", lambda i: {"step": i, "model": "a/b"}),
    ("invalid JSON", None),
]


def steps(n: int) -> dict[str, np.ndarray]:
    """n steps of one run: columns as a trainer logs them (~250 ms a step, so 2 M steps span ~6 days)."""
    rng = np.random.default_rng(0)
    step = np.arange(n)
    us = (step * 250_000 + rng.integers(0, 50_000, n)).astype("timedelta64[us]")
    return {
        "step": step, "ts": np.datetime64(T0.replace(tzinfo=None), "us") + us,
        "loss": 5.0 / (1 + step / 1000) + rng.normal(0, 0.05, n), "lr": 3e-4 * np.minimum(1, (step + 1) / 2000),
        "grad_norm": np.abs(rng.normal(1.0, 0.3, n)), "tokens_per_s": rng.normal(180_000, 5_000, n),
        "step_time_ms": rng.normal(250, 10, n), "data_time_ms": np.abs(rng.normal(3, 1, n)),
        "gpu_util": np.round(rng.uniform(85, 100, n), 1),
    }


def write_jsonl(path: Path, cols: dict[str, np.ndarray], bad: bool = True) -> int:
    """The file; returns how many bad lines it holds (one of each kind in BAD, twice)."""
    n = len(cols["step"])
    bad_at = {int(n * (k + 1) / (2 * len(BAD) + 1)): BAD[k % len(BAD)] for k in range(2 * len(BAD))} if bad else {}
    ts = np.datetime_as_string(cols["ts"], unit="us")
    head = f'{{"table": "train_steps", "run_id": "{RUN}", "model": "{MODEL}", "hardware": "{HARDWARE}", "step": '
    floats = [c for c in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_ms", "data_time_ms", "gpu_util")]
    vals = [cols[c].tolist() for c in floats]
    with open(path, "w") as f:
        f.write(json.dumps({"table": "runs", "run_id": RUN, "model": MODEL, "hardware": HARDWARE, "kind": "train",
                            "started_at": T0.isoformat(), "source": "jsonl"}) + "\n")
        out = []
        for i in range(n):
            if i in bad_at:
                kind, make = bad_at[i]
                if make is None:
                    out.append(head + f'{i}, "ts": "{ts[i]}Z", "loss": \n')
                else:
                    row = {"table": "train_steps", "run_id": RUN, "model": MODEL, "hardware": HARDWARE,
                           "ts": ts[i] + "Z", **make(i)}
                    out.append(json.dumps(row) + "\n")
                continue
            out.append(head + f'{i}, "ts": "{ts[i]}Z", ' +
                       ", ".join(f'"{c}": {v[i]!r}' for c, v in zip(floats, vals)) + "}\n")
            if len(out) >= 100_000:
                f.writelines(out)
                out.clear()
        f.writelines(out)
    return len(bad_at)


def mhw(*argv, env) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in bytes, the process) of one ``mhw`` call in a fresh process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "warehouse.cli", *map(str, argv)],
                       cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"mhw {' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall, int(r.stdout.strip().splitlines()[-1]) * 1024, r


def lake_counts(lake: Path) -> tuple[int, int]:
    from warehouse.query import connect

    con = connect(lake_root=str(lake), serving_path="")
    return (con.execute("select count(*) from train_steps").fetchone()[0],
            con.execute("select count(*) from quarantine").fetchone()[0])


def writer_floor(cols: dict[str, np.ndarray], root: str) -> float:
    """Lake.write rows/s of the same rows (best of 2): the cost of storing them, parsing aside."""
    from warehouse.writer import Lake

    n = len(cols["step"])
    t = pa.table({"run_id": pa.array([RUN] * n), "model": pa.array([MODEL] * n), "hardware": pa.array([HARDWARE] * n),
                  **{k: (pa.array(v).cast(pa.timestamp("us", tz="UTC")) if k == "ts" else v) for k, v in cols.items()}})
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        Lake(root).write("train_steps", t, "bench")
        best = min(best, time.perf_counter() - t0)
    return n / best


def parse_floors(path: Path) -> tuple[float, float]:
    """rows/s of parsing the file alone, no checks, nothing stored: (pyarrow's JSON reader, which the
    column path uses, one 2 MiB unit at a time as it does; DuckDB's read_json on every core). Units
    holding a bad line fail whole and are not counted."""
    import duckdb
    import pyarrow.json as pj

    types = {"table": pa.string(), "run_id": pa.string(), "model": pa.string(), "hardware": pa.string(),
             "step": pa.int64(), "ts": pa.string(), **{c: pa.float64() for c in
             ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_ms", "data_time_ms", "gpu_util")}}
    opts = pj.ParseOptions(explicit_schema=pa.schema(types), unexpected_field_behavior="ignore")
    rows, t0 = 0, time.perf_counter()
    with open(path, "rb") as f:
        f.readline()  # the runs line
        while True:
            unit = f.read(1 << 21)
            if not unit:
                break
            unit += f.readline()
            try:
                rows += pj.read_json(pa.BufferReader(unit), parse_options=opts).num_rows
            except pa.ArrowInvalid:
                pass
    arrow = rows / (time.perf_counter() - t0)
    con = duckdb.connect()
    cols = "{" + ", ".join(f"'{k}': '{'BIGINT' if v == pa.int64() else 'DOUBLE' if v == pa.float64() else 'VARCHAR'}'"
                           for k, v in types.items()) + "}"
    t0 = time.perf_counter()
    n = con.sql(f"select count(*) from (select * from read_json('{path}', format = 'newline_delimited', "
                f"columns = {cols}, ignore_errors = true) where step is not null)").fetchall()[0][0]
    return arrow, n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="500000,2000000", help="comma-separated file sizes in rows")
    ap.add_argument("--keep", help="keep the generated files in this folder (reused when present)")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="mhw-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# JSONL ingest at {commit}, {dt.date.today()}; {os.cpu_count()} cores; load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at start\n")
    try:
        wall, peak, _ = mhw("ingest", "--help", env=env)
        print(f"start-up (mhw ingest --help): {wall:.2f} s, peak RSS {peak / 2**20:,.0f} MB")
        tiny = work / "tiny.jsonl"
        write_jsonl(tiny, steps(1), bad=False)
        shutil.rmtree(work / "lake-tiny", ignore_errors=True)
        fixed, peak, _ = mhw("ingest", tiny, "--lake", work / "lake-tiny", env=env)
        print(f"fixed cost (mhw ingest of a two-line file): {fixed:.2f} s, peak RSS {peak / 2**20:,.0f} MB\n")
        print(f"{'rows':>10} {'file MB':>8} {'ingest s':>9} {'rows/s':>11} {'net rows/s':>11} {'peak RSS MB':>12} "
              f"{'RSS/file':>9} {'Lake.write rows/s':>18} {'pyarrow parse rows/s':>21} {'duckdb parse rows/s':>20}  load")
        for n in (int(x) for x in a.rows.split(",")):
            cols = steps(n)
            path = work / f"steps-{n}.jsonl"
            bad = 2 * len(BAD)
            if not path.exists():
                bad = write_jsonl(path, cols)
            size = path.stat().st_size
            lake = work / f"lake-{n}"
            shutil.rmtree(lake, ignore_errors=True)
            secs, peak, r = mhw("ingest", path, "--lake", lake, env=env)
            stored, quarantined = lake_counts(lake)
            if (stored, quarantined) != (n - bad, bad):
                raise SystemExit(f"wrong result for {n:,} rows: stored {stored:,} (want {n - bad:,}), quarantined "
                                 f"{quarantined} (want {bad})\n{r.stdout[-3000:]}")
            floor_root = tempfile.mkdtemp(prefix="mhw-bench-floor-", dir=work)
            try:
                floor = writer_floor({k: v for k, v in cols.items()}, floor_root)
            finally:
                shutil.rmtree(floor_root, ignore_errors=True)
            shutil.rmtree(lake, ignore_errors=True)
            arrow, duck = parse_floors(path)
            print(f"{n:>10,} {size / 2**20:>8,.0f} {secs:>9.2f} {n / secs:>11,.0f} {n / max(secs - fixed, 1e-3):>11,.0f} "
                  f"{peak / 2**20:>12,.0f} "
                  f"{peak / size:>8.2f}x {floor:>18,.0f} {arrow:>21,.0f} {duck:>20,.0f}  {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
