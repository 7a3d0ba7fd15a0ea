"""The main job, end to end on the embedded defaults, for real through Airflow (``dag.test()``: no
scheduler needed). ``make demo`` runs this.

    .venv/bin/python -m pipelines.demo [--rows N] [--steps N]

1. simulate a fleet's telemetry (many models × hardware × days, with planted incidents);
2. import a real Hugging Face Trainer log, as a team would bring one;
3. train_model: two tiny models (GPT-2 LM, BERT classifier) at two precisions (fp32, bf16), on CPU;
4. evaluate_models: every new checkpoint through the eval suites;
5. build_cubes: diagnostics, incremental cube build (alerts served), notifications, and the health summary;
6. the "Model health" Superset dashboard, opened in headless Chromium: every chart checked for errors
   and a screenshot saved to ``.mhw/dashboard/dashboard.png`` (``make superset`` serves it live).

Each DAG run's Airflow log goes to ``.mhw/logs/<dag>-<n>.log``; the summary is printed at the end.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from pipelines.localhost import free_port, stop_group, wait_until_up
from warehouse import cli, config, scrape
from warehouse.simulate import simulate

# (config, precision, optimizer steps, overrides): enough steps for each tiny model to visibly learn on
# CPU. One run gets a NaN loss forced at step 50 (kept as data; the run goes on) so the demo shows the
# diagnostics catching a divergence in a real training run.
TRAININGS = [("configs/gpt2-tiny.yaml", "fp32", 80, []),
             ("configs/gpt2-tiny.yaml", "bf16", 80, ["--trainer.inject_nan_at_step=50"]),
             ("configs/bert-tiny-cls.yaml", "fp32", 200, []),
             ("configs/bert-tiny-cls.yaml", "bf16", 200, [])]
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


def start_serving(settings, logs: Path):
    """``mhw serve`` on the newest fp32 GPT-2 checkpoint of the demo's training, not waited for (it
    loads while evaluate_models runs). None when there is no such checkpoint."""
    from model import serve
    from warehouse.hardware import fingerprint

    found = sorted(Path(settings.checkpoints_root).glob("gpt2-tiny-fp32-*/ckpt-*.pt"), key=os.path.getmtime)
    if not found:
        return None
    port, log = free_port(), logs / "serve-requests.jsonl"
    log.unlink(missing_ok=True)
    proc = serve.spawn(str(found[-1]), port, str(logs / "serve.log"), hardware=fingerprint(), request_log=str(log),
                       wait=False)
    return {"proc": proc, "port": port, "log": log, "hardware": fingerprint(), "checkpoint": str(found[-1])}


def load_and_scrape(served: dict, settings, logs: Path) -> dict:
    """Scrape the server, send it a bounded load (every 10th request invalid), scrape again, stop it
    and ingest its request log. Returns the load's own exact figures."""
    from model import loadgen, serve

    url = f"http://127.0.0.1:{served['port']}"
    try:
        serve.wait_ready(served["proc"], served["port"], str(logs / "serve.log"))
        target = f"{url}/metrics"
        scrape.scrape(target, served["hardware"], "fp32", None, settings.lake_root)
        load = loadgen.run_load(url, requests=120, concurrency=2, bad_every=10, max_tokens=8, deadline_s=30)
        scrape.scrape(target, served["hardware"], "fp32", None, settings.lake_root)
    finally:
        serve.stop(served["proc"])
    cli.main(["ingest", str(served["log"]), "--hardware", served["hardware"]])
    return load.figures()


SERVING_SUMMARY = """
    select model, hardware, source, n_requests, n_client_error + n_server_error + n_other_error as n_failed,
        round(qps, 2) as qps, round(e2e_p50_ms, 1) as e2e_p50_ms,
        round(e2e_p95_ms, 1) || ' (' || round(e2e_p95_lo_ms, 1) || '-' || round(e2e_p95_hi_ms, 1) || ')' as e2e_p95_ms,
        round(ttft_p95_ms, 1) as ttft_p95_ms, round(itl_p95_ms, 2) as itl_p95_ms,
        round(output_tokens_per_s, 1) as out_tokens_per_s
    from serving_health where period = 'day' order by model, hardware, source"""


def serving_summary() -> str:
    """The day rows of the serving cube, as a small table (the p95's bucket bounds in brackets)."""
    from warehouse.query import connect

    cur = connect().execute(SERVING_SUMMARY)
    names = [d[0] for d in cur.description]
    rows = [[("" if v is None else str(v)) for v in r] for r in cur.fetchall()]
    width = [max(len(n), *(len(r[i]) for r in rows)) if rows else len(n) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, width)) for r in rows]
    return "Serving health (serving_health, day rows):\n" + "\n".join(lines)


