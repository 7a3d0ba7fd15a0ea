"""Airflow for real: api-server, scheduler and dag-processor on 127.0.0.1 with a temporary home;
build_cubes triggered through the REST API runs to success; everything shuts down cleanly."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from pipelines.localhost import free_port
from warehouse.simulate import simulate

pytestmark = pytest.mark.airflow_server


def call(method, url, body=None, token=None, timeout=10):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


def wait_for(what, fn, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = fn()
            if got:
                return got
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def test_build_cubes_triggered_through_the_rest_api(lake_root, tmp_path):
    simulate(lake_root, 20_000, seed=5, days=3)
    home, port = tmp_path / "airflow", free_port()
    base = f"http://127.0.0.1:{port}"
    launcher = [sys.executable, "-m", "pipelines.airflow_local"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # a fresh Airflow, not the session's
    up = subprocess.run([*launcher, "up", "--home", str(home), "--port", str(port)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    pids = json.loads((home / "pids.json").read_text())
    try:
        wait_for("the api-server", lambda: call("GET", f"{base}/api/v2/monitor/health")[0] == 200, 180)
        password = json.loads((home / "passwords.json").read_text())["admin"]
        assert password in up.stdout  # the login is printed once, for the person who started it
        _, tok = call("POST", f"{base}/auth/token", {"username": "admin", "password": password})
        token = tok["access_token"]
        wait_for("build_cubes to be parsed", lambda: call("GET", f"{base}/api/v2/dags/build_cubes", token=token)[0] == 200, 180)
        call("PATCH", f"{base}/api/v2/dags/build_cubes", {"is_paused": False}, token=token)
        _, run = call("POST", f"{base}/api/v2/dags/build_cubes/dagRuns", {"logical_date": None}, token=token)
        run_url = f"{base}/api/v2/dags/build_cubes/dagRuns/{run['dag_run_id']}"

        def finished():
            state = call("GET", run_url, token=token)[1]["state"]
            return state if state in ("success", "failed") else None
        state = wait_for("the DAG run to finish", finished, 420)
        if state != "success":
            logs = "\n".join((home / "logs" / f"{s}.out").read_text()[-2000:] for s in pids)
            pytest.fail(f"build_cubes ended {state}\n{logs}")
        _, tis = call("GET", f"{run_url}/taskInstances", token=token)
        assert {t["task_id"]: t["state"] for t in tis["task_instances"]} == {
            "build": "success", "diagnose": "success", "notify": "success", "summarize": "success"}
        # Every server this test started listens on loopback only.
        procs = [psutil.Process(p) for p in pids.values()]
        procs += [c for p in procs for c in p.children(recursive=True)]
        listening = {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening and all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening
    finally:
        subprocess.run([*launcher, "down", "--home", str(home)], env=env, timeout=120)
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
