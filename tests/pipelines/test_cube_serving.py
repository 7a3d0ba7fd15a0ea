"""Readers of the serving file while builds swap it: no error, never half a cube."""
import threading

from cube_lake import copy_lake, make_lake, write_day
from pipelines.build import build
from warehouse import query
from warehouse.writer import Lake

# One read: the fleet total and the sum of the daily fleet rows come from one snapshot, so they agree
# unless a reader saw half a cube.
CONSISTENT = """
select
    (select n_steps from train_health where agg_level = 'total') as total,
    (select sum(n_steps) from train_health where agg_level = 'date') as by_date,
    (select sum(n) from train_step_time_sketch where agg_level = 'total') as sketched,
    (select build_id from build_info) as build_id
"""


def test_readers_never_fail_while_builds_swap_the_file(tmp_path):
    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    stop = threading.Event()
    errors, reads, builds_seen, inconsistent = [], [0], set(), []

    def reader():
        while not stop.is_set():
            try:
                con = query.connect(lake, serving)  # what `mhw query` and dashboards open
                try:
                    total, by_date, sketched, build_id = con.execute(CONSISTENT).fetchall()[0]
                finally:
                    con.close()
                if total != by_date or sketched is None:
                    inconsistent.append((total, by_date, sketched))
                builds_seen.add(build_id)
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure of a reader is the bug
                errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        lk = Lake(lake)
        for day in range(3, 6):  # incremental builds, each swapping in a patched copy
            write_day(lk, day)
            build(lake, serving)
        build(lake, serving, full=True)  # and a fresh file
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert inconsistent == []
    assert reads[0] >= 10 and len(builds_seen) >= 3, (reads[0], builds_seen)


def test_a_reader_holding_the_old_file_finishes_on_it(tmp_path):
    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    con = query.connect(lake, serving)
    before = con.execute("select n_steps from train_health where agg_level = 'total'").fetchall()
    write_day(Lake(lake), 3)
    build(lake, serving)  # swapped under the open connection
    assert con.execute("select n_steps from train_health where agg_level = 'total'").fetchall() == before
    con.close()
    con = query.connect(lake, serving)
    after = con.execute("select n_steps from train_health where agg_level = 'total'").fetchall()
    con.close()
    assert after[0][0] > before[0][0]


def test_a_failed_build_leaves_the_live_file_and_no_temp_file(tmp_path):
    """Served models are loaded into the next file while later models still run: when one of those
    fails, the half-written file is dropped and readers keep the last good build."""
    import glob
    import shutil
    from pathlib import Path

    import pytest

    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    con = query.connect(lake, serving)
    before = con.execute("select build_id, (select n_steps from train_health where agg_level = 'total') "
                         "from build_info").fetchall()
    con.close()
    sql = tmp_path / "sql"
    shutil.copytree(Path(__file__).resolve().parents[2] / "sql", sql)
    window = sql / "cubes" / "train_health_window.sql"  # runs after served daily models were loaded
    window.write_text(window.read_text().replace("from train_health_daily", "from no_such_table", 1))
    write_day(Lake(lake), 3)
    with pytest.raises(Exception, match="no_such_table"):
        build(lake, serving, sql_dir=str(sql))
    assert glob.glob(f"{serving}.*.tmp") == []
    con = query.connect(lake, serving)
    assert con.execute("select build_id, (select n_steps from train_health where agg_level = 'total') "
                       "from build_info").fetchall() == before
    con.close()


def test_query_cli_reads_the_cubes(tmp_path, capsys):
    from warehouse.cli import main
    lake = copy_lake(make_lake(str(tmp_path / "src")), str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    assert main(["query", "--lake", lake, "--serving", serving, "--format", "csv",
                 "select agg_level, n_steps from train_health where agg_level = 'total'"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("total,")
