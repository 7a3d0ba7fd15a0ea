"""warehouse/telemetry.py: the rank that writes, the columns a metric fills, and a disabled
Telemetry (another rank) that costs nothing and writes nothing."""
import pytest

from warehouse.schemas import TRAIN_STEPS
from warehouse.telemetry import STEP_COLUMNS, Telemetry, process_rank


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "2"}, 2), ({"LOCAL_RANK": "1"}, 1),
                                       ({"RANK": "0", "LOCAL_RANK": "3"}, 0), ({"RANK": "x"}, 0)])
def test_the_rank_comes_from_the_launchers_environment(monkeypatch, env, rank):
    for k in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert process_rank() == rank


def test_step_columns_are_train_steps_measurements():
    assert STEP_COLUMNS == {c.name for c in TRAIN_STEPS.columns} - {
        "run_id", "step", "ts", "precision", "model", "hardware", "date"}
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "epoch"} <= STEP_COLUMNS


def test_a_disabled_telemetry_writes_nothing(tmp_path):
    t = Telemetry(str(tmp_path / "lake"), "r", "m", "h", enabled=False)
    t.write_run(status="running")
    t.step(0, loss=1.0, other="x")
    t.evaluation(0, "validation", {"loss": 1.0})
    t.flush(wait=True)
    t.close()
    assert not (tmp_path / "lake").exists() and t.sampler is None
