"""Real distributed jobs and real faults, for bench/bench_fleet.py and tests/pipelines/test_fleet.py.

A job is this project's trainer under ``torchrun`` (gloo, CPU), under ``mhw watch`` or not. Its
processes are found by a marker in their environment (torchrun starts workers in sessions of their
own, and a worker can outlive its launcher), and every process a job started is killed by that
marker at the end, whatever happened (torch DDP's gloo teardown can deadlock at exit).

Faults come from outside the trainer, as they do on a fleet; nothing in the trainer is told:

- ``CpuLimit``: a rank moved into a cgroup with a CPU quota (CFS bandwidth control, what a container's
  CPU limit is): its compute runs at the quota while its waits cost nothing, as on a slow device. The
  straggler fault of the tests and the bench; it needs a writable cgroup cpu controller (root);
- ``Throttle``: a rank slowed the way ``cpulimit`` does it, by SIGSTOP / SIGCONT at a duty cycle. It
  slows everything the rank does, its waits in the all-reduce too, so its lost time lands in its
  communication wait as often as in its compute (measured in bench/RESULTS.md): a weaker straggler
  signal than a slow device's;
- ``Hogs``: CPU hogs pinned with ``sched_setaffinity`` to a core, the rank pinned there too (a noisy
  neighbour); on a machine other jobs load as well, its effect is smaller and varies;
- SIGSTOP (a hung process: alive, no step) and SIGKILL (a lost one), by ``os.kill``.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from warehouse import liveness  # noqa: E402

MARKER_ENV = "MHW_FLEET_MARKER"
TINY = ["--config", "configs/gpt2-tiny.yaml", "--trainer.device=cpu", "--trainer.batch_size=8",
        "--trainer.eval_interval=0", "--trainer.log_interval=0", "--data.n_examples=800", "--model.block_size=32",
        "--telemetry.system_interval_s=1", "--telemetry.flush_seconds=2"]
FLUSH_S = 2.0  # rows reach the lake within this (plus a write): a second's flushes cost rank 0 enough CPU,
# on two shared cores, to make it the slower rank (measured: 1.6x in 4 of 6 windows of a healthy job)


@dataclass
class Job:
    run_id: str
    proc: subprocess.Popen
    marker: str
    log: Path
    lake: str
    started: float = field(default_factory=time.time)

    def processes(self) -> list[psutil.Process]:
        return marked(self.marker)

    def ranks(self) -> dict[int, psutil.Process]:
        """rank -> the trainer process of that rank (torchrun's workers carry RANK; a single process
        is rank 0). A trainer is a python whose first ``-m`` is model.train (not mhw watch's or
        torchrun's, whose command lines name it later)."""
        out = {}
        for p in self.processes():
            try:
                env, cmd = p.environ(), p.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1] == "model.train":
                out[int(env.get("RANK", 0))] = p
        return out

    def progress(self) -> dict[int, dict]:
        """rank -> its latest progress snapshot (under mhw watch: the watchdog's folder)."""
        out = {}
        for rank, p in self.ranks().items():
            try:
                folder = p.environ().get(liveness.WATCHDOG_DIR_ENV)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for snap in liveness.read_progress(folder) if folder else []:
                if snap["rank"] == rank and snap["pid"] == p.pid:
                    out[rank] = snap
        return out

    def wait_step(self, step: int, timeout: float = 300) -> float:
        """Wait until every rank logged ``step``; returns when that was seen."""
        return self._wait_until(lambda prog: all((s.get("last_step") or -1) >= step for s in prog.values()),
                                f"step {step}", timeout)

    def wait_steps_after(self, t: float, n: int, timeout: float = 300) -> float:
        """Wait until every rank logged ``n`` steps after the first one it marked past time ``t`` (a
        fault's onset: on an idle machine a step takes ~10 ms and the watchdog's snapshots are a
        heartbeat old, so a step number seen before the onset may already be long past)."""
        first: dict[int, int] = {}

        def done(prog: dict) -> bool:
            for rank, s in prog.items():
                if (s.get("last_step_at") or 0) > t:
                    first.setdefault(rank, s["last_step"])
            return set(first) == set(prog) and all(s["last_step"] >= first[r] + n for r, s in prog.items())

        return self._wait_until(done, f"{n} steps after its onset", timeout)

    def _wait_until(self, done, what: str, timeout: float) -> float:
        """Poll the ranks' progress until ``done(progress)``; returns when that was seen."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            prog = self.progress()
            if prog and done(prog):
                return time.time()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.run_id} ended (status {self.proc.returncode}) before {what}: {self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.run_id} did not reach {what} in {timeout:.0f} s: {self.tail()}")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        kill_marked(self.marker)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""


def marked(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(MARKER_ENV) == marker:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def kill_marked(marker: str) -> None:
    procs = marked(marker)
    for p in procs:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                break
    psutil.wait_procs(procs, timeout=10)


def launch(lake: str, run_id: str, workdir: Path, nproc: int = 2, steps: int = 100, watch: bool = True,
           heartbeat_s: float = 1.0, hung_floor_s: float = 20.0, extra: list[str] | None = None,
           env: dict | None = None, host: str | None = None) -> Job:
    """Start one job: ``nproc`` ranks of the tiny GPT under torchrun (a single process when 1), under
    ``mhw watch`` unless ``watch`` is False (then every process beats for itself into the lake)."""
    marker = f"mhw-fleet-{os.getpid()}-{run_id}"
    workdir.mkdir(parents=True, exist_ok=True)
    train = ["-m", "model.train", *TINY, "--lake", lake, "--run-id", run_id, f"--trainer.max_steps={steps}",
             f"--trainer.ckpt_interval={max(10, steps // 4)}", f"--trainer.out_dir={workdir / run_id}",
             f"--telemetry.heartbeat_s={heartbeat_s}", *(extra or [])]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]
    else:
        cmd = [sys.executable, *train]
    if watch:
        cmd = [sys.executable, "-m", "mhw", "watch", "--lake", lake, "--heartbeat-s", str(heartbeat_s),
               "--hung-floor-s", str(hung_floor_s), "--hung-factor", "20", "--hung-startup-s", "120", "--", *cmd]
    full_env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), MARKER_ENV: marker,
                "MHW_LAKE": lake}
    if host:
        full_env[liveness.HOST_ENV] = host
    log = workdir / f"{run_id}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Job(run_id, proc, marker, log, lake)


class CpuLimit:
    """A cgroup with a CPU quota of ``share`` of one core (cgroup v2 ``cpu.max``, else v1's
    ``cpu.cfs_quota_us``), processes moved into it and back out."""

    V2, V1 = "/sys/fs/cgroup", "/sys/fs/cgroup/cpu"

    def __init__(self, name: str, share: float = 0.1, period_us: int = 100_000):
        self.share, self.period_us = share, period_us
        quota = max(1000, int(share * period_us))
        if os.path.exists(f"{self.V2}/cgroup.controllers") and "cpu" in open(f"{self.V2}/cgroup.controllers").read():
            self.root, self.path = self.V2, f"{self.V2}/{name}"
            os.makedirs(self.path, exist_ok=True)
            _write(f"{self.path}/cpu.max", f"{quota} {period_us}")
        else:
            self.root, self.path = self.V1, f"{self.V1}/{name}"
            os.makedirs(self.path, exist_ok=True)
            _write(f"{self.path}/cpu.cfs_period_us", str(period_us))
            _write(f"{self.path}/cpu.cfs_quota_us", str(quota))

    @classmethod
    def available(cls) -> str | None:
        """None if a CPU-limited cgroup can be made here, else why not."""
        try:
            probe = cls(f"mhw-probe-{os.getpid()}")
            probe.remove()
            return None
        except OSError as e:
            return f"no writable cgroup cpu controller ({e.strerror}: {e.filename})"

    def add(self, pid: int) -> None:
        _write(f"{self.path}/cgroup.procs", str(pid))

    def release(self, pid: int) -> None:
        try:
            _write(f"{self.root}/cgroup.procs", str(pid))
        except OSError:  # gone already
            pass

    def remove(self) -> None:
        try:
            for pid in open(f"{self.path}/cgroup.procs").read().split():
                self.release(int(pid))
            os.rmdir(self.path)
        except OSError:
            pass


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class Throttle:
    """Slow a process the way cpulimit does: stopped ``1 - duty`` of every ``period_s``. A period
    well over the scheduler's latency (0.1 s): with shorter stops a process on a busy machine is
    given back, as a waker, most of the CPU it lost (measured: 20 ms periods at 50 % duty took 27 %
    of its CPU share at load 14, 100 ms periods took half)."""

    def __init__(self, pid: int, duty: float = 0.5, period_s: float = 0.1):
        self.pid, self.duty, self.period_s = pid, duty, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Throttle":
        self._thread.start()
        return self

    def _loop(self) -> None:
        run, pause = self.period_s * self.duty, self.period_s * (1 - self.duty)
        try:
            while not self._stop.is_set():
                time.sleep(run)
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(pause)
                os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _spin() -> None:
    while True:
        pass


class Hogs:
    """``n`` busy processes pinned to ``core``, and the process ``pid`` (every thread of it) pinned
    there with them; ``others`` (pids) pinned to the remaining cores. The calling process (the bench,
    whose diagnoses run back to back while the fault lasts) goes onto ``core`` too, so the other ranks'
    core holds them alone: in run 9 (bench/RESULTS.md) rank 0, alone on the other core, worked 9.4 ms a
    step before the diagnoses began, 14-22 ms while they ran and 9.6 ms once they stopped, and was named
    a straggler for the bench's own load."""

    def __init__(self, pid: int, core: int, n: int = 2, others: list[int] = ()):
        self.procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
        self.pid, self.core, self.others = pid, core, list(others)

    def start(self) -> "Hogs":
        for p in self.procs:
            p.start()
            os.sched_setaffinity(p.pid, {self.core})
        pin(self.pid, {self.core})
        pin(os.getpid(), {self.core})
        rest = set(range(os.cpu_count() or 1)) - {self.core} or {self.core}
        for pid in self.others:
            pin(pid, rest)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.join(timeout=5)
        everywhere = set(range(os.cpu_count() or 1))
        for pid in [self.pid, *self.others, os.getpid()]:
            pin(pid, everywhere)


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (sched_setaffinity of a pid moves its main thread only)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:
            pass
