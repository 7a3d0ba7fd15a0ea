"""Closed-loop repair end to end, for real through Airflow's dag.test(): faulty CPU trainings through
train_model, build_cubes diagnoses them, repair_runs plans, trains children through the same job,
re-diagnoses and judges them, one attempt per DAG run, until each repair is healed or escalated; then
build_cubes serves the repairs.

- a run blown up by an LR 300x too high (1.0, no warmup, no clipping: the loss leaps to ~100 and
  settles stuck above its healthy peers) is healed by the underfitting policy (the peers' schedule);
- an overfitting run (64 examples memorized for 100 steps; validation is best near step 40) is
  stopped at its best checkpoint: no training;
- a run whose loss goes NaN at the same step whatever the LR (a poisoned batch) is not healed by the
  divergence policy and stops after max_attempts (2 here), escalated;
- a fault whose rule has no policy escalates at once (a test of its own: the policy is removed).
"""
import json
import os

import pytest
import torch

from pipelines import jobs
from pipelines.airflow_local import run_dag_test
from pipelines.diagnose import diagnose
from warehouse.query import connect

pytestmark = pytest.mark.airflow_server  # every DAG run end to end, through Airflow; real trainings

TINY = ["--trainer.batch_size=16", "--trainer.ckpt_interval=20", "--trainer.eval_interval=20",
        "--telemetry.system_interval_s=0", "--trainer.log_interval=20"]
PEERS = [("peer-s1", 1), ("peer-s2", 2)]


def configure(tmp_path, monkeypatch, policies: str) -> None:
    """repair.enabled on (a config file of the test), the policies laid over conf/repair.yaml."""
    conf = tmp_path / "mhw.yaml"
    conf.write_text("repair:\n  enabled: true\n")
    monkeypatch.setenv("MHW_CONFIG", str(conf))
    monkeypatch.setenv("MHW_CHECKPOINTS", str(tmp_path / "checkpoints"))
    over = tmp_path / "repair.yaml"
    over.write_text(policies)
    monkeypatch.setenv("MHW_REPAIR", str(over))


def train(steps: int, *overrides: str) -> None:
    run_dag_test("train_model", {"config": "configs/gpt2-tiny.yaml", "precision": "fp32", "steps": steps,
                                 "overrides": [*TINY, *overrides]})


def train_peer(run_id: str, seed: int) -> None:
    """A healthy run of the same model and data (set-up, not under test: the job without the DAG)."""
    jobs.train("configs/gpt2-tiny.yaml", run_id, steps=60, overrides=[*TINY, f"--trainer.seed={seed}"])


def run_of(con, where: str) -> str:
    (run_id,), = con.execute(f"select run_id from runs where kind = 'train' and parent_run_id is null and {where}").fetchall()
    return run_id


def repairs_of(con, run_id: str) -> list[dict]:
    cur = con.execute("select * from repairs where parent_run_id = ? order by attempt", [run_id])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


@pytest.fixture(scope="module")
def repaired(tmp_path_factory, airflow_db):
    tmp = tmp_path_factory.mktemp("repair")
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("MHW_LAKE", str(tmp / "lake"))
        mp.setenv("MHW_SERVING", str(tmp / "serving.duckdb"))
        configure(tmp, mp, "min_severity: warning\nlimits: {max_attempts: 2}\n")
        for run_id, seed in PEERS:
            train_peer(run_id, seed)
        train(60, "--trainer.seed=3", "--trainer.lr=1.0", "--trainer.warmup_steps=0", "--trainer.grad_clip=0")
        train(100, "--trainer.seed=3", "--data.n_examples=64", "--trainer.ckpt_interval=10",
              "--trainer.eval_interval=10", "--trainer.keep_last=2")
        train(60, "--trainer.seed=4", "--trainer.inject_nan_at_step=30", "--trainer.ckpt_interval=10",
              "--trainer.keep_last=10")
        run_dag_test("build_cubes")  # diagnose: the alerts (the Asset repair_runs is scheduled on)
        dag_runs = 0
        for _ in range(4):  # one attempt per DAG run, as the Asset events would start them
            run = run_dag_test("repair_runs")
            dag_runs += 1
            if all(ti.state == "skipped" for ti in run.get_task_instances() if ti.task_id == "train"):
                break
        run_dag_test("build_cubes")  # serves the repairs
        yield tmp, dag_runs
    finally:
        mp.undo()


def test_a_run_blown_up_by_a_too_high_lr_is_healed_by_its_policy(repaired):
    con = connect(serving_path="")
    parent = run_of(con, "json_extract(config_json, '$.trainer.lr')::double = 1.0")
    rows = repairs_of(con, parent)
    assert [(r["attempt"], r["rule"], r["patch"], r["verdict"]) for r in rows] == \
        [(1, "underfitting", "peers-lr", "healed")]
    (row,) = rows
    changes = json.loads(row["patch_json"])["changes"]
    assert changes["trainer.lr"] == [1.0, 0.003] and changes["trainer.warmup_steps"] == [0, 10]
    child = row["child_run_id"]
    assert con.execute("select parent_run_id, status, steps from runs where run_id = ?", [child]).fetchall() == \
        [(parent, "completed", 60)]
    # judged from the lake: the child's own steps, every loss finite, no underfitting on it
    assert con.execute("select count(*), count(*) filter (where not isfinite(loss)) from train_steps "
                       "where run_id = ?", [child]).fetchall() == [(60, 0)]
    assert con.execute("select count(*) from alerts where run_id = ? and rule = 'underfitting'", [child]).fetchall() == [(0,)]
    assert row["observed"] <= row["expected"] * (1 + row["margin"]) and "healthy peers" in row["reason"]
    parent_end = con.execute("select median(loss) from train_steps where run_id = ? and step >= 54", [parent]).fetchall()[0][0]
    assert row["observed"] < parent_end * 0.9  # the child really ends lower than the parent did
    assert row["compute_s"] > 0 and row["samples"] == 60 * 16 and row["seconds_to_verdict"] > 0
    assert row["notified_at"] is not None and row["owner"].startswith("airflow:repair_runs/")


