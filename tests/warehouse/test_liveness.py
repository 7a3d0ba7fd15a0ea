"""warehouse/liveness.py: what a process's heartbeat says (progress, median step interval, checkpoint,
its end), where it goes (the lake, merged to one row per process; or the watchdog's folder), and the
interval's precedence."""
import time

import pytest

from warehouse import liveness
from warehouse.query import connect
from warehouse.sinks import LakeSink


def test_progress_marks_steps_once_and_knows_its_median_interval(monkeypatch):
    p = liveness.Progress("r", "m", "hw", rank=3, local_rank=1, world_size=4, interval=2.0, host="node-9")
    clock = iter([100.0, 100.5, 101.0, 103.0, 103.5])
    monkeypatch.setattr(liveness.time, "time", lambda: next(clock))
    for step in (0, 0, 1, 2, 3):  # step 0 twice (the step row and the rank row): one mark
        p.step(step)
    p.checkpoint(2)
    assert p.step_interval() == 0.5  # intervals 0.5, 0.5, 2.0
    row = liveness.heartbeat_row(p.snapshot(), "running", "process", ts=104.0)
    assert (row["rank"], row["local_rank"], row["world_size"], row["host"]) == (3, 1, 4, "node-9")
    assert (row["last_step"], row["checkpoint_step"], row["step_interval_s"], row["interval_s"]) == (3, 2, 0.5, 2.0)
    assert row["last_step_at"].timestamp() == 103.0 and row["ts"].timestamp() == 104.0


def test_before_its_first_step_a_process_counts_from_its_start():
    p = liveness.Progress("r", "m", "hw")
    row = liveness.heartbeat_row(p.snapshot(), "running", "process")
    assert row["last_step"] is None and row["last_step_at"] == row["started_at"]


def test_heartbeats_land_as_one_row_per_process_rewritten_each_beat(tmp_path):
    sink = LakeSink(str(tmp_path / "lake"), flush_seconds=0.1)
    p = liveness.Progress("run-a", "m", "hw", interval=0.1)
    hb = liveness.Heartbeat(p, sink=sink).start()
    for step in range(5):
        p.step(step)
        time.sleep(0.12)
    p.end("completed")
    hb.stop()
    sink.close()
    got = connect(lake_root=str(tmp_path / "lake"), serving_path="").execute(
        "select count(*), any_value(state), any_value(last_step), any_value(source) from heartbeats").fetchall()
    assert got == [(1, "ended", 4, "process")]


def test_under_a_watchdog_progress_goes_to_its_folder_atomically(tmp_path):
    p = liveness.Progress("run-b", "m", "hw", rank=1)
    p.step(7)
    hb = liveness.Heartbeat(p, folder=str(tmp_path))
    hb.beat()
    (snap,) = liveness.read_progress(str(tmp_path))
    assert (snap["run_id"], snap["rank"], snap["last_step"], snap["pid"]) == ("run-b", 1, 7, p.pid)
    assert [f.name for f in tmp_path.iterdir()] == [f"run-b-r1-{p.attempt}.json"]  # no temp file left
    (tmp_path / "half.json").write_text("{")  # a file being written is read next time, not fatal
    assert len(liveness.read_progress(str(tmp_path))) == 1


def test_the_interval_given_then_the_environment_then_the_config(monkeypatch):
    class Settings:
        def section(self, name):
            return {"heartbeat_s": 7} if name == "liveness" else {}

    monkeypatch.delenv(liveness.HEARTBEAT_ENV, raising=False)
    assert liveness.interval_s(Settings()) == 7.0
    monkeypatch.setenv(liveness.HEARTBEAT_ENV, "3")
    assert liveness.interval_s(Settings()) == 3.0
    assert liveness.interval_s(Settings(), given=1.5) == 1.5
    monkeypatch.setenv(liveness.HOST_ENV, "node-42")
    assert liveness.host_name() == "node-42"


@pytest.mark.parametrize("started, pid", [(0.0, 1), (86400.0 * 365, 99999)])
def test_attempt_ids_are_slugs(started, pid):
    from warehouse.keys import check_slug
    assert check_slug("key", f"r-hb-r0-{liveness.attempt_id(started, pid)}")
