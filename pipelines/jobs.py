"""The jobs the DAGs schedule, as plain functions: each takes paths and settings, does one thing, and
returns a small JSON-able dict. Training and evaluation run in a subprocess (or ``torchrun``) so an
Airflow worker never imports torch, and a killed job takes nothing else down with it."""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from warehouse import audit, config
from warehouse.query import connect
from warehouse.schemas import RUN_ID_CHARS
from warehouse.writer import slugify

REPO = config.REPO_ROOT


def _run(cmd: list[str], env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **(env or {})})


def _lake_env(lake_root: str | None) -> dict:
    return {"MHW_LAKE": lake_root} if lake_root else {}


def train_run_id(config_path: str, precision: str, dag_run_id: str) -> str:
    """A run id stable across retries of one DAG run: a retry resumes the same run, so the lake keeps
    one row per step instead of two partial runs."""
    digest = hashlib.sha1(dag_run_id.encode()).hexdigest()[:10]
    return slugify(f"{Path(config_path).stem}-{precision}-{digest}", RUN_ID_CHARS)  # a long stem: hashed, not cut


def train_command(config_path: str, run_id: str, precision: str = "fp32", steps: int | None = None,
                  hardware: str | None = None, nproc: int = 1, overrides: list[str] | None = None,
                  checkpoints_root: str | None = None) -> tuple[list[str], str]:
    """The command that trains (or resumes, if this run already has a checkpoint) one model, and the
    run's checkpoint folder."""
    out_dir = os.path.join(checkpoints_root or config.load().checkpoints_root, run_id)
    args = ["--config", str(REPO / config_path) if not os.path.isabs(config_path) else config_path,
            f"--telemetry.run_id={run_id}", f"--trainer.out_dir={out_dir}", f"--trainer.precision={precision}"]
    if steps:
        args.append(f"--trainer.max_steps={int(steps)}")
    if hardware:
        args.append(f"--telemetry.hardware={hardware}")
    if glob.glob(os.path.join(out_dir, "ckpt-*.pt")):
        args.append(f"--trainer.resume={out_dir}")  # a retried task continues where the last try stopped
    args += overrides or []
    if nproc > 1:
        return [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}",
                "-m", "model.train", *args], out_dir
    return [sys.executable, "-m", "model.train", *args], out_dir


def train(config_path: str, run_id: str, lake_root: str | None = None, **kw) -> dict:
    """Train one model in a subprocess under ``mhw watch`` (warehouse/watchdog.py); telemetry and
    heartbeats go to the lake. A hung job (alive, no step past its bound) is killed and a lost one
    (a process gone without an ending) ended, and either fails the task with the rank, host, last
    step and checkpoint, instead of hanging it: a retry resumes from that checkpoint. ``kw``: see
    ``train_command``."""
    from warehouse.watchdog import watch

    cmd, out_dir = train_command(config_path, run_id, **kw)
    print("+", " ".join(cmd), flush=True)
    code, dog = watch(cmd, lake_root, cwd=str(REPO), say=print)
    if code != 0:
        what = {"hung": "hung and was killed", "lost": "was lost"}.get(dog.outcome, "failed")
        raise RuntimeError(f"training run {run_id} {what} (exit status {code})" + (f": {dog.detail}" if dog.detail else ""))
    ckpts = sorted(glob.glob(os.path.join(out_dir, "ckpt-*.pt")))
    return {"run_id": run_id, "out_dir": out_dir, "checkpoint": ckpts[-1] if ckpts else None}


def checkpoints(checkpoints_root: str | None = None) -> list[str]:
    root = checkpoints_root or config.load().checkpoints_root
    return sorted(glob.glob(os.path.join(root, "*", "ckpt-*.pt")))


def unevaluated(checkpoints_root: str | None = None, lake_root: str | None = None) -> list[str]:
    """Checkpoints on disk that no evaluation in the lake names yet."""
    found = checkpoints(checkpoints_root)
    if not found:
        return []
    con = connect(lake_root=lake_root, serving_path="")
    done = {r[0] for r in con.execute("select distinct checkpoint from eval_results where checkpoint is not null").fetchall()}
    return [c for c in found if c not in done and os.path.abspath(c) not in done]


def evaluate(checkpoint: str, suites: list[str] | None = None, lake_root: str | None = None) -> dict:
    """Run the eval suites on one checkpoint. Re-evaluating the same checkpoint replaces its rows."""
    cmd = [sys.executable, "-m", "model.evaluate", "--checkpoint", checkpoint]
    if suites:
        cmd += ["--suite", ",".join(suites)]
    _run(cmd, _lake_env(lake_root))
    return {"checkpoint": checkpoint}


def build_cubes(full: bool = False) -> dict:
    """Bring the cubes and the serving file up to date, on the configured engine. Spark runs in a
    subprocess (``mhw build --engine spark``) so the worker process never hosts a JVM."""
    orch = config.load().section("orchestration")
    engine, master = orch.get("engine", "duckdb"), orch.get("spark_master")
    if engine == "spark":
        cmd = [sys.executable, "-m", "mhw", "build", "--engine", "spark"]
        cmd += ["--master", master] if master else []
        cmd += ["--full"] if full else []
        _run(cmd)
        return {"engine": engine}
    from pipelines.build import build

    r = build(engine=engine, full=full, log=print)
    return {"engine": engine, "build_id": r.build_id, "full": r.full, "rebuilt": r.rebuilt,
            "seconds": round(r.seconds["total"], 2)}


def diagnose() -> dict:
    """Compute and store the alerts of what changed since the last run. Notifying is the next task's
    job, so a notifier outage fails (and retries) only that task."""
    from pipelines.diagnose import diagnose as run_rules

    orch = config.load().section("orchestration")
    r = run_rules(engine=orch.get("engine", "duckdb"), master=orch.get("spark_master"), notify_alerts=False, log=print)
    return {"alerts": len(r.alerts), "new": len(r.new), "by_rule": r.by_rule, "worst": r.worst(),
            "new_severities": sorted({a["severity"] for a in r.new})}


@audit.audited("notify", counts=lambda r: {"notified": r["notified"]})
def notify(diagnosed: dict) -> dict:
    """Send every alert no notifier has taken yet, then mark them notified; fail the task while the
    alerts table holds an open alert at or above ``orchestration.fail_on`` (new or not: a retry, or
    the next run over an unchanged lake, fails again until the alert's cause is gone)."""
    import datetime as dt

    from pipelines import notify as notifiers
    from pipelines.alerts import alert_key, stored, write_alerts
    from pipelines.diagnose import at_or_above, describe, load_config
    from warehouse.writer import Lake

    settings = config.load()
    lake = Lake(settings.lake_root)
    found = stored(lake)
    alerts = found.rows()
    pending = [a for a in alerts if a["notified_at"] is None]
    errors = notifiers.send_all(notifiers.build_notifiers(load_config().notify), pending) if pending else []
    if errors:
        raise RuntimeError(f"{len(pending)} alert(s) stay pending: {'; '.join(errors)}")  # Airflow retries
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for a in pending:
        a["notified_at"] = now
    write_alerts(lake, alerts, {alert_key(a["rule"], a["model"], a["hardware"]) for a in pending}, found)
    fail_on = settings.section("orchestration").get("fail_on")
    failing = at_or_above(alerts, fail_on)  # notified first: the alerts go out even when the task fails
    if failing:
        raise RuntimeError(f"{len(failing)} open alert(s) at or above {fail_on}: {describe(failing)} "
                           f"(`mhw alerts --severity {fail_on}`)")
    return {"notified": len(pending)}
