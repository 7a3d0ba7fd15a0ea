"""
### Train a model

Triggered with params (no schedule): trains one model config at one precision and lands its
telemetry in the lake (`runs`, `train_steps`, `eval_results`, `system_samples`).

- Training runs as a subprocess (`torchrun` when `nproc` > 1), so the worker never imports torch.
- The task takes a slot of the `gpu` pool, sized to a worker's GPUs (`orchestration.gpu_slots`).
- A retry resumes the same run from its latest checkpoint: the lake keeps one row per step.

Trigger: `airflow dags trigger train_model --conf '{"config": "configs/gpt2-tiny.yaml", "precision": "bf16"}'`
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from pipelines.assets import TRAINING_OUTPUTS


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["mhw", "training"],
    params={
        "config": Param("configs/gpt2-tiny.yaml", type="string", description="model config (YAML)"),
        "precision": Param("fp32", enum=["fp32", "bf16", "fp16"]),
        "steps": Param(None, type=["null", "integer"], minimum=1, description="override trainer.max_steps"),
        "hardware": Param(None, type=["null", "string"], description="hardware label; null = fingerprint"),
        "nproc": Param(1, type="integer", minimum=1, description="processes (GPUs) for torchrun"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="extra config overrides, e.g. --trainer.lr=1e-4"),
    },
    doc_md=__doc__,
)
def train_model():
    @task(pool="gpu", outlets=TRAINING_OUTPUTS, retries=2, retry_delay=pendulum.duration(seconds=30))
    def train(**context) -> dict:
        from pipelines import jobs

        p = context["params"]
        run_id = jobs.train_run_id(p["config"], p["precision"], context["run_id"])
        return jobs.train(p["config"], run_id, precision=p["precision"], steps=p["steps"],
                          hardware=p["hardware"], nproc=p["nproc"], overrides=list(p["overrides"]))

    train()


dag = train_model()
