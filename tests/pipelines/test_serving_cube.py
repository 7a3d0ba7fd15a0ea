"""The serving cube and rules against a real ``mhw serve`` under a bounded load, end to end: two twin
servers of one checkpoint, mixed good and invalid requests, one twin restarted mid-run (a failed
scrape while it is down) and then slowed down with an error burst under a fixed arrival rate, both
scraped through it all, their request logs ingested, the cubes built and the rules run. The cube must
reproduce the load generator's own exact figures: counts exactly, scraped percentiles within the
bucket bounds it states, request-log percentiles within 1 %; the restart loses and duplicates
nothing; the faulty twin raises the SLO, error and saturation alerts and the healthy one none.

A smaller test checks the delta rules on hand-made scrapes (first scrape, a new series, a restart
whose counter outgrew the old one, a failed scrape, a late scrape refused)."""
from __future__ import annotations

import datetime as dt
import threading
import time

import duckdb
import pytest

from model import loadgen, serve
from pipelines.audit import audit
from pipelines.build import build
from pipelines.diagnose import diagnose
from pipelines.localhost import free_port
from warehouse import cli, scrape
from warehouse.importers.prometheus import Sample, Scrape
from warehouse.query import connect
from warehouse.writer import Lake

UTC = dt.timezone.utc
MODEL = "twin"
QUANTITIES = {"e2e": "e2e", "ttft": "ttft", "itl": "itl"}


def cube(lake: str, serving: str, source: str, period: str = "day") -> dict[str, dict]:
    con = connect(lake_root=lake, serving_path=serving)
    t = con.sql(f"select * from serving_health where source = '{source}' and period = '{period}'").to_arrow_table()
    return {r["hardware"]: r for r in t.to_pylist()}


# --- the delta rules, on hand-made scrapes ------------------------------------------------------------

def _scrape(value: float, created: float | None, extra: dict | None = None) -> Scrape:
    s = [Sample("requests", value, MODEL, status="stop", status_class="ok", created_at=created)]
    for status, v in (extra or {}).items():
        s.append(Sample("requests", v, MODEL, status=status, status_class="server_error", created_at=created))
    return Scrape(server="vllm", samples=s, process_start=created)


