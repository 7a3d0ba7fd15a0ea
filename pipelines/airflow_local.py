"""Airflow on one machine, with this repo's ``dags/``: a home under ``.mhw/airflow`` (or any folder),
SQLite metadata, LocalExecutor, every server on 127.0.0.1.

    python -m pipelines.airflow_local test build_cubes [--conf '{...}']  # one DAG run via dag.test()
    python -m pipelines.airflow_local up      # api-server, scheduler, dag-processor; prints the login
    python -m pipelines.airflow_local down

``up`` starts the three processes separately rather than ``airflow standalone``, whose log server
binds 0.0.0.0; the scheduler runs with ``--skip-serve-logs`` (LocalExecutor logs are local files).

The home is private: the folder 0700, ``airflow.db``, ``airflow.cfg`` and ``passwords.json`` 0600
(Airflow runs under umask 077), and the settings of ``environment()`` are written into the
``airflow.cfg`` Airflow generates (whose defaults say ``host = 0.0.0.0``), so an ``airflow`` command
run with only ``AIRFLOW_HOME`` set binds 127.0.0.1 too. (The worker log server's bind address is not
a setting in Airflow 3: it is never started here.)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from warehouse import config

DAGS = config.REPO_ROOT / "dags"
DEFAULT_HOME = config.REPO_ROOT / ".mhw" / "airflow"
SERVICES = ("api-server", "scheduler", "dag-processor")


def environment(home: str | os.PathLike, port: int = 8080) -> dict[str, str]:
    home = str(home)
    bin_dir = str(Path(sys.executable).parent)
    return {
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",  # two cores
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": f"{home}/passwords.json",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # off or not used here, but pinned to loopback so nothing in the home says 0.0.0.0
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__CELERY__FLOWER_HOST": "127.0.0.1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # Airflow re-invokes `airflow`
    }


def prepare(home: str | os.PathLike = DEFAULT_HOME, port: int = 8080) -> dict[str, str]:
    """Point this process at ``home`` (set the variables before anything imports airflow), create
    the metadata database once, and the `gpu` pool. Returns the environment for subprocesses."""
    env = environment(home, port)
    os.environ.update(env)
    Path(home).mkdir(parents=True, exist_ok=True)
    Path(home).chmod(0o700)  # the database holds the API's users and the cfg its secret keys
    pw = Path(home) / "passwords.json"
    if not pw.exists():  # generated here, never committed; Airflow reads it for the admin login
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"admin": os.environ.get("MHW_AIRFLOW_PASSWORD") or secrets.token_urlsafe(12)}))
    marker = Path(home) / ".migrated"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, env={**os.environ, **env},
                       stdout=subprocess.DEVNULL, umask=0o077)
        marker.touch()
    write_config(Path(home) / "airflow.cfg", env)
    for name in ("airflow.db", "airflow.cfg", "passwords.json"):  # made before umask 077, or by an older version
        if (Path(home) / name).exists():
            (Path(home) / name).chmod(0o600)
    from airflow.models.pool import Pool

    slots = int(config.load().section("orchestration").get("gpu_slots", 1))
    Pool.create_or_update_pool("gpu", slots, "accelerators of a worker (orchestration.gpu_slots)",
                               include_deferred=False)
    return env


def write_config(path: Path, env: dict[str, str]) -> None:
    """Write the ``AIRFLOW__<SECTION>__<KEY>`` settings of ``env`` into the airflow.cfg at ``path``,
    in place: a key's line is replaced, or added below its commented default (or at the end of its
    section); Airflow's comments stay. Its generated defaults would otherwise bind 0.0.0.0 for any
    command run without this environment."""
    settings: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        m = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
        if m:  # '%' is interpolation in airflow.cfg
            settings.setdefault(m[1].lower(), {})[m[2].lower()] = value.replace("%", "%%")
    lines = path.read_text().splitlines() if path.exists() else []
    out, section, done = [], None, set()

    def close(section):  # keys of the section not found in it: at its end
        for key, value in settings.get(section, {}).items():
            if (section, key) not in done:
                out.append(f"{key} = {value}")
                done.add((section, key))

    replaced = False  # the line before was a live line of a key written here: drop its continuation lines
    for line in lines:
        if replaced and line[:1] in (" ", "\t") and line.strip():
            continue
        replaced = False
        head = re.match(r"\[([^\]]+)\]\s*$", line)
        if head:
            close(section)
            section = head[1].strip()
            out.append(line)
            continue
        item = re.match(r"(#\s*)?([A-Za-z0-9_]+)\s*=", line)
        key = item[2].lower() if item else None
        if key not in settings.get(section, {}):
            out.append(line)
            continue
        if item[1]:
            out.append(line)  # the commented default stays, as documentation
        else:
            replaced = True  # a live line: replaced (a second one dropped)
        if (section, key) not in done:
            out.append(f"{key} = {settings[section][key]}")
            done.add((section, key))
    close(section)
    for section in settings:
        if any((section, k) not in done for k in settings[section]):
            out += ["", f"[{section}]"]
            close(section)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)


def load_dag(dag_id: str):
    """The DAG object defined in ``dags/<dag_id>.py``."""
    spec = importlib.util.spec_from_file_location(f"mhw_dag_{dag_id}", DAGS / f"{dag_id}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dag


def run_dag_test(dag_id: str, conf: dict | None = None):
    """Run one DAG in this process, task by task, as ``airflow dags test`` does; returns the DagRun."""
    run = load_dag(dag_id).test(run_conf=conf or None)
    if run.state != "success":
        raise RuntimeError(f"DAG {dag_id} ended {run.state}")
    return run


def up(home: str | os.PathLike = DEFAULT_HOME, port: int = 8080) -> dict:
    env = prepare(home, port)
    logs = Path(home) / "logs"
    logs.mkdir(exist_ok=True)
    pids = {}
    for service in SERVICES:
        args = [service] + (["--skip-serve-logs"] if service == "scheduler" else [])
        with open(logs / f"{service}.out", "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "airflow", *args], env={**os.environ, **env},
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
        pids[service] = p.pid
    (Path(home) / "pids.json").write_text(json.dumps(pids))
    return pids


def down(home: str | os.PathLike = DEFAULT_HOME, timeout: float = 30) -> None:
    f = Path(home) / "pids.json"
    if not f.exists():
        return
    pids = json.loads(f.read_text())
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids.values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    f.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def admin_password(home: str | os.PathLike = DEFAULT_HOME) -> str:
    return json.loads((Path(home) / "passwords.json").read_text())["admin"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["test", "up", "down"])
    ap.add_argument("dag_id", nargs="?")
    ap.add_argument("--conf", type=json.loads, default=None, help="DAG run conf (JSON)")
    ap.add_argument("--home", default=str(DEFAULT_HOME))
    ap.add_argument("--port", type=int, default=8080)
    a = ap.parse_args(argv)
    if a.action == "test":
        prepare(a.home, a.port)
        run_dag_test(a.dag_id, a.conf)
    elif a.action == "up":
        pids = up(a.home, a.port)
        print(f"Airflow on http://127.0.0.1:{a.port}  user: admin  password: {admin_password(a.home)}")
        print(f"processes: {pids}; logs in {a.home}/logs; stop with: python -m pipelines.airflow_local down")
    else:
        down(a.home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
