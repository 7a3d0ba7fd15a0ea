"""``mhw watch``: run a training command and watch its processes from outside.

    mhw watch -- torchrun --standalone --nproc_per_node=8 -m model.train --config configs/gpt2-124m.yaml
    mhw watch --heartbeat-s 5 --hung-floor-s 120 -- python train.py

Why a separate process: a trainer stopped by SIGSTOP (or a debugger, or a kernel freeze of its
threads) cannot say anything, its own heartbeat thread included, so from the lake a stopped trainer
and a dead one look alike. The watchdog still can: it launches the command with
``$MHW_WATCHDOG_DIR`` set, the trainer's processes (every rank) write their progress there
(warehouse/liveness.py: last step, its time, median step interval, last checkpoint), and every
``heartbeat_s`` the watchdog writes each process's heartbeat to the lake with the state it reads from
``/proc``: ``running``, ``stopped`` (state T), ``exited`` (gone without ending its run: SIGKILL, OOM,
a crash that skipped the trainer's ``finally``), ``ended``. A watchdog that dies with its host stops
writing too: then the heartbeats' silence says lost (``run_lost``).

It also acts, so that a scheduler's task fails instead of hanging forever (pipelines/jobs.py runs
training under it):

- a process alive but with no step for its bound (``max(hung_floor_s, hung_factor x its median step
  interval)``, ``hung_startup_s`` before its first step) is hung: the watchdog kills the whole job
  (every rank and the launcher), its heartbeats say ``killed``, and it exits ``HUNG``;
- a process gone without an ending: the job is lost; the watchdog ends the others (a DDP job cannot go
  on without a rank), and exits ``LOST``.

In both cases the error names the rank, host, pid, last step and last checkpoint (restart from it).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import psutil

from warehouse import config, liveness

log = logging.getLogger("mhw")

LOST, HUNG = 3, 4  # exit statuses of mhw watch when the job was lost or hung (else the command's own)
GRACE_S = 10.0  # a rank gone: how long the launcher (torchrun) has to end the job before the watchdog does


@dataclass(frozen=True)
class Bounds:
    """When a process without a new step is hung: ``max(floor_s, factor x step interval)``, and
    ``startup_s`` before its first step (model building, data loading, compilation)."""
    factor: float = 20.0
    floor_s: float = 300.0
    startup_s: float = 900.0

    @classmethod
    def from_settings(cls, settings, **given) -> "Bounds":
        sec = settings.section("liveness")
        pick = {k: given.get(k) if given.get(k) is not None else sec.get(f"hung_{k}", getattr(cls, k))
                for k in ("factor", "floor_s", "startup_s")}
        return cls(**{k: float(v) for k, v in pick.items()})

    def of(self, snap: dict) -> float:
        if snap.get("last_step") is None:
            return max(self.floor_s, self.startup_s)
        return max(self.floor_s, self.factor * (snap.get("step_interval_s") or 0.0))


def proc_state(snap: dict) -> str:
    """What ``/proc`` says of a snapshot's process: running, stopped or exited (a pid reused by a
    process started after the snapshot's is not it)."""
    try:
        p = psutil.Process(snap["pid"])
        if p.create_time() > snap["started"] + 1.0:
            return "exited"
        status = p.status()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "exited"
    except psutil.AccessDenied:
        return "running"
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return "stopped"
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return "exited"
    return "running"


def describe(snap: dict) -> str:
    ckpt = snap.get("checkpoint_step")
    return (f"rank {snap['rank']} (host {snap['host']}, pid {snap['pid']}) of run {snap['run_id']}: last step "
            f"{snap.get('last_step')}, last checkpoint {'none' if ckpt is None else ckpt}")