def test_deltas_across_a_first_scrape_a_new_series_a_failed_scrape_and_a_restart(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    t0 = dt.datetime(2026, 3, 1, 10, tzinfo=UTC)
    at = [t0 + dt.timedelta(minutes=i) for i in range(6)]
    start1, start2 = (t0 - dt.timedelta(seconds=20)).timestamp(), (at[3] + dt.timedelta(seconds=5)).timestamp()
    target, hw = "http://127.0.0.1:9/metrics", "cpu-x1"
    landed = [
        scrape.land(lake, target, _scrape(7, start1), at[0], hw, "fp32"),  # since its start: 7
        scrape.land(lake, target, _scrape(10, start1, {"5xx": 2}), at[1], hw, "fp32"),  # +3, a new series +2
        scrape.land(lake, target, None, at[2], hw, "fp32", MODEL, error="refused"),  # failed: up = 0
        scrape.land(lake, target, _scrape(25, start1, {"5xx": 2}), at[3], hw, "fp32"),  # +15 over the gap
        # restarted after at[3] and already past its old count: 40 since the restart, not 40 - 25
        scrape.land(lake, target, _scrape(40, start2, {"5xx": 1}), at[4], hw, "fp32"),
    ]
    late = scrape.land(lake, target, _scrape(30, start1), at[4] - dt.timedelta(seconds=1), hw, "fp32")
    assert late.stale and late.rows == 0 and "not landed" in late.error
    assert [r.up for r in landed] == [True, True, False, True, True]
    build(str(tmp_path / "lake"), str(tmp_path / "s.duckdb"))
    (row,) = cube(str(tmp_path / "lake"), str(tmp_path / "s.duckdb"), "scrape").values()
    assert (row["n_requests"], row["n_ok"], row["n_server_error"]) == (7 + 3 + 15 + 40 + 2 + 1, 65, 3)
    assert (row["n_scrapes"], row["n_failed_scrapes"], row["n_restarts"]) == (4, 1, 1)
    # the intervals cover the server's life without gap or overlap: from its start to the last scrape
    assert row["observed_s"] == pytest.approx((at[4] - t0).total_seconds() + 20, abs=1e-6)
    # mhw audit recomputes the deltas from the raw rows: equal; then a cube count off by one is named
    assert audit(str(tmp_path / "lake"), str(tmp_path / "s.duckdb")) == []
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    con.execute("update serving_health_periods set n_requests = n_requests + 1 where period = 'day'")
    con.close()
    found = {(f.partition, f.measure) for f in audit(str(tmp_path / "lake"), str(tmp_path / "s.duckdb"))}
    assert found == {("model=twin/hardware=cpu-x1/date=2026-03-01", "scrape n_requests"),
                     ("level=hour/scrape/model=twin/hardware=cpu-x1/date=2026-03-01", "n_requests")}


# --- a real mhw serve under load ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_checkpoint):
    tmp = tmp_path_factory.mktemp("serving")
    lake, serving = str(tmp / "lake"), str(tmp / "serving.duckdb")
    ports = {"a": free_port(), "b": free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    logs = {k: tmp / f"requests-{k}.jsonl" for k in ports}
    hw = {"a": "cpu-twin-a", "b": "cpu-twin-b"}  # the healthy twin and the one that will misbehave

    def start(k):
        return serve.spawn(serve_checkpoint, ports[k], str(tmp / f"serve-{k}.log"), model=MODEL, hardware=hw[k],
                           request_log=str(logs[k]))

    def scrape_(k):
        return scrape.scrape(f"{urls[k]}/metrics", hw[k], "fp32", MODEL, lake, timeout_s=10)

    def both(fn, **kw):
        out = {}
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, fn(k, **kw))) for k in ports]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return out

    procs = {}
    scrapes = []
    try:
        procs.update(both(lambda k: start(k)))
        scrapes += both(lambda k: scrape_(k)).values()
        # phase 1: both healthy, closed loop, every 8th request invalid (a 400)
        phase1 = both(lambda k: loadgen.run_load(urls[k], requests=40, concurrency=2, bad_every=8, deadline_s=120))
        scrapes += both(lambda k: scrape_(k)).values()  # everything phase 1 did is scraped before the restart
        # the restart of b: down (a failed scrape), then up again on the same port and log
        assert serve.stop(procs["b"]) == 0
        down = scrape_("b")
        procs["b"] = start("b")
        scrapes.append(scrape_("b"))
        # phase 2: b slowed down with an error burst; arrivals at a fixed rate on both, scraped meanwhile
        loadgen.set_faults(urls["b"], delay_ms=150, error_rate=0.25)
        done = threading.Event()

        def keep_scraping():
            while not done.is_set():
                scrapes.extend(both(lambda k: scrape_(k)).values())
                done.wait(0.4)

        scraper = threading.Thread(target=keep_scraping)
        scraper.start()
        try:
            phase2 = both(lambda k: loadgen.run_load(urls[k], requests=48, concurrency=16, bad_every=8,
                                                     rate_qps=12, deadline_s=120))
        finally:
            done.set()
            scraper.join()
        scrapes += both(lambda k: scrape_(k)).values()
    finally:
        for p in procs.values():
            serve.stop(p)
    for k in ports:
        assert cli.main(["ingest", str(logs[k]), "--lake", lake]) == 0
    build(lake, serving)
    rules = tmp / "rules.yaml"
    rules.write_text(f"latency_slos:\n  - {{model: {MODEL}, metric: p95_ms, slo_ms: 400}}\n"
                     f"  - {{model: {MODEL}, metric: p99_ms, slo_ms: 800}}\n")
    alerts = diagnose(lake, config_path=str(rules), notify_alerts=False).current
    return {"lake": lake, "serving": serving, "hw": hw, "down": down, "scrapes": scrapes, "alerts": alerts,
            "loads": {k: (phase1[k], phase2[k]) for k in ports}}


