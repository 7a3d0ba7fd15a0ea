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
