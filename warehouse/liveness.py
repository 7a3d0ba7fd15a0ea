"""Liveness: every process of a run says, on a timer of its own, that it is alive and how far it got
(its last step and when, its median step interval, its last checkpoint), so a run that stops
stepping (hung) or stops existing (lost) is seen, not left ``running`` forever.

The training thread only marks its progress (``Progress.step``: three stores, no I/O, no lock); a
daemon thread (``Heartbeat``) turns the marks into a ``heartbeats`` row every ``interval_s``,
independent of the step loop, so a loop stuck in a collective or a data loader still beats, with an
old ``last_step_at``. Where the row goes:

- into the run's sink (the lake, or a collector), as the latest heartbeat of this process: one row
  per (run, attempt, rank), rewritten every beat (``Lake.merge`` by that key), so the table holds
  one row per process per day, not one per beat;
- or, under a watchdog (``mhw watch``, warehouse/watchdog.py: ``$MHW_WATCHDOG_DIR`` is set), into
  a small local file the watchdog reads. A process stopped by SIGSTOP (or a debugger) stops all its
  threads, its own heartbeats too: only a separate process can still say "alive, stopped" rather
  than "gone", so under the watchdog it is the watchdog that writes the heartbeats.

Without a watchdog a stopped process reads as lost once its heartbeats are overdue; a killed one
reads as lost either way (the watchdog says so at once, with the signal).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import socket
import statistics
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger("mhw")

STATES = ("running", "stopped", "exited", "ended", "killed")
HEARTBEAT_S = 15.0  # default interval (conf/mhw.yaml liveness.heartbeat_s)
WATCHDOG_DIR_ENV = "MHW_WATCHDOG_DIR"  # set by mhw watch for the processes it watches
HEARTBEAT_ENV = "MHW_HEARTBEAT_S"  # the interval, set by mhw watch (or by hand)
HOST_ENV = "MHW_HOST"  # the node's name where the hostname is not it (a container's)


def host_name() -> str:
    """This node's name: ``$MHW_HOST``, else the hostname (a pod's name in Kubernetes: set MHW_HOST
    to the node's, e.g. from the downward API, so that a host slow across jobs is one name)."""
    return (os.environ.get(HOST_ENV) or socket.gethostname() or "unknown")[:256]


def attempt_id(started: float | None = None, pid: int | None = None) -> str:
    """A process's attempt: its start time and pid (a resumed run's new processes are a new attempt)."""
    t = datetime.fromtimestamp(time.time() if started is None else started, timezone.utc)
    return f"{t.strftime('%Y%m%dT%H%M%S')}-{os.getpid() if pid is None else pid}"


def interval_s(settings=None, given: float | None = None) -> float:
    """The heartbeat interval: ``given``, else ``$MHW_HEARTBEAT_S``, else conf/mhw.yaml's
    ``liveness.heartbeat_s``, else 15 s."""
    if given:
        return float(given)
    if os.environ.get(HEARTBEAT_ENV):
        return float(os.environ[HEARTBEAT_ENV])
    if settings is not None:
        return float(settings.section("liveness").get("heartbeat_s", HEARTBEAT_S))
    return HEARTBEAT_S


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc)


