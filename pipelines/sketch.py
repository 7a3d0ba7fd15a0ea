"""Fixed log-bucket histograms: percentiles that DuckDB and Spark compute identically and that merge
across partitions and rollups by SUM.

A positive finite value ``x`` falls in bucket ``b`` when ``lo(b) <= x < lo(b + 1)``, with
``lo(b) = GROWTH ** b``. Every bucket is represented by its geometric midpoint
``sqrt(lo(b) * lo(b + 1))``, so a percentile read from the buckets is within
``sqrt(GROWTH) - 1`` (0.995 %) of a value that was observed at that rank.

The SQL (sql/cubes/*_sketch_base.sql) guesses ``floor(ln(x) / ln(GROWTH))`` and then corrects the
guess by exact comparison with ``lo`` and ``hi`` read from the bounds table below. The guess alone
differs between Spark (Java ``StrictMath``) and DuckDB (C ``libm``) for a handful of values per
million right at bucket edges; the comparison with bounds both engines read from the same table,
as the same doubles, removes that difference. The bounds are computed here, once, in Python.

Special values get their own buckets, ordered so that a cumulative count over ``bucket`` is a
cumulative count over value: -inf < negatives (mirrored log buckets) < 0 < positives < +inf.
NaN has a bucket too (counted, never ranked); nulls are not counted at all.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa

GROWTH = 1.02
B_MIN, B_MAX = -1100, 1400  # 1.02**-1100 ≈ 3.5e-10, 1.02**1401 ≈ 1.1e12: beyond them, clamped
UNDERFLOW, OVERFLOW = B_MIN - 1, B_MAX + 1  # positive values below lo(B_MIN) / at or above hi(B_MAX)
NEGATIVE_BASE = -10_000  # a negative x lands in NEGATIVE_BASE - bucket(|x|)
ZERO = -5_000
NEG_INF, POS_INF, NAN = -20_000, 20_000, 30_000

# The SQL spells these numbers out; tests/pipelines/test_sketch.py checks the SQL against this module.
MAX_RELATIVE_ERROR = math.sqrt(GROWTH) - 1

BOUNDS_SCHEMA = pa.schema([
    pa.field("bucket", pa.int32(), nullable=False),
    pa.field("lo", pa.float64()),   # inclusive lower bound of |x| (positive buckets only)
    pa.field("hi", pa.float64()),   # exclusive upper bound of |x|
    pa.field("mid", pa.float64()),  # the value a percentile in this bucket reports
])


def _lo(b: int) -> float:
    return GROWTH ** b


def bounds_table() -> pa.Table:
    """Every bucket id with its bounds and representative value; ``lo``/``hi`` only where the SQL
    compares against them (the positive buckets B_MIN..B_MAX)."""
    pos = list(range(B_MIN, B_MAX + 1))
    lo = [_lo(b) for b in pos]
    hi = lo[1:] + [_lo(B_MAX + 1)]  # hi(b) is exactly lo(b + 1): no gaps, no overlaps
    mid = [math.sqrt(a * z) for a, z in zip(lo, hi)]
    rows = {b: (a, z, m) for b, a, z, m in zip(pos, lo, hi, mid)}
    rows[UNDERFLOW] = (None, None, _lo(B_MIN))
    rows[OVERFLOW] = (None, None, _lo(B_MAX + 1))
    for b in [UNDERFLOW, *pos, OVERFLOW]:
        rows[NEGATIVE_BASE - b] = (None, None, -rows[b][2])
    rows[ZERO] = (None, None, 0.0)
    rows[NEG_INF] = (None, None, -math.inf)
    rows[POS_INF] = (None, None, math.inf)
    rows[NAN] = (None, None, math.nan)
    ids = sorted(rows)
    return pa.table({
        "bucket": pa.array(ids, pa.int32()),
        "lo": pa.array([rows[b][0] for b in ids], pa.float64()),
        "hi": pa.array([rows[b][1] for b in ids], pa.float64()),
        "mid": pa.array([rows[b][2] for b in ids], pa.float64()),
    }, schema=BOUNDS_SCHEMA)


def _positive_bucket(ax: float) -> int:
    if ax < _lo(B_MIN):
        return UNDERFLOW
    if ax >= _lo(B_MAX + 1):
        return OVERFLOW
    b = min(max(math.floor(math.log(ax) / math.log(GROWTH)), B_MIN), B_MAX)
    if ax < _lo(b):
        b -= 1
    elif ax >= _lo(b + 1):
        b += 1
    return b


def bucket_of(x: float | None) -> int | None:
    """The reference: the bucket the SQL must assign to ``x`` (None for null)."""
    if x is None:
        return None
    if math.isnan(x):
        return NAN
    if math.isinf(x):
        return POS_INF if x > 0 else NEG_INF
    if x == 0:
        return ZERO
    b = _positive_bucket(abs(x))
    return b if x > 0 else NEGATIVE_BASE - b


def quantile(buckets: dict[int, int], p: float) -> float | None:
    """The reference percentile: the representative value of the first bucket whose cumulative count
    reaches ``p`` of all ranked values (NaN is not ranked). None when nothing is ranked."""
    mids = dict(zip(*(bounds_table().column(c).to_pylist() for c in ("bucket", "mid"))))
    ranked = sorted((b, n) for b, n in buckets.items() if b != NAN and n)
    total = sum(n for _, n in ranked)
    cum, share = 0, Fraction(str(p))  # exact, like the SQL's decimal literal
    for b, n in ranked:
        cum += n
        if cum >= share * total:
            return mids[b]
    return None


def buckets_of(values) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in np.asarray(values, dtype=float).tolist():
        b = bucket_of(v)
        out[b] = out.get(b, 0) + 1
    return out
