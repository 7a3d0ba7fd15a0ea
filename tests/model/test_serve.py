"""mhw serve: a real HTTP server on 127.0.0.1 running a real checkpoint. Its /metrics parse into the
canonical serving families and agree with what the clients saw; bad requests get 400 with a reason;
the fault switch slows and fails requests as documented; the request log holds every request before
its answer goes out; SIGTERM lets a request in flight finish."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from model import loadgen, serve
from pipelines.localhost import free_port
from warehouse.importers.prometheus import parse


@pytest.fixture(scope="module")
def server(serve_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "requests.jsonl"
    s = serve.start(serve_checkpoint, 0, model="tiny", hardware="cpu-test", request_log=str(log))
    t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield s, f"http://127.0.0.1:{s.server_address[1]}", log
    s.shutdown()
    s.server_close()


def post(url, body, raw: bytes | None = None):
    req = urllib.request.Request(url, data=raw if raw is not None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metrics(url):
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        return parse(r.read().decode())


def total(scrape, metric, **match):
    return sum(s.value for s in scrape.samples if s.metric == metric
               and all(getattr(s, k) == v for k, v in match.items()))


def test_it_listens_on_loopback_only(server):
    s, _, _ = server
    assert s.server_address[0] == "127.0.0.1"


def test_answers_carry_the_timings_the_histograms_observe(server):
    s, url, _ = server
    before = metrics(url)
    res = loadgen.run_load(url, requests=12, concurrency=2, max_tokens=6)
    after = metrics(url)
    ok = res.ok
    # up to 6 tokens each (fewer when the model ends its answer), one gap between each two
    assert len(ok) == 12 and all(1 <= r.output_tokens <= 6 and len(r.itl_ms) == r.output_tokens - 1 for r in ok)
    assert all(r.ttft_ms <= r.e2e_ms for r in ok)
    assert after.server == "vllm" and after.process_start is not None
    grew = lambda m, **k: total(after, m, **k) - total(before, m, **k)  # noqa: E731
    assert grew("requests", status="length") + grew("requests", status="stop") == 12
    assert grew("e2e_seconds_count") == grew("ttft_seconds_count") == 12
    assert grew("itl_seconds_count") == sum(len(r.itl_ms) for r in ok)
    assert grew("e2e_seconds_sum") == pytest.approx(sum(r.e2e_ms for r in ok) / 1e3, rel=1e-9)
    assert grew("itl_seconds_sum") == pytest.approx(sum(sum(r.itl_ms) for r in ok) / 1e3, rel=1e-9)
    assert grew("output_tokens") == sum(r.output_tokens for r in ok)
    assert grew("prompt_tokens") == sum(r.prompt_tokens for r in ok)
    slowest = max(r.e2e_ms for r in ok) / 1e3
    le_first = min(x.le for x in after.samples if x.metric == "e2e_seconds_bucket" and x.le >= slowest)
    assert total(after, "e2e_seconds_bucket", le=le_first) == total(after, "e2e_seconds_count")


def test_bad_requests_get_400_with_the_reason(server):
    _, url, _ = server
    assert post(f"{url}/v1/completions", {"prompt": ""}) == (400, {"error": "'prompt' must be a non-empty string"})
    code, body = post(f"{url}/v1/completions", {"prompt": "1+1=", "max_tokens": 0})
    assert code == 400 and "max_tokens" in body["error"]
    code, body = post(f"{url}/v1/completions", {"prompt": "9" * 40, "max_tokens": 8})
    assert code == 400 and "exceeds the model's context of 32" in body["error"]
    code, body = post(f"{url}/v1/completions", None, raw=b"{not json")
    assert code == 400 and "not JSON" in body["error"]
    scraped = metrics(url)
    assert total(scraped, "requests", status="4xx") >= 4  # vLLM's http_requests_total 4xx, as the scrape reads it


def test_the_fault_switch_slows_and_fails_requests_evenly(server):
    _, url, _ = server
    with pytest.raises(RuntimeError, match="error_rate must be a share"):
        loadgen.set_faults(url, error_rate=2)
    assert loadgen.set_faults(url, delay_ms=80, error_rate=0.25) == {"delay_ms": 80.0, "error_rate": 0.25}
    try:
        res = loadgen.run_load(url, requests=8, concurrency=1, max_tokens=2)
    finally:
        loadgen.set_faults(url, delay_ms=0, error_rate=0)
    assert [r.status for r in res.replies].count(500) == 2  # exactly a quarter, spread evenly
    assert all(r.ttft_ms >= 80 for r in res.ok)  # the slowdown is inside the request's own timings


def test_the_request_log_has_every_request_before_its_answer(server):
    s, url, log = server
    n_before = len(log.read_text().splitlines())
    code, body = post(f"{url}/v1/completions", {"prompt": "12+3=", "max_tokens": 3})
    lines = log.read_text().splitlines()  # read right after the answer: already written
    assert code == 200 and len(lines) == n_before + 1
    row = json.loads(lines[-1])
    assert row["request_id"] == body["id"] and row["status"] == 200
    assert (row["model"], row["hardware"], row["precision"]) == ("tiny", "cpu-test", "fp32")
    gaps = body["timings"]["itl_ms"]
    assert row["e2e_ms"] == body["timings"]["e2e_ms"] and row["output_tokens"] == body["usage"]["completion_tokens"]
    assert row["itl_ms"] == (sum(gaps) / len(gaps) if gaps else None)


def test_the_load_generator_refuses_other_hosts():
    with pytest.raises(ValueError, match="only sends to 127.0.0.1"):
        loadgen.run_load("http://10.1.2.3:8000", requests=1)


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(serve_checkpoint, tmp_path):
    port, log = free_port(), tmp_path / "requests.jsonl"
    proc = serve.spawn(serve_checkpoint, port, str(tmp_path / "serve.log"), request_log=str(log),
                       extra=("--fault-delay-ms", "1500"))
    url = f"http://127.0.0.1:{port}"
    got = {}
    t = threading.Thread(target=lambda: got.update(r=post(f"{url}/v1/completions", {"prompt": "1+2=", "max_tokens": 2})))
    t.start()
    time.sleep(0.5)  # the request is inside its 1.5 s slowdown
    assert serve.stop(proc) == 0
    t.join(10)
    assert got["r"][0] == 200
    assert [json.loads(x)["status"] for x in log.read_text().splitlines()] == [200]
