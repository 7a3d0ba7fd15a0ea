"""
### Evaluate new checkpoints

On a schedule (`orchestration.eval_schedule`, hourly by default): finds checkpoints that no
evaluation in the lake names yet and runs the eval suites on each (quality, robustness, latency,
errors, precision variants). Catch-up and retries are safe: evaluating a checkpoint again replaces
its rows, and a checkpoint already evaluated is not found again.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from pipelines.assets import EVAL_OUTPUTS
from warehouse import config

SCHEDULE = config.load().section("orchestration").get("eval_schedule", "@hourly")


@dag(
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "evaluation"],
    doc_md=__doc__,
)
def evaluate_models():
    @task
    def find_unevaluated() -> list[str]:
        from pipelines import jobs

        return jobs.unevaluated()

    @task(pool="gpu", outlets=EVAL_OUTPUTS, retries=2, retry_delay=pendulum.duration(seconds=30))
    def evaluate(checkpoint: str) -> dict:
        from pipelines import jobs

        return jobs.evaluate(checkpoint)

    evaluate.expand(checkpoint=find_unevaluated())


dag = evaluate_models()
