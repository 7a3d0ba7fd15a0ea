"""The Airflow Assets of this project, declared once: one per lake table and one for the served cubes.
Producers list them as ``outlets``; ``build_cubes`` is scheduled on them. Logical URIs (``mhw://``)
name the data, not where a deployment keeps it, so DAG parsing never reads config or touches storage."""
from __future__ import annotations

from airflow.sdk import Asset

from warehouse.schemas import TABLES


def _lake(table: str) -> Asset:
    return Asset(name=f"lake.{table}", uri=f"mhw://lake/{table}", group="lake")


LAKE = {name: _lake(name) for name in TABLES}
TRAINING_OUTPUTS = [LAKE["runs"], LAKE["train_steps"], LAKE["eval_results"], LAKE["system_samples"], LAKE["rank_steps"],
                    LAKE["heartbeats"]]
EVAL_OUTPUTS = [LAKE["runs"], LAKE["eval_results"], LAKE["latency_samples"]]
CUBES = Asset(name="serving.cubes", uri="mhw://serving/cubes", group="serving")
