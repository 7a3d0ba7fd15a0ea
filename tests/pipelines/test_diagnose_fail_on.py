"""--fail-on, fail_on in the rules config and orchestration.fail_on in the build_cubes DAG's notify
job fail while an alert at or above the level is open, not only the run that first found it; with
the real CLI on a lake of a real Hugging Face run. The run is imported once with its losses turned
NaN from step 1500 (a divergence, critical), then again from the same file with its own healthy
values, which replace the diverged rows."""
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from pipelines import jobs
from pipelines.alerts import read_alerts
from warehouse.cli import main
from warehouse.writer import Lake

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
HF_STATE = REAL / "hf_trainer_state" / "subro608--Deep_learning_Bert_project2--checkpoint-2400.json"
RUN = "bert-project2-run1"
MTIME = 1_767_268_800  # 2026-01-01T12:00:00Z: the importer stamps rows with the file's mtime

pytestmark = pytest.mark.skipif(not HF_STATE.exists(), reason=f"real HF log not present at {HF_STATE}")


def write_state(path: Path, diverged: bool) -> None:
    state = json.loads(HF_STATE.read_text())
    if diverged:
        for entry in state["log_history"]:
            if "loss" in entry and entry["step"] >= 1500:
                entry["loss"] = math.nan  # HF writes NaN as is (json allows it in Python)
    path.write_text(json.dumps(state))
    os.utime(path, (MTIME, MTIME))


def ingest(lake: str, path: Path) -> None:
    # the same file and --run-id both times: the import key is the file, so its rows are replaced
    assert main(["ingest", "--lake", lake, "--model", "bert-project2", "--hardware", "t4-x1",
                 "--run-id", RUN, str(path)]) == 0


@pytest.fixture
def diverged(tmp_path):
    lake, state = str(tmp_path / "lake"), tmp_path / "trainer_state.json"
    write_state(state, diverged=True)
    ingest(lake, state)
    return lake, state


def diagnose(lake: str, *extra: str) -> int:
    return main(["diagnose", "--lake", lake, "--no-notify", "--quiet", *extra])


def critical(lake: str) -> list[dict]:
    return [a for a in read_alerts(Lake(lake)) if a["severity"] == "critical"]


@pytest.mark.slow  # diagnoses through the CLI, before and after the fix
def test_fail_on_fails_while_the_alert_is_open_and_passes_once_its_cause_is_gone(diverged, capsys):
    lake, state = diverged
    assert diagnose(lake, "--fail-on", "critical") == 1
    (alert,) = critical(lake)
    assert (alert["rule"], alert["run_id"]) == ("divergence", RUN)
    first = capsys.readouterr()
    assert "1 new" in first.out
    assert f"failing: 1 open alert(s) at or above critical: {alert['alert_id']} divergence {RUN}" in first.err

    # nothing changed: the re-run (an Airflow retry) computes nothing and still fails, naming the alert
    assert diagnose(lake, "--fail-on", "critical") == 1
    again = capsys.readouterr()
    assert "0 run(s) and 0 model x hardware pair(s) checked" in again.out and "0 new" in again.out
    assert f"{alert['alert_id']} divergence {RUN}" in again.err
    # a lower level fails too; the default (fail_on: null) never does
    assert diagnose(lake, "--fail-on", "warning") == 1
    assert diagnose(lake) == 0

    # the run re-imported with its real, finite losses: the alert is gone, and so is the failure
    write_state(state, diverged=False)
    ingest(lake, state)
    capsys.readouterr()
    assert diagnose(lake, "--fail-on", "critical") == 0, capsys.readouterr().err
    assert "1 run(s)" in capsys.readouterr().out and critical(lake) == []
    assert diagnose(lake, "--fail-on", "critical") == 0


def test_fail_on_from_the_rules_config(diverged, tmp_path):
    lake, _ = diverged
    conf = tmp_path / "rules.yaml"
    conf.write_text(yaml.safe_dump({"fail_on": "critical"}))
    assert diagnose(lake, "--rules-config", str(conf)) == 1
    assert diagnose(lake, "--rules-config", str(conf)) == 1


@pytest.mark.slow  # the build_cubes DAG's diagnose and notify jobs, run after run
def test_build_cubes_notify_job_fails_while_the_alert_is_open(diverged, tmp_path, monkeypatch):
    """jobs.notify is the build_cubes DAG's notify task: it notifies, then fails on an open alert, in
    the run that found it, in a retry and in the next run over an unchanged lake."""
    lake, state = diverged
    conf = tmp_path / "mhw.yaml"
    conf.write_text(yaml.safe_dump({"lake": {"root": lake}, "orchestration": {"fail_on": "critical"}}))
    monkeypatch.setenv("MHW_CONFIG", str(conf))
    monkeypatch.delenv("MHW_LAKE", raising=False)
    found = jobs.diagnose()
    assert found["new"] == 1
    with pytest.raises(RuntimeError, match=f"1 open alert\\(s\\) at or above critical: .* divergence {RUN}"):
        jobs.notify(found)
    assert all(a["notified_at"] is not None for a in read_alerts(Lake(lake)))  # notified before failing
    with pytest.raises(RuntimeError, match="divergence"):  # the task retried
        jobs.notify(found)
    again = jobs.diagnose()  # the next DAG run: nothing new
    assert again["new"] == 0
    with pytest.raises(RuntimeError, match="divergence"):
        jobs.notify(again)

    write_state(state, diverged=False)
    ingest(lake, state)
    assert jobs.notify(jobs.diagnose()) == {"notified": 0}
