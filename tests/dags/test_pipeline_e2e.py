"""The chain the scheduler runs, for real, through dag.test(): train -> evaluate -> build -> diagnose,
on CPU into a temporary lake; then the catch-up/retry property of evaluate_models."""
import duckdb
import pytest

from pipelines.airflow_local import run_dag_test
from warehouse import audit
from warehouse.query import connect

pytestmark = pytest.mark.airflow_server  # every DAG run end to end, through Airflow


def test_train_evaluate_build_diagnose(lake_root, tmp_path, monkeypatch, airflow_db):
    monkeypatch.setenv("MHW_CHECKPOINTS", str(tmp_path / "checkpoints"))
    serving = tmp_path / "serving.duckdb"  # MHW_SERVING, set by the lake_root fixture

    # A NaN forced at step 25 (kept as data, the run goes on) is what the diagnostics must catch.
    run_dag_test("train_model", {"config": "configs/gpt2-tiny.yaml", "precision": "fp32", "steps": 30,
                             "overrides": ["--trainer.inject_nan_at_step=25"]})
    con = connect(serving_path="")
    (run_id, status, steps), = con.execute("select run_id, status, steps from runs where kind = 'train'").fetchall()
    assert (status, steps) == ("completed", 30)
    assert con.execute("select count(*), count(distinct step), count(*) filter (where isnan(loss)) "
                       "from train_steps").fetchall() == [(30, 30, 1)]

    run_dag_test("evaluate_models")
    con = connect(serving_path="")
    evals = con.execute("select suite, count(*) from eval_results where train_run_id = ? and run_id != ? "
                        "group by suite order by suite", [run_id, run_id]).fetchall()
    assert {s for s, _ in evals} >= {"quality", "robustness", "latency", "errors", "precision"}
    n_eval_rows = sum(n for _, n in evals)

    run_dag_test("build_cubes")
    assert serving.exists()
    con = connect(serving_path=str(serving))
    assert con.execute("select n_steps, n_runs from train_health where agg_level = 'model,hardware' "
                       "and date is null and model = 'gpt2-tiny'").fetchall() == [(30, 1)]
    alerts = con.execute("select rule, severity, run_id, step_start, notified_at is not null from alerts "
                         "where run_id = ?", [run_id]).fetchall()
    assert ("divergence", "critical", run_id, 25, True) in alerts  # diagnosed, then notified
    # and served by the same DAG run (its one build runs after diagnose), for the dashboard's Alerts chart
    assert ("divergence", "critical", 25) in con.execute(
        "select rule, severity, step_start from alert_list where run_id = ?", [run_id]).fetchall()
    # Each task that changed the lake left one audit entry, saying which DAG and task ran it (the
    # training and evaluation subprocesses too: Airflow exports its context to their environment).
    entries = audit.read(lake_root)
    assert sorted({e["command"] for e in entries}) == ["build", "diagnose", "eval", "notify", "train"]
    assert all(e["status"] == "ok" and e["via"].startswith("airflow ") for e in entries), entries
    assert [e["via"].split()[1] for e in entries if e["command"] in ("train", "build")] == \
        ["train_model.train", "build_cubes.build"]

    # Catch-up and retries are safe: a second evaluate_models finds nothing new, adds no row.
    run_dag_test("evaluate_models")
    con = connect(serving_path="")
    assert con.execute("select count(*) from eval_results where train_run_id = ? and run_id != ?",
                       [run_id, run_id]).fetchall() == [(n_eval_rows,)]
