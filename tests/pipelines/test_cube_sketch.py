"""The log-bucket sketch: bounds, the SQL's bucket assignment against the Python reference on every
bucket edge, and percentiles read from merged buckets within 1 % of the exact rank value."""
import math
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cube_lake import DAY0, edge_values, make_lake
from pipelines import sketch
from pipelines.build import build


def test_bounds_are_contiguous_monotone_and_within_one_percent():
    b = sketch.bounds_table()
    ids = b["bucket"].to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    mids = [m for m in b["mid"].to_pylist() if not math.isnan(m)]
    assert mids == sorted(mids), "a cumulative count over bucket ids must be one over values"
    edges = b.filter(pc.is_valid(b["lo"]))
    lo, hi, mid = (edges[c].to_numpy() for c in ("lo", "hi", "mid"))
    assert (lo[1:] == hi[:-1]).all(), "hi(b) is exactly lo(b + 1)"
    assert ((lo <= mid) & (mid < hi)).all()
    assert max((mid - lo) / lo) <= 0.01 and max((hi - mid) / mid) <= 0.01
    assert sketch.MAX_RELATIVE_ERROR < 0.01


def test_reference_buckets_special_values_in_value_order():
    order = [-math.inf, -1e6, -1.0, -1e-6, 0.0, 1e-6, 1.0, 1e6, math.inf]
    buckets = [sketch.bucket_of(x) for x in order]
    assert buckets == sorted(buckets) and len(set(buckets)) == len(buckets)
    assert sketch.bucket_of(math.nan) == sketch.NAN and sketch.bucket_of(None) is None
    assert sketch.bucket_of(-0.0) == sketch.ZERO
    assert sketch.bucket_of(1e-300) == sketch.UNDERFLOW and sketch.bucket_of(1e300) == sketch.OVERFLOW
    for b in (-700, -1, 0, 1, 350, 1400):
        lo = sketch.GROWTH ** b
        assert sketch.bucket_of(lo) == b and sketch.bucket_of(math.nextafter(lo, 0)) == b - 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sketch")
    lake = make_lake(str(root / "lake"))
    build(lake, str(root / "serving.duckdb"))
    return root


def test_sql_buckets_equal_the_reference_on_every_edge(built):
    """The edge run's step times: every bucket's lo, the doubles either side of it, random values
    over 1e-9..1e12 and the special values. DuckDB must bucket each as pipelines/sketch.py does."""
    got = duckdb.sql(
        f"select step_time_bucket, sum(n_steps) from read_parquet('{built}/lake/cubes/train_health_base/**/*.parquet') "
        "where run_id = 'edge' and step_time_bucket is not null group by all").fetchall()
    expected = sketch.buckets_of(edge_values())
    assert dict(got) == expected


def test_percentiles_are_within_one_percent_of_the_exact_rank_value(built):
    con = duckdb.connect()
    con.execute(f"attach '{built}/serving.duckdb' as s (read_only)")
    raw = con.sql(f"select run_id, step_time_ms from read_parquet('{built}/lake/train_steps/**/*.parquet', "
                  f"hive_partitioning = true) where date = '{DAY0}' and run_id <> 'edge'").to_arrow_table()
    runs = sorted(set(raw["run_id"].to_pylist()))
    assert len(runs) == 8
    for run in runs:
        values = [v for r, v in zip(raw["run_id"].to_pylist(), raw["step_time_ms"].to_pylist())
                  if r == run and v is not None]
        ranked = sorted(v for v in values if not math.isnan(v))
        served = con.execute(
            "select step_time_p50_ms, step_time_p95_ms, step_time_p99_ms from s.main.train_health "
            f"where run_id = ? and date = '{DAY0}'", [run]).fetchall()[0]
        buckets = sketch.buckets_of(values)
        for p, got in zip((0.50, 0.95, 0.99), served):
            assert got == sketch.quantile(buckets, p)  # the SQL reads the sketch as the reference does
            k = math.ceil(Fraction(str(p)) * len(ranked))
            exact = ranked[k - 1]  # the value at the rank the percentile names
            if math.isinf(exact) or exact == 0:
                assert got == exact
            else:
                assert abs(got / exact - 1) <= 0.01, (run, p, got, exact)


def test_merged_sketch_equals_sketch_of_merged_rows(built):
    """Rolling up by SUM of bucket counts is exact: the fleet-day histogram equals the histogram of
    all that day's raw step times."""
    con = duckdb.connect()
    con.execute(f"attach '{built}/serving.duckdb' as s (read_only)")
    rolled = dict(con.execute(f"select bucket, n from s.main.train_step_time_sketch where agg_level = 'date' "
                              f"and date = '{DAY0}'").fetchall())
    raw = con.sql(f"select step_time_ms from read_parquet('{built}/lake/train_steps/**/*.parquet', "
                  f"hive_partitioning = true) where date = '{DAY0}' and step_time_ms is not null").to_arrow_table()
    assert rolled == sketch.buckets_of(raw["step_time_ms"].to_numpy(zero_copy_only=False))
