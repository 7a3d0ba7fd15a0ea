"""
### Build cubes, diagnose, notify

Runs whenever a job updates the lake (scheduled on the lake's Assets): brings the cubes and the
serving file up to date (incrementally: only the partitions that changed), computes the health
diagnostics (their rules read the cubes), then, side by side, notifies about new alerts and serves
them (a second incremental build: only the alert cubes changed), and logs a short health summary.

Engine and cluster come from `orchestration.engine` / `orchestration.spark_master` in the config;
with `orchestration.fail_on: critical`, the `notify` task fails while a critical alert is open (after
notifying; a retry or the next run fails again until the alert's cause is gone from the lake).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from pipelines.assets import CUBES, LAKE


@dag(
    schedule=(LAKE["train_steps"] | LAKE["eval_results"] | LAKE["latency_samples"] | LAKE["system_samples"]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "cubes"],
    doc_md=__doc__,
)
def build_cubes():
    @task(outlets=[CUBES])
    def build() -> dict:
        from pipelines import jobs

        return jobs.build_cubes()

    @task
    def diagnose(built: dict) -> dict:
        from pipelines import jobs

        return jobs.diagnose()

    @task
    def notify(diagnosed: dict) -> dict:
        from pipelines import jobs

        return jobs.notify(diagnosed)

    @task(outlets=[CUBES])
    def serve_alerts(diagnosed: dict) -> dict:
        from pipelines import jobs

        return jobs.build_cubes()

    @task
    def summarize(notified: dict, served: dict) -> str:
        from pipelines.summary import health_summary

        text = health_summary()
        print(text)
        return text

    diagnosed = diagnose(build())
    summarize(notify(diagnosed), serve_alerts(diagnosed))


dag = build_cubes()
