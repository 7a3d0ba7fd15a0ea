"""
### Diagnose, build cubes, notify

Runs whenever a job updates the lake (scheduled on the lake's Assets), in data order: computes the
health diagnostics of what changed (the rules read the lake, not the cubes), then brings the cubes
and the serving file up to date in one incremental build (only the partitions that changed, the
alerts and repairs among them), then notifies about new alerts and logs a short health summary. The
diagnose task updates the `lake.alerts` Asset, which `repair_runs` is scheduled on.

Engine and cluster come from `orchestration.engine` / `orchestration.spark_master` in the config;
with `orchestration.fail_on: critical`, the `notify` task fails while a critical alert is open (after
notifying; a retry or the next run fails again until the alert's cause is gone from the lake).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from pipelines.assets import CUBES, LAKE


@dag(
    schedule=(LAKE["train_steps"] | LAKE["eval_results"] | LAKE["latency_samples"] | LAKE["system_samples"]
              | LAKE["serving_scrapes"] | LAKE["serving_requests"] | LAKE["repairs"]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "cubes"],
    doc_md=__doc__,
)
def build_cubes():
    @task(outlets=[LAKE["alerts"]])  # repair_runs reacts to new alerts
    def diagnose() -> dict:
        from pipelines import jobs

        return jobs.diagnose()

    @task(outlets=[CUBES])
    def build(diagnosed: dict) -> dict:
        from pipelines import jobs

        return {**jobs.build_cubes(), "diagnosed": diagnosed}

    @task
    def notify(built: dict) -> dict:
        from pipelines import jobs

        return jobs.notify(built["diagnosed"])

    @task
    def summarize(notified: dict) -> str:
        from pipelines.summary import health_summary

        text = health_summary()
        print(text)
        return text

    summarize(notify(build(diagnose())))


dag = build_cubes()
