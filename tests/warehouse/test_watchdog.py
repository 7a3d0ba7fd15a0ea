"""mhw watch (warehouse/watchdog.py) on real processes and real signals: a plain-Python trainer that logs
a step every 50 ms through the client, watched; SIGSTOP -> killed as hung after its bound, SIGKILL -> lost
at once with the signal, a completed or failed run -> its own exit status and an `ended` heartbeat."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from warehouse import liveness, watchdog
from warehouse.query import connect

pytestmark = pytest.mark.slow  # real processes, a few seconds each

TRAINER = """
import sys, time, mhw
with mhw.start_run("toy", run_id=sys.argv[1], system_interval_s=None) as run:
    for step in range(int(sys.argv[2])):
        time.sleep(0.05)
        run.log(step, loss=1.0 / (step + 1))
        if step == 5:
            run.telemetry.checkpointed(5)
    if sys.argv[1] == "fails":
        raise RuntimeError("a bug")
"""


def watch(tmp_path, run_id, steps, act=None, **bounds):
    lake = str(tmp_path / "lake")
    b = watchdog.Bounds(factor=10, floor_s=bounds.get("floor_s", 2.0), startup_s=30)
    said = []
    result = {}

    def go():
        result["code"], result["dog"] = watchdog.watch([sys.executable, "-c", TRAINER, run_id, str(steps)], lake,
                                                       interval_s=0.5, bounds=b, say=said.append)

    t = threading.Thread(target=go)
    t.start()
    if act:
        act(lake, run_id)
    t.join(timeout=120)
    assert not t.is_alive(), "mhw watch did not return"
    beats = connect(lake_root=lake, serving_path="").execute(
        "select state, last_step, checkpoint_step, exit_code, source, host from heartbeats").fetchall()
    return result["code"], result["dog"], beats, said


def trainer_pid(lake, run_id, after_step=10, timeout=60):
    """The trainer's pid once it logged ``after_step`` (from the watchdog's progress folder)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in __import__("psutil").process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if "-c" in cmd and run_id in cmd:
                try:
                    folder = p.environ().get(liveness.WATCHDOG_DIR_ENV)
                except Exception:
                    continue
                snaps = liveness.read_progress(folder) if folder else []
                if any((s["last_step"] or 0) >= after_step for s in snaps):
                    return p.pid
        time.sleep(0.1)
    raise TimeoutError("the trainer did not step")


def test_a_completed_run_ends_with_its_own_status_and_an_ended_heartbeat(tmp_path):
    code, dog, beats, _ = watch(tmp_path, "done", 20)
    assert code == 0 and dog.outcome is None
    assert beats == [("ended", 19, 5, None, "watchdog", liveness.host_name())]


def test_a_run_that_raises_is_failed_not_lost(tmp_path):
    code, dog, beats, _ = watch(tmp_path, "fails", 10)
    assert code == 1 and dog.outcome is None and beats[0][0] == "ended"


def test_sigstop_is_hung_and_the_job_is_killed_after_its_bound(tmp_path):
    stopped = {}

    def stop(lake, run_id):
        pid = trainer_pid(lake, run_id)
        os.kill(pid, signal.SIGSTOP)
        stopped["at"] = time.time()

    t0 = time.time()
    code, dog, beats, said = watch(tmp_path, "stops", 100_000, act=stop, floor_s=2.0)
    assert code == watchdog.HUNG and dog.outcome == "hung"
    assert time.time() - stopped["at"] < 2.0 + 3 * 0.5 + 5  # its bound, a few ticks and the kill
    (state, last, ckpt, _, source, _), = beats
    assert (state, ckpt, source) == ("killed", 5, "watchdog") and last >= 10
    assert "stopped" in dog.detail and "last checkpoint 5" in dog.detail and t0


def test_sigkill_is_lost_at_once_with_its_signal(tmp_path):
    killed = {}

    def kill(lake, run_id):
        pid = trainer_pid(lake, run_id)
        os.kill(pid, signal.SIGKILL)
        killed["at"] = time.time()

    code, dog, beats, said = watch(tmp_path, "killed", 100_000, act=kill)
    assert code == watchdog.LOST and dog.outcome == "lost"
    (state, last, ckpt, exit_code, _, _), = beats
    assert (state, ckpt, exit_code) == ("exited", 5, -signal.SIGKILL)  # the watched command itself: its signal
    assert any("run lost" in s for s in said)


def test_the_command_line_needs_a_command():
    p = subprocess.run([sys.executable, "-m", "mhw", "watch"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "give the command" in p.stderr