class Progress:
    """One process's progress, as its training thread marks it, and the heartbeat row it makes."""

    def __init__(self, run_id: str, model: str, hardware: str, rank: int = 0, local_rank: int = 0,
                 world_size: int = 1, interval: float = HEARTBEAT_S, host: str | None = None):
        self.run_id, self.model, self.hardware = run_id, model, hardware
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.interval_s = interval
        self.host = host or host_name()
        self.pid = os.getpid()
        self.started = time.time()
        self.attempt = attempt_id(self.started)
        self.last_step: int | None = None
        self.last_step_at: float | None = None
        self.checkpoint_step: int | None = None
        self.ended: str | None = None  # the run's end status, once ended
        self._times: collections.deque = collections.deque(maxlen=33)  # recent step times: 32 intervals

    def step(self, step: int) -> None:
        """The training thread's mark: this step is done (a deque append and two stores; a step
        marked again, by the step row and the rank row alike, counts once)."""
        if step == self.last_step:
            return
        t = time.time()
        self.last_step, self.last_step_at = step, t
        self._times.append(t)

    def checkpoint(self, step: int) -> None:
        self.checkpoint_step = step

    def end(self, status: str) -> None:
        self.ended = status

    def step_interval(self) -> float | None:
        """Median seconds between the recent marks (None before the second one)."""
        times = list(self._times)
        if len(times) < 2:
            return None
        return statistics.median(b - a for a, b in zip(times, times[1:]))

    def snapshot(self) -> dict:
        """The marks as plain numbers (what the watchdog's file holds): JSON-able."""
        return {"run_id": self.run_id, "model": self.model, "hardware": self.hardware, "attempt": self.attempt,
                "rank": self.rank, "local_rank": self.local_rank, "world_size": self.world_size,
                "host": self.host, "pid": self.pid, "started": self.started, "interval_s": self.interval_s,
                "last_step": self.last_step, "last_step_at": self.last_step_at,
                "step_interval_s": self.step_interval(), "checkpoint_step": self.checkpoint_step,
                "ended": self.ended, "written": time.time()}


def heartbeat_row(snap: dict, state: str, source: str, ts: float | None = None, exit_code: int | None = None) -> dict:
    """A ``heartbeats`` row from a progress snapshot (``Progress.snapshot``, or the watchdog's read of
    its file) in ``state``."""
    return {"run_id": snap["run_id"], "model": snap["model"], "hardware": snap["hardware"],
            "attempt": snap["attempt"], "rank": snap["rank"], "local_rank": snap["local_rank"],
            "world_size": snap["world_size"], "host": snap["host"], "pid": snap["pid"],
            "started_at": _ts(snap["started"]), "ts": _ts(time.time() if ts is None else ts), "interval_s": snap["interval_s"], "state": state,
            "last_step": snap["last_step"], "last_step_at": _ts(snap["last_step_at"] or snap["started"]),
            "step_interval_s": snap["step_interval_s"], "checkpoint_step": snap["checkpoint_step"],
            "exit_code": exit_code, "source": source}


def progress_file(folder: str, snap: dict) -> str:
    return os.path.join(folder, f"{snap['run_id']}-r{snap['rank']}-{snap['attempt']}.json")


def write_progress(folder: str, snap: dict) -> None:
    """The snapshot into the watchdog's folder, atomically (a reader never sees half a file)."""
    path = progress_file(folder, snap)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(snap, f)
    os.replace(tmp, path)


def read_progress(folder: str) -> list[dict]:
    """Every snapshot in the watchdog's folder (a file being replaced is read next time)."""
    out = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


class Heartbeat:
    """Every ``progress.interval_s``, on a daemon thread: the process's heartbeat, into the sink
    (``sink.put``, merged by (run, attempt, rank)) or, under a watchdog, into its folder."""

    def __init__(self, progress: Progress, sink=None, folder: str | None = None):
        self.progress, self.sink, self.folder = progress, sink, folder
        p = progress
        self.key = f"{p.run_id}-hb-r{p.rank}-{p.attempt}"  # this process's heartbeat file in the lake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mhw-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        snap = self.progress.snapshot()
        try:
            if self.folder is not None:
                write_progress(self.folder, snap)
            elif self.sink is not None:
                state = "ended" if snap["ended"] else "running"
                self.sink.put("heartbeats", [heartbeat_row(snap, state, "process")], key=self.key)
        except Exception as e:  # telemetry must never take the training run down
            log.warning("mhw: heartbeat of run %s rank %s not written: %s", snap["run_id"], snap["rank"], e)

    def _loop(self) -> None:
        # a fixed cadence: the n-th beat leaves at start + n intervals, not an interval after the last
        # beat() returned (a slow beat, e.g. the watchdog folder's file write, delays its own beat, not
        # every later one; run_lost's bound counts whole intervals from the latest beat)
        every = self.progress.interval_s
        due = time.monotonic() + every
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.beat()
            due = max(due + every, time.monotonic())  # more than an interval behind: beat at once, then on

    def stop(self) -> None:
        """Stop beating, after a last beat (``ended`` if the run was ended)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.beat()
