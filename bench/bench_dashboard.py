"""Model health dashboard load time: every chart's data call, through a real Superset, on the cubes
built from N raw training-step rows.

    .venv/bin/python bench/bench_dashboard.py --rows 10000000 40000000 [--repeat 5] [--browser]

For each N: ``mhw simulate --rows N`` into a fresh lake, ``mhw build`` (the serving file), start
Superset from .venv-bi on a free 127.0.0.1 port (dashboards/serve.py), then time
- load: all charts' /api/v1/chart/{id}/data calls issued at once, as the dashboard issues them
  (force=true: no cache), wall time until the last answers; median and max over --repeat loads;
- per chart: the median time of its call alone;
- with --browser, one real page load in headless Chromium until every chart rendered.
Appends a section to bench/RESULTS.md unless --no-record.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import requests

REPO = Path(__file__).resolve().parent.parent
BI_PYTHON = REPO / ".venv-bi" / "bin" / "python"
MHW = Path(sys.executable).parent / "mhw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(work: Path, rows: int) -> tuple[Path, float, float]:
    lake, serving = work / "lake", work / "serving.duckdb"
    env = {**os.environ, "MHW_LAKE": str(lake), "MHW_SERVING": str(serving)}
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t = time.monotonic()
    subprocess.run([str(MHW), "simulate", "--rows", str(rows), "--seed", "1"], env=env, check=True,
                   cwd=REPO, stdout=subprocess.DEVNULL)
    sim_s = time.monotonic() - t
    t = time.monotonic()
    subprocess.run([str(MHW), "build", "--quiet"], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return serving, sim_s, time.monotonic() - t


class Server:
    def __init__(self, work: Path, serving: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        env = {**os.environ, "MHW_SUPERSET_PASSWORD": self.password,
               "MHW_SUPERSET_HOME": str(work / "superset"), "MHW_SERVING": str(serving),
               "MHW_LAKE": str(serving.parent / "lake")}  # the start's provisioning audits into the bench's lake
        self.log = open(work / "superset.log", "w")
        self.proc = subprocess.Popen([str(BI_PYTHON), "-m", "dashboards.serve", "--port", str(self.port)],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Superset exited; see {work / 'superset.log'}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Superset did not start in 300 s")
            time.sleep(1)
        self.http = requests.Session()
        tok = self.http.post(f"{self.url}/api/v1/security/login", json={
            "username": "admin", "password": self.password, "provider": "db"}).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {tok}"

    def charts(self) -> dict[int, str]:
        rows = self.http.get(f"{self.url}/api/v1/chart/", params={"q": json.dumps(
            {"columns": ["id", "slice_name"], "page_size": 100})}).json()["result"]
        return {r["id"]: r["slice_name"] for r in rows}

    def data(self, chart_id: int) -> float:
        t = time.monotonic()
        r = self.http.get(f"{self.url}/api/v1/chart/{chart_id}/data/", params={"force": "true"}, timeout=300)
        r.raise_for_status()
        return time.monotonic() - t

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def measure(server: Server, repeat: int) -> dict:
    charts = server.charts()
    for cid in charts:  # warm up: first connection, Python imports in the worker
        server.data(cid)
    loads = []
    for _ in range(repeat):
        t = time.monotonic()
        with cf.ThreadPoolExecutor(len(charts)) as pool:
            list(pool.map(server.data, charts))
        loads.append(time.monotonic() - t)
    per_chart = {name: statistics.median(server.data(cid) for _ in range(repeat))
                 for cid, name in charts.items()}
    return {"load_median_s": statistics.median(loads), "load_max_s": max(loads), "per_chart_s": per_chart,
            "n_charts": len(charts)}


def browser_load(server: Server, out: Path) -> float:
    env = {**os.environ, "MHW_SUPERSET_PASSWORD": server.password}
    subprocess.run([str(BI_PYTHON), "-m", "dashboards.browser", "--url", server.url, "--out", str(out)],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())["load_seconds"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--work", default=str(REPO / ".mhw" / "bench-dashboard"))
    p.add_argument("--browser", action="store_true", help="also time one real page load in Chromium")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)

    results, failures = [], []
    for rows in args.rows:
        work = Path(args.work) / f"rows-{rows}"
        try:
            serving, sim_s, build_s = build(work, rows)
        except subprocess.CalledProcessError as e:  # recorded, not hidden: the sizes that ran still count
            failures.append(f"{rows:,} rows: `{' '.join(map(str, e.cmd[1:]))}` exited {e.returncode}")
            print(f"bench_dashboard: {failures[-1]}", file=sys.stderr, flush=True)
            continue
        con = duckdb.connect(str(serving), read_only=True)
        cube_rows = sum(con.execute(f'select count(*) from "{t}"').fetchone()[0]
                        for t in ("train_health", "train_step_time_sketch", "latency_health",
                                  "latency_sketch", "eval_health"))
        con.close()
        server = Server(work, serving)
        try:
            m = measure(server, args.repeat)
            if args.browser:
                m["browser_load_s"] = browser_load(server, work / "browser")
        finally:
            server.close()
        m.update(rows=rows, simulate_s=sim_s, build_s=build_s, cube_rows=cube_rows,
                 serving_mb=serving.stat().st_size / 1e6)
        results.append(m)
        print(json.dumps(m, indent=1), flush=True)

    cmd = "python bench/bench_dashboard.py " + " ".join(
        ["--rows", *map(str, args.rows), "--repeat", str(args.repeat)] + (["--browser"] if args.browser else []))
    lines = ["", "## Dashboard load time (Superset, Model health dashboard)", "",
             f"`.venv/bin/{cmd}` — {platform.machine()}, {os.cpu_count()} cores; Superset 6.1 "
             "(gunicorn, 1 worker × 8 threads) on 127.0.0.1 reading the serving DuckDB file read-only; "
             "every chart's `/api/v1/chart/{id}/data` with `force=true` (no cache), all at once as the "
             "dashboard issues them; median and max of the loads.", "",
             "| raw step rows | cube rows served | serving file | charts | load median | load max | slowest chart alone |"
             + (" browser load |" if args.browser else ""),
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- |" + (" ---: |" if args.browser else "")]
    for m in results:
        slow = max(m["per_chart_s"].items(), key=lambda kv: kv[1])
        lines.append(f"| {m['rows']:,} | {m['cube_rows']:,} | {m['serving_mb']:.1f} MB | {m['n_charts']} | "
                     f"{m['load_median_s']:.2f} s | {m['load_max_s']:.2f} s | {slow[0]}: {slow[1]:.2f} s |"
                     + (f" {m['browser_load_s']:.1f} s |" if args.browser else ""))
    lines += ["", "Set-up per size: " + "; ".join(
        f"{m['rows']:,} rows: simulate {m['simulate_s']:.0f} s, build {m['build_s']:.0f} s" for m in results)
        + ". The dashboard reads only cubes, so its load time follows the cube size (configurations × "
        "days × buckets), not the raw row count.", ""]
    if failures:
        lines += ["Did not run: " + "; ".join(failures) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
