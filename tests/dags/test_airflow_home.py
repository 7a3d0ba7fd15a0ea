"""The Airflow home prepare() writes is private and says 127.0.0.1 in its own airflow.cfg, not only
in the environment airflow_local passes: an `airflow` command run with just AIRFLOW_HOME binds
loopback too, and no file in the home is readable by other users."""
import configparser
import os
import stat
import subprocess
import sys

import pytest

from pipelines.airflow_local import write_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # not the session's Airflow


def _prepare(home) -> None:
    subprocess.run([sys.executable, "-c", f"from pipelines.airflow_local import prepare; prepare({str(home)!r}, 8123)"],
                   cwd=REPO, env=_fresh_env(), check=True, capture_output=True, timeout=300)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cfg(home) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)  # strict: a key written twice fails
    cp.read(home / "airflow.cfg")
    return cp


@pytest.mark.slow  # an Airflow metadata DB migrated from scratch, twice, each in its own process
def test_prepare_writes_a_private_home_bound_to_loopback(tmp_path):
    home = tmp_path / "airflow"
    _prepare(home)
    text = (home / "airflow.cfg").read_text()
    assert "0.0.0.0" not in text
    cfg = _cfg(home)
    assert (cfg["api"]["host"], cfg["api"]["port"], cfg["api"]["base_url"]) == ("127.0.0.1", "8123",
                                                                                "http://127.0.0.1:8123")
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:8123/execution/"
    assert cfg["scheduler"]["scheduler_health_check_server_host"] == "127.0.0.1"
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db"
    assert "fernet_key" in cfg["core"] and "# Example: base_url" in text  # Airflow's own settings and comments stay
    assert _mode(home) == 0o700
    for name in ("airflow.db", "airflow.cfg", "passwords.json"):
        assert _mode(home / name) == 0o600, name

    # The file alone is enough: Airflow reads 127.0.0.1 with nothing but AIRFLOW_HOME set.
    env = {"AIRFLOW_HOME": str(home), "HOME": os.environ.get("HOME", str(tmp_path)), "PATH": os.environ["PATH"]}
    got = subprocess.run([sys.executable, "-m", "airflow", "config", "get-value", "api", "host"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "127.0.0.1", got.stderr[-2000:]

    # A home made before (or loosened since) is made private again; the settings are written once.
    os.chmod(home, 0o755)
    os.chmod(home / "airflow.db", 0o644)
    _prepare(home)
    assert _mode(home) == 0o700 and _mode(home / "airflow.db") == 0o600
    assert (home / "airflow.cfg").read_text() == text


def test_write_config_replaces_keys_in_place_and_keeps_comments(tmp_path):
    path = tmp_path / "airflow.cfg"
    path.write_text("[core]\n# the executor\nexecutor = SequentialExecutor\n  continued\nparallelism = 32\n\n"
                    "[api]\n# base_url = \nhost = 0.0.0.0\nport = 8080\n")
    write_config(path, {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__API__HOST": "127.0.0.1",
                        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080", "AIRFLOW__LOGGING__FMT": "%(x)s",
                        "PATH": "/bin"})
    assert path.read_text() == ("[core]\n# the executor\nexecutor = LocalExecutor\nparallelism = 32\n\n"
                                "[api]\n# base_url = \nbase_url = http://127.0.0.1:8080\nhost = 127.0.0.1\nport = 8080\n"
                                "\n[logging]\nfmt = %%(x)s\n")
    assert _mode(path) == 0o600
