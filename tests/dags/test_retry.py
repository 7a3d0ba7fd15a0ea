"""A training task killed mid-run and retried leaves the lake as one uninterrupted run would:
every step once, the run completed, and nobody else's rows touched."""
import os
import signal
import subprocess
import time

import duckdb
import pytest

from pipelines import jobs
from warehouse.query import connect
from warehouse.simulate import simulate

pytestmark = pytest.mark.slow  # a real training, killed and retried

TINY = ["--trainer.ckpt_interval=20", "--trainer.eval_interval=20", "--trainer.batch_size=8",
        "--telemetry.system_interval_s=0.5", "--trainer.log_interval=5"]


def fingerprint(con, where):
    return con.execute(f"select count(*), sum(hash(run_id, step, loss)) from train_steps where {where}").fetchall()[0]


def test_sigkilled_training_retried_has_each_step_once(lake_root, tmp_path):
    simulate(lake_root, 3_000, seed=3, days=2)  # someone else's data, which must not change
    others_before = fingerprint(connect(serving_path=""), "run_id not like 'killtest%'")
    ckpts = str(tmp_path / "ckpt")
    cmd, out_dir = jobs.train_command("configs/gpt2-tiny.yaml", "killtest", steps=60, overrides=TINY,
                                      checkpoints_root=ckpts)
    first = subprocess.Popen(cmd, cwd=jobs.REPO, env={**os.environ, "MHW_LAKE": lake_root},
                             stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not os.path.exists(os.path.join(out_dir, "ckpt-0000040.pt")):
        assert first.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # past a checkpoint, with the steps after it lost
    first.wait()
    assert first.returncode == -signal.SIGKILL

    con = connect(serving_path="")
    partial = con.execute("select count(distinct step), min(step) from train_steps "
                          "where run_id = 'killtest' and step < 40").fetchall()[0]
    assert partial == (40, 0)  # a checkpoint on disk means the rows it covers are in the lake
    # The retry is the same call an Airflow retry makes: same run id, resumes from the checkpoint.
    result = jobs.train("configs/gpt2-tiny.yaml", "killtest", lake_root=lake_root, steps=60, overrides=TINY,
                        checkpoints_root=ckpts)
    assert result["checkpoint"].endswith("ckpt-0000060.pt")

    con = connect(serving_path="")
    steps = con.execute("select count(*), count(distinct step), min(step), max(step) from train_steps "
                        "where run_id = 'killtest'").fetchall()[0]
    assert steps == (60, 60, 0, 59)
    assert con.execute("select count(*), any_value(status), any_value(steps) from runs where run_id = 'killtest'"
                       ).fetchall() == [(1, "completed", 60)]
    evals = con.execute("select count(*), count(distinct (checkpoint_step, suite, metric)) from eval_results "
                        "where run_id = 'killtest' or train_run_id = 'killtest'").fetchall()[0]
    assert evals[0] == evals[1] > 0  # validation rows: none duplicated by the re-run steps
    assert fingerprint(con, "run_id not like 'killtest%'") == others_before