class Exits:
    """When each watched process exited, to the millisecond: a thread waits on a pidfd per process
    (Linux 5.3+) and notes each exit as it happens. torchrun ends the other ranks within its own 0.1 s
    monitor interval once one dies, so a tick-by-tick look can see a killed rank and the ones torchrun
    ended in one tick; the exit times tell them apart (the first gone is the one named). Without
    pidfds: the tick's time."""

    def __init__(self):
        self.at: dict[int, float] = {}  # pid -> time.time() its exit was seen
        self._lock = threading.Lock()
        self._new: list[tuple[int, int]] = []  # (pid, pidfd) for the thread to add
        self._watched: set[int] = set()  # pids given a pidfd (the loop asks every tick)
        self._closed = False
        self._exited = threading.Event()
        self._thread = None
        if hasattr(os, "pidfd_open"):
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._run, name="mhw-watch-exits", daemon=True)
            self._thread.start()

    def watch(self, pid: int, started: float) -> None:
        """Watch ``pid``, the process of a snapshot taken at ``started`` (a reused pid is not it)."""
        if self._thread is None or pid in self._watched:
            return
        self._watched.add(pid)
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already, or not ours to watch: its tick will see it
            return
        try:
            if psutil.Process(pid).create_time() > started + 1.0:
                os.close(fd)
                return
        except psutil.Error:
            pass  # gone between the two calls: the pidfd is readable and says so
        with self._lock:
            self._new.append((pid, fd))
        os.write(self._wake_w, b"+")

    def _run(self) -> None:
        poll, fds = select.poll(), {}  # pidfd -> pid
        poll.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _ in poll.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    with self._lock:
                        new, self._new, closed = self._new, [], self._closed
                    for pid, pfd in new:
                        fds[pfd] = pid
                        poll.register(pfd, select.POLLIN)
                    if closed:
                        for pfd in fds:
                            os.close(pfd)
                        return
                    continue
                now = time.time()
                pid = fds.pop(fd)
                poll.unregister(fd)
                os.close(fd)
                with self._lock:
                    self.at[pid] = now
                self._exited.set()

    def wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``; return as soon as a watched process exits."""
        if self._exited.wait(max(0.0, timeout_s)):
            self._exited.clear()

    def close(self) -> None:
        if self._thread is None:
            return
        with self._lock:
            self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)


class Watchdog:
    """Runs ``cmd`` and writes its processes' heartbeats into ``sink`` every ``interval_s``."""

    def __init__(self, cmd: list[str], sink, interval_s: float, bounds: Bounds, kill_hung: bool = True,
                 env: dict | None = None, cwd: str | None = None, say=None):
        self.cmd, self.sink, self.interval_s, self.bounds = cmd, sink, interval_s, bounds
        self.kill_hung, self.env, self.cwd = kill_hung, env, cwd
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.host_key = hashlib.sha1(liveness.host_name().encode()).hexdigest()[:8]
        self.started = liveness.attempt_id()
        self.outcome: str | None = None  # None (the command's own end) | lost | hung
        self.detail = ""
        self.proc: subprocess.Popen | None = None

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="mhw-watch-") as folder:
            env = {**(self.env or os.environ), liveness.WATCHDOG_DIR_ENV: folder,
                   liveness.HEARTBEAT_ENV: repr(self.interval_s)}
            self.proc = subprocess.Popen(self.cmd, env=env, cwd=self.cwd, start_new_session=True)
            exits = Exits()
            try:
                return self._watch(folder, exits)
            finally:
                exits.close()
                if self.proc.poll() is None:  # the watchdog itself interrupted: take the job with it
                    self._kill_job(liveness.read_progress(folder))

    def _watch(self, folder: str, exits: Exits) -> int:
        """Poll the processes' states every ``tick`` (a rank's death is seen within it, before the
        launcher tears the others down: the first gone is the one named), write heartbeats every
        interval and as soon as a process is gone, act on a lost or hung job."""
        proc, tick = self.proc, min(0.1, self.interval_s / 4)
        gone_at: dict[tuple, float] = {}  # (run, rank, attempt) -> when first seen exited
        states: dict[tuple, str] = {}
        next_beat, lost_at = 0.0, None
        while True:
            code = proc.poll()
            snaps = _latest(liveness.read_progress(folder))
            now = time.time()
            changed = False
            for s in snaps:
                k = _key(s)
                state = "ended" if s.get("ended") else proc_state(s)
                if code is not None and state != "ended":
                    state = "exited"  # the launcher is gone; a straggling worker goes with it
                if state == "exited":
                    gone_at.setdefault(k, exits.at.get(s["pid"], now))
                else:
                    exits.watch(s["pid"], s["started"])
                changed |= state == "exited" and states.get(k) != state  # stopped/running may flap (a throttle)
                states[k] = state
            if code is not None:  # the launcher is done: what its processes left says how
                self._beat(snaps, states, gone_at, exit_code=code)
                lost = sorted((s for s in snaps if states[_key(s)] == "exited"), key=lambda s: gone_at[_key(s)])
                if lost and self.outcome is None:
                    self.outcome, self.detail = "lost", "; ".join(describe(s) for s in lost)
                if self.outcome == "lost":
                    self.say(f"mhw watch: run lost: {self.detail}; exit status {code} (restart from the last checkpoint)")
                    return LOST
                return code
            if changed or now >= next_beat:
                self._beat(snaps, states, gone_at)
                if now >= next_beat:  # a fixed cadence (a changed state's beat is one more)
                    next_beat += self.interval_s
                    if next_beat <= now:  # the first beat, or more than an interval behind
                        next_beat = now + self.interval_s
            gone = sorted((s for s in snaps if states[_key(s)] == "exited"), key=lambda s: gone_at[_key(s)])
            if gone and self.outcome is None:
                # a rank died without ending its run: a DDP job cannot go on without it
                self.outcome, lost_at = "lost", now
                self.detail = "; ".join(f"{describe(s)}, gone without an ending" for s in gone)
                self.say(f"mhw watch: {self.detail}")
            if lost_at is not None and now - lost_at > GRACE_S:  # the launcher did not end the job: end it
                self._kill_job(snaps)
                lost_at = None
            hung = [s for s in snaps if states[_key(s)] in ("running", "stopped") and self._overdue(s)]
            if hung and self.kill_hung and self.outcome is None:
                self.outcome = "hung"
                self.detail = "; ".join(
                    f"{describe(s)}, {states[_key(s)]}, no step for {now - _last_at(s):.0f} s "
                    f"(bound {self.bounds.of(s):.0f} s)" for s in hung)
                self.say(f"mhw watch: run hung: {self.detail}; killing the job")
                self._beat(snaps, {_key(s): "killed" if states[_key(s)] != "ended" else "ended" for s in snaps}, gone_at)
                self._kill_job(snaps)
                proc.wait()
                self.say("mhw watch: job killed (restart from the last checkpoint)")
                return HUNG
            exits.wait(tick)

    def _overdue(self, snap: dict) -> bool:
        return time.time() - _last_at(snap) > self.bounds.of(snap)

    def _beat(self, snaps: list[dict], states: dict, gone_at: dict, exit_code: int | None = None) -> None:
        """Write one heartbeat per process (per run, one file per host and watchdog). An exited
        process's heartbeat is stamped when it was first seen gone."""
        by_run = {}
        for s in snaps:
            k = _key(s)
            state = states[k]
            code = exit_code if state == "exited" and s["pid"] == self.proc.pid else None
            row = liveness.heartbeat_row(s, state, "watchdog", ts=gone_at.get(k) if state == "exited" else None,
                                         exit_code=code)
            by_run.setdefault(s["run_id"], []).append(row)
        for run_id, rows in by_run.items():
            try:
                self.sink.put("heartbeats", rows, key=f"{run_id}-hbw-{self.host_key}-{self.started}")
            except Exception as e:  # the job must not die of its watchdog's telemetry
                log.warning("mhw watch: heartbeats of %s not written: %s", run_id, e)

    def _kill_job(self, snaps: list[dict]) -> None:
        """End the launcher and every process of the job: the launcher's tree, and the ranks the
        progress files name (torchrun starts workers in sessions of their own)."""
        procs = []
        for pid in {self.proc.pid, *(s["pid"] for s in snaps if proc_state(s) != "exited")}:
            try:
                p = psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            for sig in (signal.SIGKILL, signal.SIGCONT):  # a stopped process dies of SIGKILL too; CONT is harmless
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    break
        psutil.wait_procs(procs, timeout=10)


