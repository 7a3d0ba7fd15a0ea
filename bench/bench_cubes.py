"""Cube build benchmark: every figure and ratio below comes from one run of this script.

    .venv/bin/python bench/bench_cubes.py [--rows 10000000 40000000] [--spark-rows 10000000] [--repeat 2]

For each N: ``mhw simulate --rows N`` into a fresh lake, then
1. raw scan: DuckDB reads every column the base models read from the four fact tables (the floor
   any cube build pays), best of --repeat;
2. DuckDB full build (``mhw build --full``: base models, daily and window rollups, serving file),
   best of --repeat, and its ratio to the raw scan (target <= 2x); and the base models alone (raw
   rows -> finest-grain cubes, the part of the build that reads raw rows) against the same scan;
3. incremental one-day refresh: every raw file of the busiest day is rewritten (same rows, new
   files), then ``mhw build``; median of --repeat, ratio to the full build (target <= 1/10); then
   ``mhw audit`` proves the refreshed cubes equal the lake;
4. Spark (local[2], the same 2 cores) full build of the same lake, session start included and
   shown apart, ratio to DuckDB (target <= 10x); its served cubes are compared with DuckDB's;
5. dashboard queries on the serving file (a connection opened once, as a dashboard holds one):
   p50/p95/max over every execution (target p95 <= 50 ms).
The machine's load average is printed with the figures: these machines are shared and noisy.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines import lakefiles  # noqa: E402
from pipelines.audit import audit  # noqa: E402
from pipelines.build import build  # noqa: E402
from pipelines.engines.duckdb_engine import DuckDBEngine  # noqa: E402
from pipelines.models import load_models  # noqa: E402
from warehouse import query  # noqa: E402
from warehouse.schemas import TABLES  # noqa: E402
from warehouse.sqltext import literal  # noqa: E402
from warehouse.writer import Lake  # noqa: E402

SQL = str(REPO / "sql")  # main() pins a copy: other engineers edit sql/ while a bench runs

DASHBOARD = [
    ("fleet step time per day", "select date, step_time_p50_ms, step_time_p95_ms, tokens_per_s from train_health "
     "where agg_level = 'date' order by date"),
    ("one model by hardware per day", "select date, hardware, loss_mean, n_loss_nonfinite, step_time_p99_ms "
     "from train_health where agg_level = 'model,hardware,date' and model = $model order by date, hardware"),
    ("hardware x precision leaderboard", "select hardware, precision, tokens_per_s, mfu_mean, step_time_p95_ms "
     "from train_health where agg_level = 'hardware,precision' order by tokens_per_s desc"),
    ("runs with NaN loss on a day", "select run_id, n_loss_nonfinite, last_loss from train_health "
     "where agg_level = 'model,hardware,precision,date,run_id' and model = $model and date = $day "
     "and n_loss_nonfinite > 0 order by n_loss_nonfinite desc limit 50"),
    ("eval accuracy per checkpoint + latency", "select checkpoint_step, value_mean, latency_p95_ms "
     "from eval_health where agg_level = 'model,hardware,precision,checkpoint_step' and model = $model "
     "and metric = 'accuracy' order by checkpoint_step"),
    ("latency p99 by hardware per day", "select date, hardware, latency_p99_ms, error_rate from latency_health "
     "where agg_level = 'hardware,date' order by date, hardware"),
    ("GPU utilization per model per day", "select date, model, util_mean, mem_peak_share from system_health "
     "where agg_level = 'model,date' order by date, model"),
    ("ad-hoc p95 merged from the sketch", "with b as (select bucket, sum(n) as n from train_step_time_sketch "
     "where agg_level = 'model,hardware,precision' and model = $model group by bucket), "
     "c as (select bucket, sum(n) over (order by bucket) as cum, sum(n) over () as total from b where bucket <> 30000) "
     "select min(mid) from c join sketch_bounds using (bucket) where cum >= 0.95 * total"),
]


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


@functools.lru_cache(maxsize=1)
def scanned_columns() -> dict[str, list[str]]:
    """Per fact table, the columns the base models read (their source CTEs' column references)."""
    cols: dict[str, set[str]] = {}
    for m in load_models(Path(SQL)):
        for table in (s for s in m.sources if s in TABLES):
            tree = sqlglot.parse_one(m.sql, read="duckdb")
            first = tree.find(exp.With).expressions[0].this
            cols.setdefault(table, set()).update(c.name for c in first.find_all(exp.Column))
    return {t: sorted(c & set(TABLES[t].schema.names)) for t, c in cols.items()}


def raw_scan(lake: str) -> float:
    eng = DuckDBEngine()
    handle = Lake(lake)
    fs, root = handle.fs, handle.root
    statements = []
    for table, cols in scanned_columns().items():
        parts = lakefiles.list_partitions(fs, f"{root}/{table}", TABLES[table].partition_by)
        eng.register_files(table, [f.path for v in parts.values() for f in v], TABLES[table].schema,
                           TABLES[table].partition_by, f"{root}/{table}")
        aggs = []
        for c in cols:
            t = TABLES[table].schema.field(c).type
            numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
            aggs.append(f'sum("{c}")' if numeric else f'max("{c}")')
        statements.append(f"select count(*), {', '.join(aggs)} from {table}")

    def scan():
        for s in statements:
            eng.con.execute(s).fetchall()
    seconds, _ = best(scan, 1)
    eng.close()
    return seconds


def base_models(lake: str) -> dict[str, float]:
    """Raw rows -> finest-grain cubes: every model that reads raw rows, alone, one after another."""
    from pipelines import sketch
    eng = DuckDBEngine()
    handle = Lake(lake)
    fs, root = handle.fs, handle.root
    eng.register_arrow("sketch_bounds", sketch.bounds_table())
    for table in TABLES:
        if table in scanned_columns():
            parts = lakefiles.list_partitions(fs, f"{root}/{table}", TABLES[table].partition_by)
            eng.register_files(table, [f.path for v in parts.values() for f in v], TABLES[table].schema,
                               TABLES[table].partition_by, f"{root}/{table}")
    seconds = {}
    for m in load_models(Path(SQL)):
        if any(s in scanned_columns() for s in m.sources):
            t = time.perf_counter()
            eng.query(m.sql)
            seconds[m.name] = time.perf_counter() - t
    eng.close()
    return seconds


def busiest_day(lake: str) -> tuple[str, float]:
    handle = Lake(lake)
    fs, root = handle.fs, handle.root
    parts = lakefiles.list_partitions(fs, f"{root}/train_steps", TABLES["train_steps"].partition_by)
    sizes: dict[str, int] = {}
    for (_, _, day), files in parts.items():
        sizes[day] = sizes.get(day, 0) + sum(f.size for f in files)
    day = max(sizes, key=sizes.get)
    return day, sizes[day] / sum(sizes.values())


def rewrite_day(lake: str, day: str) -> tuple[int, int]:
    """Rewrite every raw file of ``day`` in every fact table (same rows, new files): a late re-import."""
    n_files = n_rows = 0
    for table in ("train_steps", "eval_results", "latency_samples", "system_samples"):
        for path in Path(lake, table).glob(f"*/*/date={day}/*.parquet"):
            data = pq.read_table(path)
            tmp = path.with_suffix(".rewrite.tmp")
            pq.write_table(data, tmp, compression="zstd")
            os.replace(tmp, path)
            n_files, n_rows = n_files + 1, n_rows + data.num_rows
    return n_files, n_rows


def dashboard(lake: str, serving: str, repeat: int) -> dict[str, list[float]]:
    con = query.connect(lake, serving)
    model, day = con.execute("select model, date from train_health where agg_level = 'model,date' "
                             "order by n_steps desc limit 1").fetchall()[0]
    params = {"model": model, "day": day}
    out: dict[str, list[float]] = {}
    for name, sql in DASHBOARD:
        named = {k: v for k, v in params.items() if f"${k}" in sql}
        con.execute(sql, named).fetchall()  # warm: the first read of each table's blocks
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            con.execute(sql, named).fetchall()
            times.append(time.perf_counter() - t)
        out[name] = times
    con.close()
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(p * len(s)) - 1)]