def show_dashboard(logs: Path) -> dict:
    """Start Superset (.venv-bi) on a free loopback port, open the dashboard in headless Chromium,
    save a screenshot, stop Superset. Returns the browser's report."""
    bi = config.REPO_ROOT / ".venv-bi" / "bin" / "python"
    if not bi.exists():
        raise SystemExit("no .venv-bi: run `make setup-bi` (make demo does) to see the dashboard")
    home = config.REPO_ROOT / ".mhw" / "superset"
    home.mkdir(parents=True, exist_ok=True)
    pw_file = home / "demo-admin-password"  # generated here once, never committed
    if not os.environ.get("MHW_SUPERSET_PASSWORD") and not pw_file.exists():
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(16))
    password = os.environ.get("MHW_SUPERSET_PASSWORD") or pw_file.read_text().strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MHW_SUPERSET_PASSWORD": password}
    with open(logs / "superset.log", "w") as log:
        server = subprocess.Popen([str(bi), "-m", "dashboards.serve", "--port", str(port), "--home", str(home)],
                                  cwd=config.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        try:
            wait_until_up(f"{url}/health", server, 600, "Superset")
        except RuntimeError as e:
            raise SystemExit(f"{e}; its log: {logs / 'superset.log'}") from e
        out = config.REPO_ROOT / ".mhw" / "dashboard"
        shown = subprocess.run([str(bi), "-m", "dashboards.browser", "--url", url, "--out", str(out)],
                               cwd=config.REPO_ROOT, env=env, capture_output=True, text=True)
        if shown.returncode != 0:
            raise SystemExit(f"the dashboard did not load: {shown.stderr[-2000:]}")
        report = json.loads(shown.stdout.strip().splitlines()[-1])
        report["screenshot"] = str(out / "dashboard.png")
        return report
    finally:
        stop_group(server, timeout_s=60)


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
    print(f"[1/7] simulated {sum(totals.values()):,} fleet telemetry rows into {settings.lake_root} "
          f"({time.perf_counter() - t0:.1f} s)")

    if SAMPLE.exists():
        print(f"[2/7] importing a real Hugging Face Trainer log: {SAMPLE.name}")
        started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
        cli.main(["ingest", str(SAMPLE), "--model", "distilbert/lora-imdb", "--hardware", "t4-16gb-x1",
                  "--precision", "fp16", "--run-id", "lora-imdb-distilbert", "--started-at", started])
    else:
        print(f"[2/7] no sample log at {SAMPLE}: skipping the import")

    for i, (cfg, precision, steps, overrides) in enumerate(TRAININGS):
        conf = {"config": cfg, "precision": precision, "steps": args.steps or steps, "overrides": overrides}
        secs = dag_test("train_model", conf, logs / f"train_model-{i}.log")
        print(f"[3/7] train_model {cfg} {precision} {' '.join(overrides)}: success ({secs:.0f} s)")
    served = start_serving(settings, logs)  # loads its checkpoint while the evals run
    secs = dag_test("evaluate_models", None, logs / "evaluate_models.log")
    print(f"[4/7] evaluate_models: success ({secs:.0f} s)")
    if served is not None:
        t = time.perf_counter()
        fig = load_and_scrape(served, settings, logs)
        print(f"[5/7] mhw serve {Path(served['checkpoint']).parent.name}: {fig['n_requests']} requests "
              f"({fig['n_client_error']} invalid, {fig['qps']:.0f}/s), e2e p95 {fig['e2e_p95_ms']:.1f} ms, "
              f"scraped before and after, request log ingested ({time.perf_counter() - t:.0f} s)")
    else:
        print("[5/7] no fp32 GPT-2 checkpoint to serve: skipping the serving step")
    secs = dag_test("build_cubes", None, logs / "build_cubes.log")
    print(f"[6/7] build_cubes (diagnose → build → notify → summarize): success ({secs:.0f} s)\n")

    from pipelines.summary import health_summary

    print(health_summary())
    print(serving_summary())
    report = show_dashboard(logs)
    print(f"[7/7] dashboard '{report['title']}': {report['n_chart_holders']} charts, "
          f"{len(report['chart_errors_in_page'])} chart errors, loaded in {report['load_seconds']:.1f} s; "
          f"screenshot {report['screenshot']}")
    if report["chart_errors_in_page"]:
        raise SystemExit(f"chart errors: {report['chart_errors_in_page']}")
    print(f"\nLive: make superset (http://127.0.0.1:8088/superset/dashboard/model-health/). Logs: {logs}.")
    print('Ask your own: .venv/bin/mhw query "select * from train_health limit 5"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
