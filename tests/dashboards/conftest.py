"""A real Superset for the dashboard tests: the core venv's pytest builds a small serving file with
the real pipeline (``mhw simulate`` + ``mhw build``), then starts ``dashboards.serve`` from .venv-bi
(Superset needs SQLAlchemy < 2, the core venv has 2) on a free 127.0.0.1 port with a temporary home,
and talks to it over HTTP. The browser client runs in .venv-bi too (dashboards/browser.py), by
subprocess, so Playwright is installed once, beside Superset, and the core venv stays as locked.

Skipped, with the reason, only when .venv-bi is absent (``make test`` creates it)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.localhost import free_port, stop_group, wait_until_up

REPO = Path(__file__).resolve().parents[2]
BI_PYTHON = REPO / ".venv-bi" / "bin" / "python"
MHW = Path(sys.executable).parent / "mhw"
# Screenshots and browser reports land here (ignored by git) so a person can look at them.
OUT = Path(os.environ.get("MHW_TEST_OUT", REPO / "out" / "tests" / "dashboards"))

def run_mhw(*args: str, env: dict) -> None:
    subprocess.run([str(MHW), *args], env=env, check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


class Superset:
    """A running Superset and an authenticated REST session to it."""

    def __init__(self, url: str, password: str, serving: Path, home: Path, log: Path, user: str = "admin",
                 lake: Path | None = None):
        import requests

        self.url, self.password, self.serving, self.home, self.log = url, password, serving, home, log
        self.user, self.lake = user, lake
        self.http = requests.Session()
        token = self.http.post(f"{url}/api/v1/security/login", json={
            "username": user, "password": password, "provider": "db", "refresh": False}, timeout=30)
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        # POSTs outside the exempt list (SQL Lab) also need the CSRF token of this session.
        csrf = self.http.get(f"{url}/api/v1/security/csrf_token/", timeout=30).json()["result"]
        self.http.headers["X-CSRFToken"] = csrf
        self.http.headers["Referer"] = url

    def as_user(self, user: str, password: str) -> "Superset":
        """The same Superset through another login (raises if the login is refused)."""
        return Superset(self.url, password, self.serving, self.home, self.log, user=user, lake=self.lake)

    def put(self, path: str, **kw):
        return self.http.put(f"{self.url}{path}", timeout=kw.pop("timeout", 60), **kw)

    def get(self, path: str, **kw):
        return self.http.get(f"{self.url}{path}", timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw):
        return self.http.post(f"{self.url}{path}", timeout=kw.pop("timeout", 60), **kw)

    def chart_ids(self) -> dict[str, int]:
        """Chart uuid -> id in this Superset."""
        import json

        rows = self.get("/api/v1/chart/", params={"q": json.dumps(
            {"columns": ["id", "uuid", "slice_name"], "page_size": 100})}).json()["result"]
        return {r["uuid"]: r["id"] for r in rows}

    def browser(self, out: Path, timeout: float = 150.0, slug: str = "model-health", watch=(),
                probe_sqllab: bool = False) -> dict:
        """Open a dashboard in headless Chromium (dashboards/browser.py in .venv-bi), as this login."""
        import json

        env = {**os.environ, "MHW_SUPERSET_PASSWORD": self.password}
        subprocess.run([str(BI_PYTHON), "-m", "dashboards.browser", "--url", self.url, "--user", self.user,
                        "--slug", slug, "--out", str(out), "--timeout", str(timeout), "--watch", ",".join(watch),
                        *(["--probe-sqllab"] if probe_sqllab else [])],
                       cwd=REPO, env=env, check=True, timeout=timeout + 120)
        return json.loads((out / "report.json").read_text())


def land_serving(lake: Path, root: Path) -> None:
    """Live serving telemetry for the Serving charts, through the project's real paths: expositions of
    mhw serve's own metric families (model.serve.Metrics on prometheus_client) taken every 20 minutes
    of a 4-hour life and landed by mhw scrape, and a per-request log landed by mhw ingest."""
    import datetime as dt
    import json
    import math
    import random
    import time

    from prometheus_client import generate_latest

    from model.serve import Metrics
    from warehouse import scrape

    rng = random.Random(5)
    log = root / "requests.jsonl"
    with open(log, "w") as out:
        for model, hw in (("gpt2-124m", "l4-24gb-x1"), ("llama-7b", "h100-sxm-80gb-x8")):
            m, born = Metrics(model), time.time()
            for i in range(12):
                at = dt.datetime.fromtimestamp(born + 1200 * (i + 1), dt.timezone.utc)
                for k in range(rng.randint(40, 120)):
                    e2e = rng.lognormvariate(math.log(0.3 if model == "llama-7b" else 0.08), 0.4)
                    code = 500 if rng.random() < 0.02 * (i % 3) else 400 if rng.random() < 0.03 else 200
                    m.http.labels(handler="/v1/completions", method="POST", status=f"{code // 100}xx").inc()
                    row = {"model": model, "hardware": hw, "precision": "bf16", "status": code, "e2e_ms": e2e * 1e3,
                           "ts": (at - dt.timedelta(seconds=rng.uniform(0, 1200))).isoformat()}
                    if code == 200:
                        m.e2e.observe(e2e)
                        m.ttft.observe(e2e / 5)
                        m.itl.observe(e2e / 40)
                        m.success.labels(model_name=model, finished_reason="length").inc()
                        m.generation_tokens.inc(32)
                        row.update(ttft_ms=e2e * 200, itl_ms=e2e * 25, output_tokens=32)
                    out.write(json.dumps(row) + "\n")
                m.waiting.set(rng.randint(0, 6))
                m.kv_usage.set(rng.random())
                scrape.scrape(f"file://{root}/metrics-{model}", hw, "bf16", None, str(lake),
                              text=generate_latest(m.registry).decode(), at=at)
    run_mhw("ingest", str(log), env={**os.environ, "MHW_LAKE": str(lake)})


def build_serving(root: Path, rows: int, seed: int = 11) -> Path:
    """A lake and its serving file, made by the project's own simulate and build, with live serving
    telemetry beside the simulated fleet (land_serving)."""
    env = {**os.environ, "MHW_LAKE": str(root / "lake"), "MHW_SERVING": str(root / "serving.duckdb")}
    run_mhw("simulate", "--rows", str(rows), "--seed", str(seed), "--incident-rate", "0.3", env=env)
    land_serving(root / "lake", root)
    # As the build_cubes DAG does: diagnose (the rules read the lake), then one build that serves the
    # cubes and the alerts (alert_list); between them, as repair_runs would, the repairs.
    run_mhw("diagnose", "--no-notify", "--quiet", env=env)
    # Simulated runs are imported runs: their repairs are advice, not restarts (rows for repair_health).
    run_mhw("repair", "--min-severity", "warning", "--apply", env=env)
    run_mhw("build", "--quiet", env=env)
    return root / "serving.duckdb"


@pytest.fixture(scope="session")
def superset(tmp_path_factory):
    if not BI_PYTHON.exists():
        pytest.skip(".venv-bi is absent: run `make setup-bi` (make test does)")
    root = tmp_path_factory.mktemp("superset")
    serving = build_serving(root, rows=40_000)
    home = root / "home"
    port = free_port()
    password = secrets.token_urlsafe(16)
    # The provisioning at start leaves its audit entry in the fixture's lake, not the repo's.
    env = {**os.environ, "MHW_SUPERSET_PASSWORD": password, "MHW_SUPERSET_HOME": str(home),
           "MHW_SERVING": str(serving), "MHW_LAKE": str(root / "lake")}
    log = root / "superset.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(BI_PYTHON), "-m", "dashboards.serve", "--port", str(port),
                                 "--threads", "8"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(f"{url}/health", proc, 300, "Superset")
        except RuntimeError as e:
            pytest.fail(f"{e}:\n{log.read_text()[-4000:]}")
        yield Superset(url, password, serving, home, log, lake=root / "lake")
    finally:
        stop_group(proc)  # gunicorn master and its worker: our own group only


@pytest.fixture(scope="session")
def out_dir() -> Path:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    return OUT
