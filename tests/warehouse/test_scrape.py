"""mhw scrape: the real vLLM scrape of ../shared/data/real parses into the canonical samples and lands;
TGI's and Triton's families map onto the same names; a target that does not answer lands up = 0; a
late scrape is refused; bad text is an error naming the target."""
from __future__ import annotations

import datetime as dt
import json
import http.server
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipelines.localhost import free_port
from warehouse import cli, scrape
from warehouse.importers import SourceError
from warehouse.importers.prometheus import parse, status_class

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "prometheus"
VLLM = REAL / "Ahasannn--hardware-aware-router--vllm_metrics.txt"
UTC = dt.timezone.utc

# Written from TGI's metrics reference (huggingface.co/docs/text-generation-inference/reference/metrics):
# counters without _total, histograms in seconds, no model label.
TGI = """\
# TYPE tgi_request_success counter
tgi_request_success 148
# TYPE tgi_request_failure counter
tgi_request_failure{err="validation"} 2
tgi_request_failure{err="overloaded"} 1
# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 5
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.1"} 80
tgi_request_duration_bucket{le="1.0"} 148
tgi_request_duration_bucket{le="+Inf"} 151
tgi_request_duration_sum 22.5
tgi_request_duration_count 151
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 148
tgi_request_generated_tokens_sum 25000
tgi_request_generated_tokens_count 148
"""

