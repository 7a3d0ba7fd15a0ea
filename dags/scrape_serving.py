"""
### Scrape the inference servers

Every minute by default (`scrape.schedule`): scrapes the Prometheus `/metrics` of every serving target
in the config (`scrape.targets`: url, hardware, precision, model; vLLM, TGI, Triton or `mhw serve`) and
lands each scrape in the lake's `serving_scrapes`, one mapped task per target. A target that does not
answer lands `up = 0` and its task still succeeds: its counts are in its next successful scrape, so a
missed minute loses nothing, and a retry would only be a new scrape. `build_cubes` runs on the
`serving_scrapes` Asset this updates.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from pipelines.assets import LAKE
from warehouse import config

SCHEDULE = config.load().section("scrape").get("schedule", "* * * * *")


@dag(
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=5),
    tags=["mhw", "serving"],
    doc_md=__doc__,
)
def scrape_serving():
    @task
    def find_targets() -> list[dict]:
        from warehouse.scrape import configured_targets

        targets, timeout_s = configured_targets()
        return [{"timeout_s": timeout_s, **t} for t in targets]

    @task(outlets=[LAKE["serving_scrapes"]], map_index_template="{{ task.op_kwargs['target']['url'] }}")
    def scrape(target: dict) -> dict:
        from warehouse.scrape import scrape_targets

        (result,) = scrape_targets([target])
        print(result)
        return result

    scrape.expand(target=find_targets())


dag = scrape_serving()
