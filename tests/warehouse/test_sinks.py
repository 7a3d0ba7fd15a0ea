"""The sinks (warehouse/sinks.py): an HTTP sink retries with backoff until a collector that was down
comes up, and its rows land once; a refused batch is given up and said so, never retried forever;
memory stays bounded while nothing answers; the lake sink stores what a flush waits for."""
import logging
import socket
import time

import pytest

from tests.conftest import CollectorProcess
from warehouse.query import connect
from warehouse.sinks import HttpSink, LakeSink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(s: int) -> dict:
    from datetime import datetime, timezone

    return {"run_id": "r", "model": "m", "hardware": "box", "step": s, "ts": datetime(2025, 3, 1, tzinfo=timezone.utc),
            "loss": 1.0 / (s + 1)}


@pytest.mark.slow  # a collector process started late, the sink backing off meanwhile
def test_rows_queued_while_the_collector_is_down_land_once_it_is_up(lake_root):
    port = free_port()
    sink = HttpSink(f"http://127.0.0.1:{port}", "tok", flush_seconds=0.05, backoff_s=(0.05, 0.5))
    w = sink.writer("train_steps", "r-steps", 40)
    for s in range(100):
        w.append(step(s))
    assert not sink.flush(wait=True, timeout=1.0)  # nothing listens: not stored, and the flush says so
    assert sink.stored == 0 and "ConnectionRefused" in sink.last_error
    c = CollectorProcess(lake_root, "tok")
    c.port = port
    c.start()
    try:
        assert sink.flush(wait=True, timeout=60)
        sink.close()
    finally:
        c.stop()
    assert sink.stored == 100 and sink.given_up == sink.dropped == 0
    con = connect(lake_root=lake_root, serving_path="")
    assert con.execute("select count(*), count(distinct step) from train_steps").fetchall() == [(100, 100)]


def test_a_refused_batch_is_given_up_not_retried_forever(collector, caplog):
    sink = HttpSink(collector.url, "not-the-token", flush_seconds=0.05)
    sink.writer("train_steps", "r-steps", 40).append(step(0))
    with caplog.at_level(logging.ERROR, logger="mhw"):
        t0 = time.monotonic()
        assert not sink.flush(wait=True, timeout=30)
        assert time.monotonic() - t0 < 30
        sink.close(timeout=5)
    assert sink.given_up == 1 and sink.stored == 0 and "HTTP 401" in sink.last_error
    assert "refused batch" in caplog.text and "not stored" in caplog.text


def test_memory_stays_bounded_while_nothing_answers(caplog):
    sink = HttpSink(f"http://127.0.0.1:{free_port()}", "tok", flush_seconds=3600, max_rows=100)
    w = sink.writer("train_steps", "r-steps", 40)
    with caplog.at_level(logging.WARNING, logger="mhw"):
        for s in range(1000):
            w.append(step(s))
    assert len(sink._q) == 100 and sink.dropped == 900
    assert "telemetry rows dropped" in caplog.text
    sink.close(timeout=0.5)


def test_the_lake_sink_stores_what_a_flush_waits_for(tmp_path):
    sink = LakeSink(str(tmp_path / "lake"), flush_seconds=3600)  # only flushes write
    w = sink.writer("train_steps", "r-steps", 40)
    for s in range(50):
        w.append(step(s))
    assert sink.flush(wait=True, timeout=60)
    con = connect(lake_root=str(tmp_path / "lake"), serving_path="")
    assert con.execute("select count(*) from train_steps").fetchall() == [(50,)]
    assert sorted(p.name for p in (tmp_path / "lake").rglob("*.parquet")) == \
        ["r-steps-b000000000.parquet", "r-steps-b000000001.parquet"]
    sink.close()


def test_a_batch_over_the_collectors_body_limit_is_split_and_lands_whole(collector, lake_root):
    sink = HttpSink(collector.url, collector.token, flush_seconds=3600, max_body=3000)  # ~10 rows a post
    w = sink.writer("train_steps", "r-steps", 40)
    for s in range(100):
        w.append(step(s))
    assert sink.flush(wait=True, timeout=60)
    sink.close()
    con = connect(lake_root=lake_root, serving_path="")
    assert con.execute("select count(*), count(distinct step) from train_steps").fetchall() == [(100, 100)]
    assert sink.stored == 100 and sink.given_up == 0
