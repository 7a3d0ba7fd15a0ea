"""Servers this project starts (Airflow, Superset, a Spark standalone cluster in tests) listen on the
loopback interface only, on a port the kernel hands out."""
from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller binds it next)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