def test_an_overfitting_run_is_stopped_at_its_best_checkpoint(repaired):
    con = connect(serving_path="")
    parent = run_of(con, "json_extract(config_json, '$.data.n_examples')::int = 64")
    (row,) = repairs_of(con, parent)
    assert (row["rule"], row["action"], row["patch"], row["verdict"]) == ("overfitting", "mark_best", "stop-at-best", "healed")
    assert row["child_run_id"] is None and con.execute(
        "select count(*) from runs where parent_run_id = ? and kind = 'train'", [parent]).fetchall() == [(0,)]
    vals = dict(con.execute("select checkpoint_step, value from eval_results where run_id = ? and suite = 'validation' "
                            "and metric = 'loss'", [parent]).fetchall())
    best = min(vals, key=vals.get)
    assert row["resume_step"] == best < 100 and row["observed"] == pytest.approx(vals[best])
    # keep_last=2 pruned that checkpoint long ago; best.pt kept it, and it is the model of that step
    assert row["checkpoint"].endswith("/best.pt")
    out_dir = os.path.dirname(row["checkpoint"])
    assert not os.path.exists(os.path.join(out_dir, f"ckpt-{best:07d}.pt"))
    assert torch.load(row["checkpoint"], map_location="cpu", weights_only=False)["step"] == best


def test_a_repair_that_cannot_heal_stops_after_max_attempts(repaired):
    con = connect(serving_path="")
    parent = run_of(con, "json_extract(config_json, '$.trainer.inject_nan_at_step')::int = 30")
    rows = repairs_of(con, parent)
    assert [(r["attempt"], r["rule"], r["patch"], r["verdict"]) for r in rows] == \
        [(1, "divergence", "halve-lr-clip", "not_healed"), (2, "divergence", "longer-warmup", "escalated")]
    assert "non-finite" in rows[0]["reason"] and "2 attempt(s) made, the limit" in rows[1]["reason"]
    for r in rows:  # each child forked from the last checkpoint before the NaN, with the LR halved
        assert r["resume_step"] == 20 and json.loads(r["patch_json"])["changes"]["trainer.lr"] == [0.003, 0.0015]
        assert con.execute("select min(step), count(*) from train_steps where run_id = ?",
                           [r["child_run_id"]]).fetchall() == [(20, 40)]
    assert rows[1]["notified_at"] is not None and rows[0]["notified_at"] is None  # final verdicts only


def test_the_loop_ends_and_a_rerun_adds_nothing(repaired):
    _, dag_runs = repaired
    assert dag_runs == 3  # attempt 1 everywhere, attempt 2 of the poisoned run, then nothing to do
    con = connect(serving_path="")
    before = con.execute("select count(*), count(distinct attempt_id) from repairs").fetchall()
    run_dag_test("repair_runs")
    assert connect(serving_path="").execute("select count(*), count(distinct attempt_id) from repairs").fetchall() == before
    assert before[0][0] == before[0][1]


def test_repairs_are_served(repaired):
    tmp, _ = repaired
    con = connect(serving_path=str(tmp / "serving.duckdb"))
    assert con.execute("select count(*) from repair_list").fetchall() == con.execute("select count(*) from repairs").fetchall()
    got = dict(((rule), (n_alerts, n_repairs, n_healed, n_escalated)) for rule, n_alerts, n_repairs, n_healed, n_escalated in
               con.execute("select rule, sum(n_alerts), sum(n_repairs), sum(n_healed), sum(n_escalated) from repair_health "
                           "group by rule").fetchall())
    assert got["underfitting"][1:3] == (1, 1) and got["overfitting"][1:3] == (1, 1)
    assert got["divergence"][1:] == (1, 0, 1) and got["divergence"][0] >= 1


def test_a_fault_with_no_policy_escalates(tmp_path, monkeypatch, lake_root, airflow_db):
    configure(tmp_path, monkeypatch, "policies: {divergence: null}\n")  # critical alerts only (the default)
    jobs.train("configs/gpt2-tiny.yaml", "nopolicy", steps=20, overrides=[*TINY, "--trainer.inject_nan_at_step=10"])
    diagnose(notify_alerts=False)
    run_dag_test("repair_runs")
    con = connect(serving_path="")
    (parent,), = con.execute("select run_id from runs where kind = 'train'").fetchall()
    (row,) = repairs_of(con, parent)
    assert (row["attempt"], row["action"], row["rule"], row["verdict"]) == (0, "escalate", "divergence", "escalated")
    assert row["reason"].startswith("no policy for divergence") and row["child_run_id"] is None
    assert con.execute("select count(*) from runs where kind = 'train'").fetchall() == [(1,)]  # nothing retrained
