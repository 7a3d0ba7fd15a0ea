"""The main job, end to end on the embedded defaults, for real through Airflow (``dag.test()``: no
scheduler needed). ``make demo`` runs this.

    .venv/bin/python -m pipelines.demo [--rows N] [--steps N]

1. simulate a fleet's telemetry (many models × hardware × days, with planted incidents);
2. import a real Hugging Face Trainer log, as a team would bring one;
3. train_model: two tiny models (GPT-2 LM, BERT classifier) at two precisions (fp32, bf16), on CPU;
4. evaluate_models: every new checkpoint through the eval suites;
5. build_cubes: incremental cube build, diagnostics, notifications, and the health summary.

Each DAG run's Airflow log goes to ``.mhw/logs/<dag>-<n>.log``; the summary is printed at the end.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from warehouse import cli, config
from warehouse.simulate import simulate

# (config, precision, optimizer steps): enough for each tiny model to visibly learn on CPU
TRAININGS = [("configs/gpt2-tiny.yaml", "fp32", 80), ("configs/gpt2-tiny.yaml", "bf16", 80),
             ("configs/bert-tiny-cls.yaml", "fp32", 200), ("configs/bert-tiny-cls.yaml", "bf16", 200)]
SAMPLE = config.REPO_ROOT.parent / "shared" / "data" / "hf_trainer_state" / "lora-imdb-distilbert.trainer_state.json"


def dag_test(dag_id: str, conf: dict | None, log: Path) -> float:
    """One DAG run in a child process (Airflow's logs to ``log``); raises if it did not succeed."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pipelines.airflow_local", "test", dag_id]
    cmd += ["--conf", json.dumps(conf)] if conf else []
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=config.REPO_ROOT).returncode
    if rc != 0:
        print(open(log).read()[-4000:], file=sys.stderr)
        raise SystemExit(f"DAG {dag_id} failed (exit {rc}); its log: {log}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000, help="simulated train_steps rows")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per training run (default: per model)")
    args = ap.parse_args(argv)
    settings = config.load()
    logs = config.REPO_ROOT / ".mhw" / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    totals = simulate(settings.lake_root, args.rows, seed=0)
    print(f"[1/5] simulated {sum(totals.values()):,} fleet telemetry rows into {settings.lake_root} "
          f"({time.perf_counter() - t0:.1f} s)")

    if SAMPLE.exists():
        print(f"[2/5] importing a real Hugging Face Trainer log: {SAMPLE.name}")
        started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
        cli.main(["ingest", str(SAMPLE), "--model", "distilbert/lora-imdb", "--hardware", "t4-16gb-x1",
                  "--precision", "fp16", "--run-id", "lora-imdb-distilbert", "--started-at", started])
    else:
        print(f"[2/5] no sample log at {SAMPLE}: skipping the import")

    for i, (cfg, precision, steps) in enumerate(TRAININGS):
        secs = dag_test("train_model", {"config": cfg, "precision": precision, "steps": args.steps or steps},
                        logs / f"train_model-{i}.log")
        print(f"[3/5] train_model {cfg} {precision}: success ({secs:.0f} s)")
    secs = dag_test("evaluate_models", None, logs / "evaluate_models.log")
    print(f"[4/5] evaluate_models: success ({secs:.0f} s)")
    secs = dag_test("build_cubes", None, logs / "build_cubes.log")
    print(f"[5/5] build_cubes (build → diagnose → notify → summarize): success ({secs:.0f} s)\n")

    from pipelines.summary import health_summary

    print(health_summary())
    print(f"Logs: {logs}.  Ask your own: .venv/bin/mhw query \"select * from train_health limit 5\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