# Written from Triton's metrics guide (docs/user_guide/metrics.md): per-model counters, cumulative
# durations in microseconds, an optional summary (not kept), a TTFT histogram in ms.
TRITON = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llama",version="1"} 1000
nv_inference_request_success{model="mistral",version="1"} 500
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="llama",reason="BACKEND",version="1"} 5
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="llama",version="1"} 5000000
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="llama",version="1"} 4
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="llama",version="1"} 1005
nv_inference_request_summary_us_sum{model="llama",version="1"} 5000000
nv_inference_request_summary_us{model="llama",quantile="0.5",version="1"} 4800
# TYPE nv_inference_first_response_histogram_ms histogram
nv_inference_first_response_histogram_ms_bucket{model="llama",version="1",le="100"} 900
nv_inference_first_response_histogram_ms_bucket{model="llama",version="1",le="+Inf"} 1000
nv_inference_first_response_histogram_ms_sum{model="llama",version="1"} 70000
nv_inference_first_response_histogram_ms_count{model="llama",version="1"} 1000
"""


def by_metric(samples):
    out = {}
    for s in samples:
        out.setdefault(s.metric, []).append(s)
    return out


def test_the_real_vllm_scrape_parses_into_every_canonical_family():
    got = parse(VLLM.read_text(), str(VLLM))
    m = by_metric(got.samples)
    assert got.server == "vllm" and got.process_start == pytest.approx(1762438367.32)
    assert {s.status: s.status_class for s in m["requests"]} == {"stop": "ok", "length": "ok", "abort": "error"}
    for q, n_buckets in (("e2e", 22), ("ttft", 23), ("itl", 20)):  # vLLM's own bucket bounds, kept
        les = [s.le for s in m[f"{q}_seconds_bucket"]]
        assert len(les) == n_buckets and les == sorted(les) and les[-1] == float("inf")
        assert len(m[f"{q}_seconds_count"]) == len(m[f"{q}_seconds_sum"]) == 1
    assert [s.le for s in m["e2e_seconds_bucket"]][:3] == [0.3, 0.5, 0.8]
    for g in ("queue_depth", "running", "cache_usage", "prompt_tokens", "output_tokens"):
        assert len(m[g]) == 1 and m[g][0].model == "Qwen/Qwen1.5-0.5B-Chat" and m[g][0].labels == "engine=0"
    # every counter and histogram knows when it started (vLLM's _created samples)
    assert all(s.created_at for s in got.samples if s.metric not in ("queue_depth", "running", "cache_usage"))
    assert got.skipped == got.families - 10  # 10 families mapped; the rest (and _created) counted, not kept


def test_tgi_and_triton_map_onto_the_same_names():
    tgi = by_metric(parse(TGI).samples)
    assert {(s.status, s.status_class, s.value) for s in tgi["requests"]} == {
        ("success", "ok", 148), ("validation", "client_error", 2), ("overloaded", "error", 1)}
    assert [s.le for s in tgi["e2e_seconds_bucket"]] == [0.1, 1.0, float("inf")]
    assert tgi["queue_depth"][0].value == 3 and tgi["running"][0].value == 5
    assert tgi["output_tokens"][0].value == 25000 and "ttft_seconds_bucket" not in tgi
    tri = parse(TRITON)
    m = by_metric(tri.samples)
    assert tri.server == "triton"
    assert {(s.model, s.status, s.value) for s in m["requests"]} == {
        ("llama", "success", 1000), ("mistral", "success", 500), ("llama", "BACKEND", 5)}
    assert m["e2e_seconds_sum"][0].value == pytest.approx(5.0)  # µs -> s
    assert [s.le for s in m["ttft_seconds_bucket"]] == [0.1, float("inf")]  # ms -> s
    assert m["queue_depth"][0].value == 4
    assert not any("summary" in s.source_metric for s in tri.samples)


@pytest.mark.parametrize("status, cls", [(200, "ok"), ("201", "ok"), ("2xx", "ok"), ("404", "client_error"),
                                         ("5xx", "server_error"), (503, "server_error"), ("stop", "ok"),
                                         ("length", "ok"), ("abort", "error"), ("timeout", "error"), (None, None)])
def test_status_classes(status, cls):
    assert status_class(status) == cls


def test_text_that_is_not_an_exposition_names_the_target():
    with pytest.raises(SourceError, match="http://x/metrics: not Prometheus"):
        parse("this is {not metrics", "http://x/metrics")


def test_cli_lands_the_real_scrape_and_a_second_scrape_carries_the_first(tmp_path, capsys):
    lake = str(tmp_path / "lake")
    for at in ("2025-11-06T14:20:00Z", "2025-11-06T14:21:00Z"):
        assert cli.main(["scrape", str(VLLM), "--hardware", "l4-24gb-x1", "--precision", "bf16", "--lake", lake,
                         "--at", at]) == 0
    assert "up (vllm), 80 rows landed" in capsys.readouterr().out
    t = ds.dataset(f"{lake}/serving_scrapes", partitioning="hive").to_table().to_pylist()
    assert {r["model"] for r in t} == {"Qwen--Qwen1.5-0.5B-Chat"} and len(t) == 160
    second = [r for r in t if r["scraped_at"].minute == 21]
    assert all(r["prev_scraped_at"] == dt.datetime(2025, 11, 6, 14, 20, tzinfo=UTC) for r in second)
    assert all(r["prev_value"] == r["value"] for r in second)  # an idle server: nothing moved


def test_an_unreachable_target_lands_up_0_and_the_next_scrape_spans_the_gap(tmp_path):
    lake = str(tmp_path / "lake")

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"# TYPE vllm:request_success counter\nvllm:request_success_total{finished_reason=\"stop\"} 5\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    first = scrape.scrape(url, "cpu", "fp32", "m", lake)  # nobody listening yet: refused
    assert not first.up and first.rows == 1 and "unreachable" in first.error
    server = http.server.HTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        second = scrape.scrape(url, "cpu", "fp32", "m", lake)
    finally:
        server.shutdown()
    assert second.up and second.server == "vllm" and second.rows == 2  # requests, up
    rows = ds.dataset(f"{lake}/serving_scrapes", partitioning="hive").to_table().to_pylist()
    up = sorted((r["scraped_at"], r["value"], r["prev_scraped_at"]) for r in rows if r["metric"] == "up")
    assert [(v, p) for _, v, p in up] == [(0.0, None), (1.0, None)]  # the failed one moved nothing on


def test_configured_targets_are_checked():
    class S:
        def __init__(self, raw):
            self.raw = raw

        def section(self, name):
            return self.raw.get(name) or {}

    ok = S({"scrape": {"timeout_s": 2, "targets": [{"url": "http://127.0.0.1:1/metrics", "hardware": "cpu"}]}})
    assert scrape.configured_targets(ok) == ([{"url": "http://127.0.0.1:1/metrics", "hardware": "cpu"}], 2.0)
    with pytest.raises(ValueError, match=r"scrape.targets\[0\]: needs url and hardware"):
        scrape.configured_targets(S({"scrape": {"targets": [{"url": "http://x/metrics"}]}}))


def test_scrape_targets_reports_a_target_it_cannot_place_and_scrapes_the_rest(tmp_path):
    class Unlabeled(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n"  # TGI names no model
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unlabeled)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = scrape.scrape_targets([
            {"url": f"http://127.0.0.1:{server.server_address[1]}/metrics", "hardware": "cpu"},
            {"url": f"http://127.0.0.1:{free_port()}/metrics", "hardware": "cpu", "model": "m"}],
            str(tmp_path / "lake"), timeout_s=5)
    finally:
        server.shutdown()
    assert got[0]["up"] is None and "pass --model" in got[0]["error"]
    assert got[1]["up"] is False and got[1]["rows"] == 1
    # One audit entry for the whole call (the mapped DAG task's), the landed rows counted in it.
    from warehouse import audit
    trail = audit.read(str(tmp_path / "lake"))
    assert [(e["command"], e["status"], e["rows_in"]) for e in trail] == [("scrape", "ok", 1)]
    assert json.loads(trail[0]["counts"])["targets"] == 2
