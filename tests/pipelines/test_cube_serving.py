"""Readers of the serving file while builds swap it: no error, never half a cube."""
import threading

import pytest

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


@pytest.mark.slow  # builds racing reader threads
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


@pytest.mark.slow  # builds beside a held reader
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


@pytest.mark.slow  # two builds, the second made to fail
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


def plant_wal(serving: str, sql: str = "update train_health_daily set n_steps = n_steps * 2") -> None:
    """A real WAL for the serving file: the changes ``sql`` makes to a copy of it, never checkpointed,
    moved beside the live file (what a `COPY … TO '<serving>.wal'` from a reader could leave)."""
    import os
    import shutil

    import duckdb

    copy = f"{serving}.copy"
    shutil.copyfile(serving, copy)
    con = duckdb.connect(copy)
    con.execute("set wal_autocheckpoint = '10GB'")
    con.execute("pragma disable_checkpoint_on_shutdown")
    con.execute(sql)
    con.close()
    os.replace(f"{copy}.wal", f"{serving}.wal")
    os.unlink(copy)


def served_steps(lake: str, serving: str) -> int:
    con = query.connect(lake, serving)
    try:
        return con.execute("select sum(n_steps) from train_health_daily").fetchone()[0]
    finally:
        con.close()


@pytest.mark.slow  # several builds
def test_a_planted_wal_is_never_replayed_over_the_served_cubes(tmp_path):
    """Read-only opens replay ``<serving>.wal``: a WAL planted beside the live file changes what every
    reader sees. Every build removes it when it starts (even one with nothing to rebuild) and around its
    swap, so the audit holds again."""
    import os

    from pipelines.audit import audit

    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    truth = served_steps(lake, serving)
    plant_wal(serving)
    assert served_steps(lake, serving) == 2 * truth  # the attack is real: readers see the WAL's numbers
    assert build(lake, serving).serving_mode == "unchanged"
    assert not os.path.exists(f"{serving}.wal")
    assert served_steps(lake, serving) == truth

    planted, lock = [], threading.Lock()

    def plant_mid_build(*_):  # called as each model finishes (models run side by side): after the
        with lock:            # build started, before its swap
            if not planted:
                plant_wal(serving)
                planted.append(True)

    write_day(Lake(lake), 3)
    assert build(lake, serving, log=plant_mid_build).serving_mode == "patched"
    assert planted and not os.path.exists(f"{serving}.wal")
    assert served_steps(lake, serving) > truth
    assert audit(lake, serving) == []


@pytest.mark.slow  # `mhw build` processes, killed mid-write
def test_the_next_build_removes_a_killed_builds_temp_files(tmp_path):
    """`mhw build` SIGKILLed while it writes ``<serving>.<build>.tmp`` leaves that file (and maybe its
    WAL); the next build removes every one of them, and only them."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipelines.audit import audit

    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "serving.duckdb")
    mhw = os.path.join(os.path.dirname(sys.executable), "mhw")
    left = set()
    for _ in range(3):  # killed mid-write each time: its temp file stays, the one before it does not
        p = subprocess.Popen([mhw, "build", "--full", "--quiet", "--lake", lake, "--serving", serving],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            if set(glob.glob(f"{serving}.*.tmp")) - left:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert p.wait(timeout=60) == -signal.SIGKILL, "the build finished before it could be killed"
        now = set(glob.glob(f"{serving}.*.tmp"))
        assert len(now) == 1 and not now & left, (left, now)  # no pile-up: one leftover at most
        left = now
    assert not os.path.exists(serving)
    others = [tmp_path / "other.duckdb.x.tmp", tmp_path / "serving.duckdb.bak", tmp_path / "serving.duckdbx.1.tmp"]
    for f in others:
        f.write_text("not a build's")
    build(lake, serving)
    assert glob.glob(f"{serving}.*.tmp*") == []
    assert all(f.read_text() == "not a build's" for f in others)
    assert audit(lake, serving) == []


@pytest.mark.slow  # several builds
def test_a_serving_path_with_a_quote_is_patched_not_rebuilt(tmp_path):
    """The live build id is read by attaching the serving file: with the path pasted into SQL, a `'` in
    it failed that read silently and every incremental build wrote a fresh file."""
    lake = make_lake(str(tmp_path / "lake"))
    serving = str(tmp_path / "it's serving.duckdb")
    assert build(lake, serving).serving_mode == "fresh"
    write_day(Lake(lake), 3)
    assert build(lake, serving).serving_mode == "patched"
    assert build(lake, serving).serving_mode == "unchanged"
