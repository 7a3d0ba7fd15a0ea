"""Serving health: what a scrape costs per target, and how close the serving cube comes to a real
load's exact figures, measured in one run.

    .venv/bin/python bench/bench_serving.py [--repeat 40] [--day-scrapes 1440] [--requests 600]

1. Scrape cost per target, in process (warehouse.scrape): the real vLLM exposition of
   ../shared/data/real/prometheus (45 KB, 62 families) parsed (prometheus_client's parser alone
   beside it: the floor) and landed (one lake transaction: state read, one Parquet file, state
   written), median and p95 of ``--repeat`` scrapes; the same for a live ``mhw serve`` (fetch
   included); and ``mhw scrape`` as a command (interpreter start-up and imports included).
2. A day of one target: ``--day-scrapes`` scrapes (one a minute) landed, then ``mhw build`` over them.
3. Equality: a real ``mhw serve`` under a bounded load (every 8th request invalid), restarted midway,
   then slowed down with an error burst, scraped throughout and its request log ingested; the
   serving_health day row of each source against the load generator's own exact figures.

The machine's load average is printed at start and end: these machines are shared and noisy.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import loadgen, serve  # noqa: E402
from pipelines.build import build  # noqa: E402
from pipelines.localhost import free_port  # noqa: E402
from warehouse import cli, scrape  # noqa: E402
from warehouse.importers.prometheus import parse  # noqa: E402
from warehouse.query import connect  # noqa: E402
from warehouse.writer import Lake  # noqa: E402

VLLM = REPO.parent / "shared" / "data" / "real" / "prometheus" / "Ahasannn--hardware-aware-router--vllm_metrics.txt"
UTC = dt.timezone.utc


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1e3:7.2f} ms, p95 {xs[int(0.95 * (len(xs) - 1))] * 1e3:7.2f} ms"


def checkpoint(tmp: Path) -> str:
    from model import train

    out = train.train(train.build_config(str(REPO / "configs/gpt2-tiny.yaml"), {
        "trainer.eval_interval": 0, "trainer.log_interval": 0, "telemetry.system_interval_s": 0,
        "telemetry.lake": str(tmp / "train-lake"), "trainer.out_dir": str(tmp / "ckpt" / "{run_id}"),
        "trainer.max_steps": 3, "trainer.batch_size": 4, "model.block_size": 32, "data.n_examples": 200}))
    return out["checkpoint"]


def scrape_cost(tmp: Path, repeat: int, ckpt: str) -> None:
    text = VLLM.read_text()
    floor, parsed, landed = [], [], []
    lake = Lake(str(tmp / "cost-lake"))
    t0 = dt.datetime(2026, 1, 5, tzinfo=UTC)
    for i in range(repeat):
        t = time.perf_counter()
        list(text_string_to_metric_families(text))
        floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = parse(text, "vllm")
        parsed.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = scrape.land(lake, "http://vllm:8000/metrics", s, t0 + dt.timedelta(minutes=i), "l4-24gb-x1", "bf16")
        landed.append(time.perf_counter() - t)
    print(f"real vLLM exposition ({len(text) / 1024:.0f} KB, {s.families} families -> {r.rows} rows), {repeat} scrapes:")
    print(f"  prometheus_client parse alone  {ms(floor)}")
    print(f"  parse + canonical mapping      {ms(parsed)}  ({statistics.median(parsed) / statistics.median(floor):.2f}x the parser)")
    print(f"  land (one lake transaction)    {ms(landed)}")

    port = free_port()
    proc = serve.spawn(ckpt, port, str(tmp / "serve-cost.log"))
    try:
        loadgen.run_load(f"http://127.0.0.1:{port}", requests=20, concurrency=2)
        live = []
        for _ in range(repeat):
            r = scrape.scrape(f"http://127.0.0.1:{port}/metrics", "cpu", "fp32", None, str(tmp / "live-lake"))
            live.append(r.seconds)
        cmd = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mhw", "scrape", f"http://127.0.0.1:{port}/metrics", "--hardware",
                            "cpu", "--lake", str(tmp / "cli-lake")], check=True, capture_output=True)
            cmd.append(time.perf_counter() - t)
    finally:
        serve.stop(proc)
    print(f"live mhw serve ({r.rows} rows a scrape), {repeat} scrapes:")
    for k in ("fetch", "parse", "land"):
        print(f"  {k:<30} {ms([x[k] for x in live])}")
    print(f"  total                          {ms([sum(x.values()) for x in live])}")
    print(f"`mhw scrape URL` as a command    {ms(cmd)} (5 runs: interpreter, imports, one scrape)")


def day_of_one_target(tmp: Path, n: int) -> None:
    text = VLLM.read_text()
    lake_root = str(tmp / "day-lake")
    lake, s = Lake(lake_root), parse(text, "vllm")
    t0 = dt.datetime(2026, 1, 6, tzinfo=UTC)
    t = time.perf_counter()
    rows = 0
    for i in range(n):
        rows += scrape.land(lake, "http://vllm:8000/metrics", s, t0 + dt.timedelta(minutes=i), "l4-24gb-x1", "bf16").rows
    landed = time.perf_counter() - t
    t = time.perf_counter()
    r = build(lake_root, str(tmp / "day.duckdb"), full=True)
    built = time.perf_counter() - t
    print(f"a day of one target: {n} scrapes, {rows:,} rows landed in {landed:.1f} s ({landed / n * 1e3:.1f} ms a scrape); "
          f"full build {built:.1f} s (serving_scrape_base {r.seconds.get('serving_scrape_base', 0):.2f} s, "
          f"serving_health_periods {r.seconds.get('serving_health_periods', 0):.2f} s)")


def equality(tmp: Path, requests: int, ckpt: str) -> None:
    lake, serving = str(tmp / "eq-lake"), str(tmp / "eq.duckdb")
    port, log = free_port(), tmp / "eq-requests.jsonl"
    url = f"http://127.0.0.1:{port}"
    target = f"{url}/metrics"

    def start():
        return serve.spawn(ckpt, port, str(tmp / "eq-serve.log"), model="bench", hardware="cpu-bench",
                           request_log=str(log))

    def scrape_():
        return scrape.scrape(target, "cpu-bench", "fp32", "bench", lake)

    proc = start()
    loads = []
    try:
        scrape_()
        loads.append(loadgen.run_load(url, requests=requests // 2, concurrency=2, bad_every=8, deadline_s=300))
        scrape_()
        serve.stop(proc)
        scrape_()  # down: up = 0
        proc = start()
        scrape_()
        loadgen.set_faults(url, delay_ms=40, error_rate=0.1)
        done = threading.Event()

        def keep():
            while not done.is_set():
                scrape_()
                done.wait(0.5)

        th = threading.Thread(target=keep)
        th.start()
        try:
            loads.append(loadgen.run_load(url, requests=requests - requests // 2, concurrency=4, bad_every=8,
                                          rate_qps=30, deadline_s=300))
        finally:
            done.set()
            th.join()
        scrape_()
    finally:
        serve.stop(proc)
    cli.main(["ingest", str(log), "--lake", lake])
    build(lake, serving)
    want = loadgen.LoadResult(loads[0].replies + loads[1].replies, loads[0].started, loads[1].ended).figures()
    con = connect(lake_root=lake, serving_path=serving)
    rows = {r[0]: r for r in con.sql("select source, * from serving_health where period = 'day'").fetchall()}
    cols = [d[0] for d in con.sql("select source, * from serving_health limit 0").description]
    got = {src: dict(zip(cols, r)) for src, r in rows.items()}
    s, g = got["scrape"], got["request_log"]
    print(f"equality: {want['n_requests']} requests ({want['n_client_error']} invalid, {want['n_server_error']} "
          f"injected 500s), one restart ({s['n_restarts']} seen), {s['n_failed_scrapes']} failed scrape, "
          f"{s['n_scrapes']} scrapes")
    print(f"  counts      generator {want['n_requests']}/{want['n_ok']}/{want['n_client_error']}/{want['n_server_error']}"
          f"  scrape {s['n_requests']}/{s['n_ok']}/{s['n_client_error']}/{s['n_server_error']}"
          f"  log {g['n_requests']}/{g['n_ok']}/{g['n_client_error']}/{g['n_server_error']}  (requests/ok/4xx/5xx)")
    print(f"  error rate  generator {want['error_rate']:.4%}  scrape {s['error_rate']:.4%}  log {g['error_rate']:.4%}")
    print(f"  qps         generator {want['qps']:.3f} over its {want['seconds']:.1f} s  log {g['qps']:.3f} over "
          f"{g['observed_s']:.1f} s ({g['qps'] / want['qps'] - 1:+.3%})  scrape {s['qps']:.3f} over the "
          f"{s['observed_s']:.1f} s its intervals cover (server start to last scrape)")
    print("  percentile    exact ms | scraped: value (bucket lo, hi], inside? | log sketch: value, rel. error")
    for q, w in (("e2e", "e2e"), ("ttft", "ttft"), ("itl", "itl")):
        for p in (50, 95, 99):
            exact = want[f"{w}_p{p}_ms"]
            lo, hi, v = s[f"{q}_p{p}_lo_ms"], s[f"{q}_p{p}_hi_ms"], s[f"{q}_p{p}_ms"]
            lexact = want[f"{'itl_request' if q == 'itl' else w}_p{p}_ms"]
            lv = g[f"{q}_p{p}_ms"]
            print(f"  {q:>4} p{p:<3} {exact:10.3f} | {v:9.3f} ({lo:.3f}, {hi:.3f}] {'yes' if lo < exact <= hi else 'NO'}"
                  f" | {lv:9.3f} {abs(lv - lexact) / lexact:.3%}"
                  + (f" (of per-request mean ITL {lexact:.3f})" if q == "itl" else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--day-scrapes", type=int, default=1440)
    ap.add_argument("--requests", type=int, default=600)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="mhw-bench-serving-"))
    try:
        ckpt = checkpoint(tmp)
        scrape_cost(tmp, args.repeat, ckpt)
        day_of_one_target(tmp, args.day_scrapes)
        equality(tmp, args.requests, ckpt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