def exact(served, k) -> dict:
    p1, p2 = served["loads"][k]
    return loadgen.LoadResult(p1.replies + p2.replies, p1.started, p2.ended).figures()


@pytest.mark.slow
def test_counts_from_scrapes_and_logs_equal_the_load_generators(served):
    assert served["down"].up is False and served["down"].rows == 1  # the failed scrape, kept as up = 0
    assert all(s.up for s in served["scrapes"])
    scraped = cube(served["lake"], served["serving"], "scrape")
    logged = cube(served["lake"], served["serving"], "request_log")
    for k, hw in served["hw"].items():
        want = exact(served, k)
        assert want["n_no_answer"] == 0 and want["n_client_error"] == 11  # 5 + 6 invalid requests
        for got in (scraped[hw], logged[hw]):
            assert (got["n_requests"], got["n_ok"], got["n_client_error"], got["n_server_error"]) == (
                want["n_requests"], want["n_ok"], want["n_client_error"], want["n_server_error"]), (k, got["source"])
            assert got["error_rate"] == pytest.approx(want["error_rate"], rel=1e-12)
            assert got["output_tokens"] == want["output_tokens"]
            assert got["qps"] * got["observed_s"] == pytest.approx(want["n_requests"], rel=1e-9)
        # logs: the span from the first arrival to the last completion, as the generator saw it (its own
        # span adds each request's client-side overhead at the ends only)
        assert logged[hw]["qps"] == pytest.approx(want["n_requests"] / want["seconds"], rel=0.01)
    b, a = scraped[served["hw"]["b"]], scraped[served["hw"]["a"]]
    assert (b["n_restarts"], b["n_failed_scrapes"], a["n_restarts"], a["n_failed_scrapes"]) == (1, 1, 0, 0)
    assert exact(served, "b")["n_server_error"] > 0 and exact(served, "a")["n_server_error"] == 0


@pytest.mark.slow
def test_scraped_percentiles_lie_within_the_buckets_they_state(served):
    scraped = cube(served["lake"], served["serving"], "scrape")
    for k, hw in served["hw"].items():
        want, got = exact(served, k), scraped[hw]
        for q in ("e2e", "ttft", "itl"):
            for p in (50, 95, 99):
                lo, hi, value = got[f"{q}_p{p}_lo_ms"], got[f"{q}_p{p}_hi_ms"], got[f"{q}_p{p}_ms"]
                true = want[f"{q}_p{p}_ms"]
                assert lo < true <= hi, (k, q, p, lo, true, hi)
                assert lo <= value <= hi, (k, q, p, lo, value, hi)


@pytest.mark.slow
def test_request_log_percentiles_are_within_one_percent(served):
    logged = cube(served["lake"], served["serving"], "request_log")
    for k, hw in served["hw"].items():
        want, got = exact(served, k), logged[hw]
        for q, w in (("e2e", "e2e"), ("ttft", "ttft"), ("itl", "itl_request")):
            for p in (50, 95, 99):
                true = want[f"{w}_p{p}_ms"]
                assert got[f"{q}_p{p}_ms"] == pytest.approx(true, rel=0.01), (k, q, p)
                assert got[f"{q}_p{p}_lo_ms"] <= true < got[f"{q}_p{p}_hi_ms"], (k, q, p)


@pytest.mark.slow
def test_the_faulty_twin_raises_slo_error_and_saturation_alerts_and_the_healthy_one_none(served):
    serving_rules = {"serving_slo_breach", "serving_error_breach", "serving_saturation"}
    by_hw: dict[str, set] = {}
    for a in served["alerts"]:
        if a["rule"] in serving_rules:
            by_hw.setdefault(a["hardware"], set()).add((a["rule"], a["suite"]))
    assert by_hw.get(served["hw"]["a"], set()) == set()
    assert by_hw[served["hw"]["b"]] >= {("serving_slo_breach", "scrape"), ("serving_slo_breach", "request_log"),
                                        ("serving_error_breach", "scrape"), ("serving_error_breach", "request_log"),
                                        ("serving_saturation", None)}
