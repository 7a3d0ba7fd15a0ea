"""Per-request serving logs (warehouse/importers/serving_log.py) through mhw ingest: detected by their
first line, statuses classed as scrapes class them, a list of gaps averaged, flags filling what lines
leave out, foreign fields dropped with a note, bad lines quarantined with line and reason, and a
re-ingest of the grown file replacing its own rows."""
from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from warehouse import cli
from warehouse.importers import detect


def rows(lake, table):
    try:
        return ds.dataset(f"{lake}/{table}", partitioning="hive").to_table().to_pylist()
    except FileNotFoundError:
        return []


LINES = [
    {"model": "org/llama-8b", "hardware": "h100-x1", "ts": "2026-02-01T10:00:00Z", "status": 200, "e2e_ms": 812.4,
     "ttft_ms": 95.1, "itl_ms": [20.0, 24.0], "prompt_tokens": 412, "output_tokens": 3, "user": "u1"},
    {"model": "org/llama-8b", "ts": "2026-02-01T10:00:01Z", "status": "503", "e2e_ms": 3.2},
    {"model": "org/llama-8b", "ts": "2026-02-01T10:00:02Z", "status": "abort", "e2e_ms": 1000.0},
    {"model": "org/llama-8b", "ts": "2026-02-01T10:00:03Z", "status": 429, "e2e_ms": "fast"},
]


def test_a_request_log_is_detected_classed_and_quarantined_line_by_line(tmp_path, capsys):
    log = tmp_path / "requests.log"
    log.write_text("\n".join(json.dumps(x) for x in LINES) + "\n{broken\n")
    assert detect(str(log)) == "serving-log"
    lake = str(tmp_path / "lake")
    assert cli.main(["ingest", str(log), "--lake", lake, "--hardware", "a100-x1", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "[serving-log]: 3 rows (serving_requests 3), 2 rejected" in out
    assert "fields that are not serving_requests columns were dropped: user" in out
    got = sorted(rows(lake, "serving_requests"), key=lambda r: r["ts"])
    assert [(r["status"], r["status_class"]) for r in got] == [("200", "ok"), ("503", "server_error"),
                                                                ("abort", "error")]
    assert [r["hardware"] for r in got] == ["h100-x1", "a100-x1", "a100-x1"]  # the flag fills, never overrides
    assert {r["model"] for r in got} == {"org--llama-8b"} and {r["precision"] for r in got} == {"bf16"}
    assert got[0]["itl_ms"] == 22.0
    q = sorted(rows(lake, "quarantine"), key=lambda r: r["line"])
    assert [(r["line"], r["field"]) for r in q] == [(4, "e2e_ms"), (5, None)]
    assert "invalid JSON" in q[1]["reason"]


def test_a_grown_log_ingested_again_replaces_its_own_rows(tmp_path):
    log, lake = tmp_path / "requests.jsonl", str(tmp_path / "lake")
    log.write_text(json.dumps(LINES[1] | {"hardware": "cpu"}) + "\n")
    assert cli.main(["ingest", str(log), "--lake", lake]) == 0
    with open(log, "a") as f:
        f.write(json.dumps(LINES[2] | {"hardware": "cpu"}) + "\n")
    assert cli.main(["ingest", str(log), "--lake", lake]) == 0
    assert sorted(r["status"] for r in rows(lake, "serving_requests")) == ["503", "abort"]


@pytest.mark.parametrize("first, fmt", [({"table": "serving_requests", "e2e_ms": 1.0}, "jsonl"),
                                        ({"e2e_ms": 1.0}, "serving-log"), ({"loss": 1.0}, "jsonl")])
def test_detection_needs_e2e_ms_and_no_table(tmp_path, first, fmt):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(first) + "\n")
    assert detect(str(p)) == fmt
