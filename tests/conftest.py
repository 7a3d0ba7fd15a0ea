import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# py4j logs "Closing down clientserver connection" from a finalizer at interpreter exit, after pytest
# has closed the captured streams: a "--- Logging error ---" traceback after the summary, not a failure.
logging.getLogger("py4j").setLevel(logging.WARNING)

# Airflow reads its home when first imported: point it at a throwaway home for the whole session,
# before any test module imports airflow (tests/dags/ migrates its database once).
if "AIRFLOW_HOME" not in os.environ or not os.environ["AIRFLOW_HOME"].startswith(tempfile.gettempdir()):
    from pipelines.airflow_local import environment

    os.environ.update(environment(tempfile.mkdtemp(prefix="mhw-airflow-")))


@pytest.fixture
def lake_root(tmp_path, monkeypatch):
    """A fresh lake for one test; MHW_LAKE/MHW_SERVING point at it so CLI calls use it too."""
    root = tmp_path / "lake"
    monkeypatch.setenv("MHW_LAKE", str(root))
    monkeypatch.setenv("MHW_SERVING", str(tmp_path / "serving.duckdb"))
    return str(root)


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory):
    """A tiny GPT-2 checkpoint of a real (3-step) mhw train run: what mhw serve serves in the tests."""
    from model import train

    tmp = tmp_path_factory.mktemp("serve-ckpt")
    out = train.train(train.build_config("configs/gpt2-tiny.yaml", {
        "trainer.eval_interval": 0, "trainer.log_interval": 0, "telemetry.system_interval_s": 0,
        "telemetry.lake": str(tmp / "lake"), "trainer.out_dir": str(tmp / "out" / "{run_id}"),
        "trainer.max_steps": 3, "trainer.batch_size": 4, "model.block_size": 32, "data.n_examples": 200}))
    return out["checkpoint"]


class CollectorProcess:
    """A real ``mhw collect`` process on 127.0.0.1 writing into ``lake``, started (and restarted on
    the same port) and stopped (SIGTERM) or killed (SIGKILL) by the test."""

    def __init__(self, lake: str, token: str, env: dict | None = None):
        self.lake, self.token, self.port, self.proc = lake, token, 0, None
        self.env = {**os.environ, **(env or {}), "MHW_COLLECTOR_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        self.env.pop("MHW_COLLECTOR", None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CollectorProcess":
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mhw", "collect", "--address", f"127.0.0.1:{self.port}", "--lake", self.lake],
            env=self.env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.banner = self.proc.stdout.readline()  # "mhw collect: listening on http://127.0.0.1:PORT, ..."
        if "listening on http://127.0.0.1:" not in line:
            self.proc.kill()
            raise RuntimeError(f"mhw collect did not start: {line}{self.proc.stdout.read()}")
        self.port = int(line.split("http://127.0.0.1:")[1].split(",")[0])
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> str:
        """SIGTERM, then what the collector printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.fixture
def collector(lake_root):
    """A real ``mhw collect`` on a free port of 127.0.0.1, writing into the test's lake."""
    import secrets

    c = CollectorProcess(lake_root, secrets.token_urlsafe(16)).start()
    yield c
    if c.proc.poll() is None:
        c.stop()
