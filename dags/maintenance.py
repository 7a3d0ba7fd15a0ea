"""
### Lake maintenance

Daily: deletes step-level partitions past their retention (`maintenance.retention_days`; cubes are
kept forever), then compacts partitions holding many small files into one file each, swapped in
atomically, and empties what earlier runs moved to the trash.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mhw", "maintenance"],
    doc_md=__doc__,
)
def maintenance():
    @task
    def compact_and_retain() -> dict:
        from dataclasses import asdict

        from pipelines.maintenance import run_maintenance
        from warehouse import config

        s = config.load()
        return asdict(run_maintenance(s.lake_root, s.section("maintenance")))

    compact_and_retain()


dag = maintenance()
