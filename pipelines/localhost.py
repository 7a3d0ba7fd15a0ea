"""Servers this project starts (Airflow, Superset, a Spark standalone cluster in tests) listen on the
loopback interface only, on a port the kernel hands out."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it next)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200. RuntimeError when ``proc`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet, or not ready (HTTPError is an OSError too)
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} in {timeout_s:.0f} s")
        time.sleep(1)


def stop_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it forked (its own group)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
