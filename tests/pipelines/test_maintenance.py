import datetime as dt
import os
import threading

import duckdb
import pyarrow as pa
import pytest

from pipelines.maintenance import apply_retention, compact, empty_trash, run_maintenance
from warehouse.writer import Lake

UTC = dt.timezone.utc


def write_blocks(lake, n_blocks=6, rows=100, day=dt.date(2026, 11, 1)):
    """One run per day, logged in blocks of ``rows`` steps: a key per (run, block), as training writes."""
    run = f"r{day:%Y%m%d}"
    for b in range(n_blocks):
        start = dt.datetime.combine(day, dt.time(1), UTC)
        lake.write("train_steps", pa.table({
            "run_id": [run] * rows, "step": list(range(b * rows, (b + 1) * rows)),
            "ts": [start + dt.timedelta(seconds=i) for i in range(rows)], "loss": [float(b)] * rows,
            "model": ["m"] * rows, "hardware": ["h"] * rows}), f"{run}-b{b:09d}")


def snapshot(root):
    return duckdb.sql(f"select count(*), sum(step), sum(loss) from read_parquet('{root}/train_steps/**/*.parquet', "
                      "hive_partitioning=true)").fetchall()[0]


def files(root):
    return sorted(p.name for p in (root / "train_steps").rglob("*.parquet"))


def test_compaction_keeps_every_row_in_one_file_and_is_idempotent(tmp_path):
    lake = Lake(tmp_path)
    write_blocks(lake)
    before = snapshot(tmp_path)
    assert compact(lake, min_files=4, min_age_s=3600).compacted_partitions == 0  # too young: a run may still retry
    res = compact(lake, min_files=4, min_age_s=0)
    assert (res.compacted_partitions, res.files_before, res.files_after) == (1, 6, 1)
    assert snapshot(tmp_path) == before == (600, sum(range(600)), sum(b * 100.0 for b in range(6)))
    assert len(files(tmp_path)) == 1 and files(tmp_path)[0].startswith("compacted-")
    assert compact(lake, min_files=1, min_age_s=0).compacted_partitions == 1  # one file: same set, same name
    assert snapshot(tmp_path) == before and len(files(tmp_path)) == 1
    assert empty_trash(lake, older_than_s=0) == 2


@pytest.mark.slow  # readers racing compaction
def test_readers_never_see_duplicates_or_gaps_while_compacting(tmp_path):
    lake = Lake(tmp_path)
    days = 40
    for day in range(days):
        write_blocks(lake, n_blocks=6, rows=20, day=dt.date(2026, 10, 1) + dt.timedelta(days=day))
    expected = (days * 120, days * sum(range(120)))
    assert snapshot(tmp_path)[:2] == expected
    results, errors, stop = [], [], threading.Event()

    def reader():
        con = duckdb.connect()
        while not stop.is_set():
            try:
                results.append(con.execute(f"select count(*), sum(step) from read_parquet("
                                           f"'{tmp_path}/train_steps/**/*.parquet')").fetchall()[0])
            except duckdb.Error as e:  # a listing from just before a swap (the documented limit)
                errors.append(str(e))
    t = threading.Thread(target=reader)
    t.start()
    res = compact(lake, min_files=2, min_age_s=0)  # 40 partition swaps while the reader loops
    stop.set()
    t.join()
    assert res.compacted_partitions == days
    assert results, "the reader never completed a query"
    assert [r for r in results if r != expected] == []  # never a duplicate, never a gap
    print(f"{len(results)} reads during {days} swaps, {len(errors)} failed with a stale listing")
    assert all("No files found" in e or "No such file" in e or "not found" in e.lower() for e in errors), errors[:3]
    assert snapshot(tmp_path)[:2] == expected


def test_retention_drops_old_step_partitions_only(tmp_path):
    lake = Lake(tmp_path)
    write_blocks(lake, n_blocks=1, day=dt.date(2026, 8, 1))
    write_blocks(lake, n_blocks=1, day=dt.date(2026, 11, 20))
    deleted = apply_retention(lake, {"train_steps": 30}, today=dt.date(2026, 11, 23))
    assert [os.path.basename(p) for p in deleted] == ["date=2026-08-01"]
    assert snapshot(tmp_path)[0] == 100
