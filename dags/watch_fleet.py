"""
### Watch the fleet: hung and lost runs

On a timer (`orchestration.liveness_schedule`, every 5 minutes by default), not on the lake's Assets: a
hung run writes no steps and a run whose host died writes nothing at all, so nothing would trigger
`build_cubes`. Runs the diagnose (incremental: with nothing new in the lake, only the rules judged by
the clock run: run_hung, run_lost, straggler_host), marks lost runs in `runs`, then notifies new alerts
as `build_cubes` does.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from warehouse import config

SCHEDULE = config.load().section("orchestration").get("liveness_schedule", "*/5 * * * *")


@dag(
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "liveness"],
    doc_md=__doc__,
)
def watch_fleet():
    @task
    def diagnose() -> dict:
        from pipelines import jobs

        return jobs.diagnose()

    @task
    def notify(diagnosed: dict) -> dict:
        from pipelines import jobs

        return jobs.notify(diagnosed)

    notify(diagnose())


dag = watch_fleet()
