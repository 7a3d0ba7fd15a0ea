"""
### Repair flagged training runs

Runs whenever diagnose updates the alerts (the `lake.alerts` Asset of `build_cubes`' diagnose task,
and of this DAG's own judge task), when `repair.enabled` is true in `conf/mhw.yaml` (off by default:
automatic retraining is opt-in). For each training run with a new alert at or above the policies'
`min_severity` (`conf/repair.yaml`), or a repair in progress, one attempt per DAG run:

- `plan`: the runs with repair work to do (parents still running wait);
- `train` (one mapped task per run, `gpu` pool): claims the run's next attempt under its lock and
  trains the child through the job `train_model` runs (`parent_run_id`, the alert and the patch in the
  `repairs` table); a retry resumes the same child;
- `judge`: the diagnostics re-run on the child, then the verdict: healed, not healed (the next
  attempt runs in the next DAG run, which this task's Asset event starts), escalated or advised;
- `notify`: the final verdicts, through the diagnostics' notifiers.

Imported runs (HF, MLPerf, ...) get the plan and the advice, never a restart. `mhw repair` does the same by hand.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from pipelines.assets import LAKE, TRAINING_OUTPUTS


@dag(
    schedule=LAKE["alerts"],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "repair"],
    doc_md=__doc__,
)
def repair_runs():
    @task.short_circuit
    def enabled() -> bool:
        from pipelines import repair

        return repair.enabled()

    @task
    def plan() -> list[dict]:
        from pipelines import repair

        return repair.pending()

    @task(pool="gpu", outlets=[*TRAINING_OUTPUTS, LAKE["repairs"]], retries=2, retry_delay=pendulum.duration(seconds=30))
    def train(work: dict, **context) -> dict:
        from pipelines import repair

        owner = f"airflow:{context['dag'].dag_id}/{context['run_id']}/{context['ti'].map_index}"
        rows = repair.repairer(owner=owner).advance(work["run_id"], work["alert_id"], until="trained")
        return {**work, "steps": [{"attempt": r["attempt"], "verdict": r["verdict"]} for r in rows]}

    @task(outlets=[LAKE["alerts"], LAKE["repairs"]], retries=2, retry_delay=pendulum.duration(seconds=30))
    def judge(work: dict, **context) -> dict:
        from pipelines import repair

        owner = f"airflow:{context['dag'].dag_id}/{context['run_id']}/{context['ti'].map_index}"
        rows = repair.repairer(owner=owner).advance(work["run_id"], work["alert_id"], until="judged")
        return {**work, "steps": work["steps"] + [{"attempt": r["attempt"], "verdict": r["verdict"]} for r in rows]}

    @task
    def notify(judged: list[dict]) -> dict:
        from pipelines import repair

        return {**repair.notify_verdicts(), "runs": len(judged)}

    work = plan()
    enabled() >> work
    notify(judge.expand(work=train.expand(work=work)))


dag = repair_runs()
