"""JSONL ingest speed and peak memory per file size, side by side with an earlier commit's, and the
floors: what the work it cannot skip costs on this machine.

    .venv/bin/python bench/bench_ingest.py [--rows 500000,2000000] [--baseline REV] [--keep DIR]

For each size: writes a JSONL file of ``train_steps`` lines of one run (the columns a trainer logs:
run_id, model, hardware, step, ISO ts, loss, lr, grad_norm, tokens_per_s, step_time_ms, data_time_ms,
gpu_util; a ``runs`` line first; a few bad lines of several kinds spread through the file), runs
``mhw ingest`` on it as a fresh process, and prints its wall time, rows/s and peak RSS (the child's
``ru_maxrss``, read by a small wrapper process that runs nothing else: a child of this process would
report this process's own peak). It checks what the lake holds afterwards (every good row once, every
bad line in quarantine) so a fast wrong ingest does not pass. ``--baseline REV`` runs the same ingest
from that commit's tree too (``git archive`` into a temporary folder, this venv), right after, on
the same file: "before" and "after" come from one run on one machine. The fixed cost of a call
(start-up, imports, the lock, the small files) is measured as the ingest of a two-line file and
printed; "net rows/s" is rows / (wall - that). CPU s is the call's user + system time, every thread:
on this shared machine, where the wall time follows what the other jobs leave, it is the steadier
figure. The machine's load average is printed with the figures.

Floors, per size, as CPU time per row (process CPU, every thread): ``Lake.write`` of the same rows as
one Arrow table (storing them); parsing the file alone with pyarrow's JSON reader (the columns'
parser before DuckDB) and with DuckDB's read_json (every column, on every core), and with DuckDB's
``json_transform`` over the lines as Arrow strings (how the columns parse); the lines' shapes
(``bytes.translate`` and a dictionary encoding: warehouse/jsonl_shapes.py); the sha1 of the file
(ingest knows a source by its bytes). "floor rows/s" is the cores / the sum of DuckDB's read_json
(its own file reader typing every column: the cheapest parse DuckDB has), shapes, sha1 and
Lake.write: the speed of doing only that work, perfectly spread over the cores (ingest also checks,
stages and merges; the columns parse each line from its head's end with json_transform).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
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
        "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_maxrss, r.ru_utime + r.ru_stime); sys.exit(rc)")
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


def mhw(*argv, env, tree: Path = REPO) -> tuple[float, int, subprocess.CompletedProcess, float]:
    """(wall seconds, peak RSS in bytes, the process, CPU seconds: user + system, every thread) of one
    ``mhw`` call in a fresh process, running the code of ``tree`` (this checkout, or a baseline's)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "warehouse.cli", *map(str, argv)],
                       cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"mhw {' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    peak, used = r.stdout.strip().splitlines()[-1].split()
    return wall, int(peak) * 1024, r, float(used)


def lake_counts(lake: Path) -> tuple[int, int]:
    from warehouse.query import connect

    con = connect(lake_root=str(lake), serving_path="")
    return (con.execute("select count(*) from train_steps").fetchone()[0],
            con.execute("select count(*) from quarantine").fetchone()[0])


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def writer_floor(cols: dict[str, np.ndarray], root: str) -> tuple[float, float]:
    """Lake.write of the same rows: (rows/s, best of 2; CPU seconds per row)."""
    from warehouse.writer import Lake

    n = len(cols["step"])
    same = {k: pa.nulls(n, pa.string()).fill_null(v) for k, v in (("run_id", RUN), ("model", MODEL), ("hardware", HARDWARE))}
    t = pa.table({**same,
                  **{k: (pa.array(v).cast(pa.timestamp("us", tz="UTC")) if k == "ts" else v) for k, v in cols.items()}})
    best, best_cpu = float("inf"), float("inf")
    for _ in range(2):
        t0, c0 = time.perf_counter(), cpu()
        Lake(root).write("train_steps", t, "bench")
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, cpu() - c0)
    return n / best, best_cpu / n


TYPES = {"table": "VARCHAR", "run_id": "VARCHAR", "model": "VARCHAR", "hardware": "VARCHAR", "step": "BIGINT",
         "ts": "VARCHAR", **{c: "DOUBLE" for c in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_ms",
                                                   "data_time_ms", "gpu_util")}}