def same_cubes(a: str, b: str) -> str:
    import duckdb
    con = duckdb.connect()
    con.execute(f"attach {literal(a)} as a (read_only)")
    con.execute(f"attach {literal(b)} as b (read_only)")
    names = [r[0] for r in con.execute("select table_name from information_schema.tables where table_catalog = 'a' "
                                       "and table_type = 'BASE TABLE' and table_name <> 'build_info'").fetchall()]
    bad = []
    for n in names:
        exact = ", ".join(f'"{c}"' for c, in con.execute(
            f"select column_name from information_schema.columns where table_catalog = 'a' and table_name = '{n}' "
            "and data_type not in ('DOUBLE', 'FLOAT')").fetchall())
        diff = con.execute(f"select count(*) from ((select {exact} from a.main.\"{n}\" except all select {exact} "
                           f"from b.main.\"{n}\") union all (select {exact} from b.main.\"{n}\" except all "
                           f"select {exact} from a.main.\"{n}\"))").fetchall()[0][0]
        if diff:
            bad.append(f"{n}: {diff} rows differ")
    con.close()
    return "identical (every non-float column of every served table)" if not bad else "; ".join(bad)


def run_size(rows: int, work: Path, repeat: int, spark: bool, queries: int) -> dict:
    lake, cubes, serving = work / f"lake-{rows}", work / f"cubes-{rows}", work / f"serving-{rows}.duckdb"
    for p in (lake, cubes):
        shutil.rmtree(p, ignore_errors=True)
    r = {"rows": rows}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "warehouse.cli", "simulate", "--rows", str(rows), "--out", str(lake)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    r["simulate_s"] = time.perf_counter() - t
    r["lake_mb"] = sum(f.stat().st_size for f in lake.rglob("*.parquet")) / 1e6
    print(f"\n== {rows:,} train_steps rows: simulated in {r['simulate_s']:.1f} s, lake {r['lake_mb']:.0f} MB; {load()}")

    r["scan_s"] = min(raw_scan(str(lake)) for _ in range(repeat))
    print(f"raw scan of the columns the cubes read: {r['scan_s']:.2f} s  ({load()})")

    def full():
        return build(str(lake), str(serving), full=True, cubes_root=str(cubes), sql_dir=SQL)
    r["full_s"], res = best(full, repeat)
    r["full_steps"] = res.seconds
    r["served_rows"] = sum(v for k, v in res.rows.items() if "_base" not in k)
    r["serving_mb"] = serving.stat().st_size / 1e6
    print(f"DuckDB full build: {r['full_s']:.2f} s = {r['full_s'] / r['scan_s']:.2f}x the raw scan "
          f"(target <= 2x); {r['served_rows']:,} cube rows, serving file {r['serving_mb']:.1f} MB  ({load()})")
    top = sorted(((v, k) for k, v in res.seconds.items() if k != "total"), reverse=True)[:5]
    print("  slowest steps: " + ", ".join(f"{k} {v:.2f} s" for v, k in top))

    base = min((base_models(str(lake)) for _ in range(repeat)), key=lambda b: sum(b.values()))
    r["base_s"] = sum(base.values())
    print(f"  of which raw rows -> finest-grain cubes (every model reading raw rows, alone, one after another): "
          f"{r['base_s']:.2f} s = {r['base_s'] / r['scan_s']:.2f}x the raw scan; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(base.items(), key=lambda kv: -kv[1])))

    day, share = busiest_day(str(lake))
    incs = []
    for _ in range(repeat):
        n_files, n_rows = rewrite_day(str(lake), day)
        t = time.perf_counter()
        inc = build(str(lake), str(serving), cubes_root=str(cubes), sql_dir=SQL)
        incs.append(time.perf_counter() - t)
        assert not inc.full, "the SQL changed under the bench"
    r["inc_s"] = statistics.median(incs)
    r["inc_partitions"] = inc.rebuilt.get("train_health_base", 0)
    print(f"incremental refresh of {day}, the busiest day ({share:.0%} of the raw bytes, so 1/{1 / share:.0f} is the "
          f"floor), {n_files} raw files, {n_rows:,} rows rewritten: {r['inc_s']:.2f} s "
          f"(median of {len(incs)}) = 1/{r['full_s'] / r['inc_s']:.1f} of the full build (target <= 1/10); "
          f"{sum(inc.rebuilt.values())} partitions recomputed, serving file {inc.serving_mode}  ({load()})")
    t = time.perf_counter()
    findings = audit(str(lake), str(serving))
    r["audit_s"] = time.perf_counter() - t
    print(f"mhw audit after the refresh: {'ok' if not findings else f'{len(findings)} differences'} "
          f"({r['audit_s']:.1f} s)")

    if spark:
        from pipelines.engines.spark_engine import SparkEngine
        t = time.perf_counter()
        eng = SparkEngine(master="local[2]")
        r["spark_start_s"] = time.perf_counter() - t
        try:
            t = time.perf_counter()
            sres = build(str(lake), str(work / f"spark-{rows}.duckdb"), engine=eng, full=True,
                         cubes_root=str(work / f"spark-cubes-{rows}"), sql_dir=SQL)
            r["spark_s"] = time.perf_counter() - t
        finally:
            eng.close()
        total = r["spark_s"] + r["spark_start_s"]
        r["spark_same"] = same_cubes(str(serving), str(work / f"spark-{rows}.duckdb"))
        warm = " (a JVM already warm from the previous size)" if r["spark_start_s"] < 2 else " (a cold JVM)"
        print(f"Spark local[2] full build: {r['spark_s']:.1f} s + {r['spark_start_s']:.1f} s session start{warm} = "
              f"{total / r['full_s']:.1f}x DuckDB ({r['spark_s'] / r['full_s']:.1f}x without the start; "
              f"target <= 10x); served cubes vs DuckDB: {r['spark_same']}  ({load()})")
        top = sorted(((v, k) for k, v in sres.seconds.items() if k != "total"), reverse=True)[:5]
        print("  slowest steps: " + ", ".join(f"{k} {v:.1f} s" for v, k in top))
        shutil.rmtree(work / f"spark-cubes-{rows}", ignore_errors=True)

    times = dashboard(str(lake), str(serving), queries)
    every = [x for v in times.values() for x in v]
    r["dash_p50_ms"], r["dash_p95_ms"], r["dash_max_ms"] = (1000 * pct(every, 0.5), 1000 * pct(every, 0.95),
                                                            1000 * max(every))
    print(f"dashboard queries on the serving file ({len(DASHBOARD)} queries x {queries}): p50 "
          f"{r['dash_p50_ms']:.1f} ms, p95 {r['dash_p95_ms']:.1f} ms (target <= 50 ms), max {r['dash_max_ms']:.1f} ms")
    for name, v in times.items():
        print(f"  {name}: p50 {1000 * pct(v, 0.5):.1f} ms, p95 {1000 * pct(v, 0.95):.1f} ms")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000])
    p.add_argument("--spark-rows", type=int, nargs="*", help="sizes to build on Spark too (default: all)")
    p.add_argument("--repeat", type=int, default=2, help="runs of the scan, full and incremental builds")
    p.add_argument("--queries", type=int, default=30, help="executions of each dashboard query")
    p.add_argument("--work", default="/tmp/mhw-bench-cubes", help="scratch folder (lakes are rebuilt)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    global SQL
    SQL = str(work / "sql")
    shutil.rmtree(SQL, ignore_errors=True)
    shutil.copytree(REPO / "sql", SQL)
    models = load_models(Path(SQL))
    print(f"bench_cubes: {os.cpu_count()} CPUs; {load()}; {len(models)} SQL models: "
          + ", ".join(m.name for m in models))
    results = [run_size(n, work, args.repeat, args.spark_rows is None or n in args.spark_rows, args.queries)
               for n in args.rows]
    print("\n| raw rows | raw scan | DuckDB full build | build / scan | 1-day refresh | full / refresh | "
          "Spark local[2] | Spark / DuckDB | dashboard p95 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        spark = (f"{r['spark_s'] + r['spark_start_s']:.1f} s | {(r['spark_s'] + r['spark_start_s']) / r['full_s']:.1f}x"
                 if "spark_s" in r else "– | –")
        print(f"| {r['rows']:,} | {r['scan_s']:.2f} s | {r['full_s']:.2f} s | {r['full_s'] / r['scan_s']:.2f}x | "
              f"{r['inc_s']:.2f} s | {r['full_s'] / r['inc_s']:.1f}x | {spark} | {r['dash_p95_ms']:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