def _latest(snaps: list[dict]) -> list[dict]:
    """One snapshot per (run, rank): the latest attempt's."""
    out: dict[tuple, dict] = {}
    for s in snaps:
        k = (s["run_id"], s["rank"])
        if k not in out or s["started"] > out[k]["started"]:
            out[k] = s
    return list(out.values())


def _key(snap: dict) -> tuple:
    return snap["run_id"], snap["rank"], snap["attempt"]


def _last_at(snap: dict) -> float:
    return snap.get("last_step_at") or snap["started"]


def watch(cmd: list[str], lake: str | None = None, *, interval_s: float | None = None, bounds: Bounds | None = None,
          kill_hung: bool = True, env: dict | None = None, cwd: str | None = None,
          settings: config.Settings | None = None, say=None) -> tuple[int, Watchdog]:
    """Run ``cmd`` under a watchdog writing to ``lake`` (default as a run's rows go: $MHW_LAKE,
    the collector, conf/mhw.yaml). Returns (exit status, the watchdog: ``outcome``, ``detail``)."""
    from warehouse.sinks import sink_for

    settings = settings or config.load()
    env = dict(os.environ if env is None else env)
    if lake:
        env["MHW_LAKE"] = lake  # the job's own rows go where its heartbeats go
    sink, _ = sink_for(settings, lake or env.get("MHW_LAKE"), None, None)
    dog = Watchdog(cmd, sink, liveness.interval_s(settings, interval_s), bounds or Bounds.from_settings(settings),
                   kill_hung=kill_hung, env=env, cwd=cwd, say=say)
    try:
        code = dog.run()
    finally:
        sink.close(timeout=30)
    return code, dog


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", help="lake root for the heartbeats (default: as a run's rows go)")
    parser.add_argument("--heartbeat-s", type=float, help="heartbeat interval, s (conf/mhw.yaml liveness.heartbeat_s)")
    parser.add_argument("--hung-factor", type=float, help="hung after this many median step intervals without a step")
    parser.add_argument("--hung-floor-s", type=float, help="... but never before this many seconds")
    parser.add_argument("--hung-startup-s", type=float, help="before the first step: hung after this many seconds")
    parser.add_argument("--no-kill", action="store_true", help="report a hung job, do not kill it")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the training command")


def run(args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("mhw watch: give the command to run after --", file=sys.stderr)
        return 2
    settings = config.load(getattr(args, "config", None))
    bounds = Bounds.from_settings(settings, factor=args.hung_factor, floor_s=args.hung_floor_s,
                                  startup_s=args.hung_startup_s)
    code, _ = watch(cmd, args.lake, interval_s=args.heartbeat_s, bounds=bounds, kill_hung=not args.no_kill,
                    settings=settings)
    return code