TYPES_ORDER = list(TYPES)


def floors(path: Path, n: int) -> dict[str, tuple[float, float]]:
    """{what: (rows/s, CPU seconds per row)} of the parts of the work, each alone over the whole file."""
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.json as pj

    from warehouse.importers import read_blocks
    from warehouse.jsonl_shapes import SHAPE_CUT

    out = {}

    def timed(name, run):
        t0, c0 = time.perf_counter(), cpu()
        rows = run()
        out[name] = (rows / (time.perf_counter() - t0), (cpu() - c0) / max(n, 1))

    schema = pa.schema([(k, pa.int64() if v == "BIGINT" else pa.float64() if v == "DOUBLE" else pa.string())
                        for k, v in TYPES.items()])
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def arrow():  # one 2 MiB unit at a time, as the columns read it before DuckDB; units with a bad line fail
        rows = 0
        with open(path, "rb") as f:
            f.readline()  # the runs line
            while unit := f.read(1 << 21):
                unit += f.readline()
                try:
                    rows += pj.read_json(pa.BufferReader(unit), parse_options=opts).num_rows
                except pa.ArrowInvalid:
                    pass
        return rows

    con = duckdb.connect(config={"threads": os.cpu_count() or 1})
    cols = "{" + ", ".join(f"'{k}': '{v}'" for k, v in TYPES.items()) + "}"
    struct = "{" + ", ".join(f'"{k}": "{v}"' for k, v in TYPES.items()) + "}"

    def duck_file():  # every column counted: DuckDB types only the columns a query uses
        every = ", ".join(f'count("{k}")' for k in TYPES)
        return con.sql(f"select {every} from read_json('{path}', format = 'newline_delimited', "
                       f"columns = {cols}, ignore_errors = true)").fetchall()[0][TYPES_ORDER.index("step")]

    def blocks():
        with open(path, "rb") as f:
            for _, data, size in read_blocks(f):
                if size is None:
                    yield data

    one = duckdb.connect(config={"threads": 1})

    def duck_lines():  # the lines of each block as Arrow strings, as the columns hand them to DuckDB (one thread)
        rows = 0
        for data in blocks():
            nl = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
            offsets = np.concatenate([[0], nl + 1]).astype(np.int32)
            lines = pa.Array.from_buffers(pa.string(), len(nl), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
            one.register("lines", pa.table({"line": lines}))
            rows += one.sql(f"select try(json_transform(line, '{struct}')) as s from lines").to_arrow_table().num_rows
        return rows

    def shapes():
        rows = 0
        for data in blocks():
            sig = data.translate(None, SHAPE_CUT)
            nl = np.flatnonzero(np.frombuffer(sig, np.uint8) == 10)
            offsets = np.concatenate([[0], nl + 1]).astype(np.int32)
            rows += len(pc.dictionary_encode(pa.Array.from_buffers(pa.binary(), len(nl), [None, pa.py_buffer(offsets),
                                                                                         pa.py_buffer(sig)])))
        return rows

    def sha1():
        with open(path, "rb") as f:
            hashlib.file_digest(f, "sha1")
        return n

    timed("pyarrow read_json, 2 MiB units", arrow)
    timed("DuckDB read_json, every column and core", duck_file)
    timed("DuckDB json_transform of the lines, 1 thread", duck_lines)
    timed("shapes (translate, dictionary)", shapes)
    timed("sha1 of the file", sha1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="500000,2000000", help="comma-separated file sizes in rows")
    ap.add_argument("--baseline", help="a commit whose ingest runs beside this checkout's, on the same files")
    ap.add_argument("--keep", help="keep the generated files in this folder (reused when present)")
    a = ap.parse_args()
    env = dict(os.environ)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="mhw-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    trees = {"this": REPO}
    base = None
    if a.baseline:
        base = Path(tempfile.mkdtemp(prefix="mhw-bench-baseline-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", a.baseline], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        # as `make setup` does for this checkout: with PYTHONDONTWRITEBYTECODE every process would compile
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(base / d) for d in ("mhw", "warehouse"))],
                       check=True)
        trees["base"] = base
    print(f"# JSONL ingest at {commit}" + (f" beside {a.baseline}" if a.baseline else "") + f", {dt.date.today()}; "
          f"{cores} cores; load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at start\n")
    try:
        tiny = work / "tiny.jsonl"
        write_jsonl(tiny, steps(1), bad=False)
        fixed = {}
        for name, tree in trees.items():
            wall, peak, _, used = mhw("ingest", "--help", env=env, tree=tree)
            shutil.rmtree(work / "lake-tiny", ignore_errors=True)
            fixed[name], tiny_peak, _, tiny_cpu = mhw("ingest", tiny, "--lake", work / "lake-tiny", env=env, tree=tree)
            print(f"{name}: start-up (mhw ingest --help) {wall:.2f} s, {used:.2f} CPU s, peak RSS {peak / 2**20:,.0f} MB; "
                  f"fixed cost (mhw ingest of a two-line file) {fixed[name]:.2f} s, {tiny_cpu:.2f} CPU s, peak RSS "
                  f"{tiny_peak / 2**20:,.0f} MB")
        print(f"\n{'rows':>10} {'file MB':>8} {'code':>5} {'ingest s':>9} {'rows/s':>11} {'net rows/s':>11} "
              f"{'CPU s':>7} {'rows/CPU s':>11} {'peak RSS MB':>12} {'RSS/file':>9}  load")
        sizes = [int(x) for x in a.rows.split(",")]
        results = []
        for n in sizes:
            cols = steps(n)
            path = work / f"steps-{n}.jsonl"
            bad = 2 * len(BAD)
            if not path.exists():
                bad = write_jsonl(path, cols)
            size = path.stat().st_size
            got = {}
            for name, tree in trees.items():
                lake = work / f"lake-{n}"
                shutil.rmtree(lake, ignore_errors=True)
                secs, peak, r, used = mhw("ingest", path, "--lake", lake, env=env, tree=tree)
                stored, quarantined = lake_counts(lake)
                if (stored, quarantined) != (n - bad, bad):
                    raise SystemExit(f"wrong result for {n:,} rows ({name}): stored {stored:,} (want {n - bad:,}), "
                                     f"quarantined {quarantined} (want {bad})\n{r.stdout[-3000:]}")
                shutil.rmtree(lake, ignore_errors=True)
                got[name] = (secs, used)
                print(f"{n:>10,} {size / 2**20:>8,.0f} {name:>5} {secs:>9.2f} {n / secs:>11,.0f} "
                      f"{n / max(secs - fixed[name], 1e-3):>11,.0f} {used:>7.2f} {n / used:>11,.0f} "
                      f"{peak / 2**20:>12,.0f} {peak / size:>8.2f}x  {os.getloadavg()[0]:.1f}", flush=True)
            if "base" in got:
                print(f"{'':>10} {'':>8} {'':>5} this is {got['base'][0] / got['this'][0]:.2f}x as fast as {a.baseline} "
                      f"and takes {got['this'][1] / got['base'][1]:.2f}x its CPU")
            results.append((n, cols, path))
        for n, cols, path in results:
            floor_root = tempfile.mkdtemp(prefix="mhw-bench-floor-", dir=work)
            try:
                write_rate, write_cpu = writer_floor(cols, floor_root)
            finally:
                shutil.rmtree(floor_root, ignore_errors=True)
            parts = floors(path, n)
            parts["Lake.write of the rows"] = (write_rate, write_cpu)
            print(f"\nfloors at {n:,} rows ({cores} cores; CPU of every thread):")
            for what, (rate, cost) in parts.items():
                print(f"  {what:<36} {rate:>11,.0f} rows/s  {cost * 1e6:6.2f} CPU us/row")
            need = ("DuckDB read_json, every column and core", "shapes (translate, dictionary)", "sha1 of the file",
                    "Lake.write of the rows")
            total = sum(parts[k][1] for k in need)
            print(f"  floor rows/s (those four, spread over {cores} cores): {cores / total:,.0f}  "
                  f"({total * 1e6:.2f} CPU us/row)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average at end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
