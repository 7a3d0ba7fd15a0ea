"""The helpers the demo and the Superset tests use to start a server on 127.0.0.1 and stop it."""
import subprocess
import sys

import pytest

from pipelines.localhost import HOST, free_port, stop_group, wait_until_up


def test_a_server_is_waited_for_then_stopped_with_its_group():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", HOST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(f"http://{HOST}:{port}/", proc, 60, "http.server")
    finally:
        stop_group(proc, timeout_s=10)
    assert proc.returncode is not None


def test_a_server_that_exits_is_reported_not_waited_for():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    proc.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until_up(f"http://{HOST}:{free_port()}/", proc, 60, "the server")
