"""The audit trail (warehouse/audit.py): every lake-changing command leaves exactly one entry in the
lake table audit_log, with its counts, also when it fails; a command SIGKILLed midway leaves an entry
that never claims success (``started``, listed as ``killed``); `mhw audit-log` lists them; the build
serves them (audit_trail) and their changes alone make no rebuild. Real commands, real processes."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from mhw import cli
from pipelines.build import build
from pipelines.diagnose import diagnose
from pipelines.maintenance import run_maintenance
from warehouse import audit
from warehouse.simulate import simulate
from warehouse.writer import Lake

MHW = Path(sys.executable).parent / "mhw"
UTC = dt.timezone.utc


def steps(n: int, model: str = "gpt2-a", day: str = "2026-11-02", run: str = "r1") -> list[str]:
    return [json.dumps({"table": "train_steps", "run_id": run, "model": model, "hardware": "cpu-x1", "step": i,
                        "ts": f"{day}T10:00:{i % 60:02d}Z", "loss": 3.0 - i / 100}) for i in range(n)]


def entries(lake: str) -> list[dict]:
    return audit.read(lake)


def only(lake: str, command: str) -> dict:
    found = [e for e in entries(lake) if e["command"] == command]
    assert len(found) == 1, [(e["command"], e["status"]) for e in entries(lake)]
    return found[0]


def test_an_ingest_leaves_one_entry_with_its_rows_and_quarantined_rows(lake_root, tmp_path):
    log = tmp_path / "steps.jsonl"
    log.write_text("\n".join(steps(7) + ['{"table": "train_steps", "loss": "abc"}', "not json"]) + "\n")
    assert cli.main(["ingest", str(log)]) == 0
    e = only(lake_root, "ingest")
    assert e["status"] == "ok" and e["exit_code"] == 0 and e["error"] is None
    assert (e["rows_in"], e["rows_quarantined"]) == (7, 2)
    assert json.loads(e["args"])["paths"] == [str(log)]
    assert e["user"] and e["pid"] == os.getpid() and e["duration_s"] >= 0 and e["ended_at"] >= e["started_at"]
    # The entry's counts are the lake's: 7 steps stored, 2 rows in quarantine.
    con = duckdb.connect()
    n = con.execute(f"select count(*) from read_parquet('{lake_root}/train_steps/**/*.parquet')").fetchone()[0]
    q = con.execute(f"select count(*) from read_parquet('{lake_root}/quarantine/**/*.parquet')").fetchone()[0]
    assert (n, q) == (7, 2)
    # Re-ingesting the same file replaces its own rows: another entry, the same counts.
    assert cli.main(["ingest", str(log)]) == 0
    assert [(x["rows_in"], x["rows_quarantined"]) for x in entries(lake_root)] == [(7, 2), (7, 2)]


def test_a_failed_ingest_leaves_one_failed_entry_naming_why(lake_root, tmp_path):
    assert cli.main(["ingest", str(tmp_path / "missing.jsonl")]) == 2
    e = only(lake_root, "ingest")
    assert e["status"] == "failed" and e["exit_code"] == 2
    assert "missing.jsonl" in e["error"] and "no such file" in e["error"]
    with pytest.raises(SystemExit):  # refused inside run(): the entry says so too
        cli.main(["ingest", str(tmp_path / "a"), str(tmp_path / "b"), "--source-name", "x"])
    last = entries(lake_root)[-1]
    assert last["status"] == "failed" and "--source-name names one input" in last["error"]


def test_build_diagnose_and_maintenance_leave_one_entry_each_with_their_counts(lake_root, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    totals = simulate(lake_root, 2000, seed=3, days=4, incident_rate=0.5, serving_requests=16)
    d = diagnose(lake_root, notify_alerts=False)
    b = build(lake_root, serving)
    old = Lake(lake_root)
    # Two old partitions for retention, and six small files in one partition for compaction.
    for day, n in (("2025-01-01", 3), ("2025-01-02", 2)):
        for k in range(n):
            old.write("system_samples", pa.table({
                "run_id": ["x"], "ts": [dt.datetime.fromisoformat(f"{day}T00:00:0{k}+00:00")], "device": ["cpu"],
                "util": [1.0], "model": ["m"], "hardware": ["h"]}), f"old-{day}-{k}")
    m = run_maintenance(lake_root, {"retention_days": {"system_samples": 30}, "compact_min_files": 4}, min_age_s=0)
    by = {e["command"]: e for e in entries(lake_root)}
    assert [e["command"] for e in entries(lake_root)] == ["simulate", "diagnose", "build", "maintenance"]
    assert all(e["status"] == "ok" for e in by.values())
    assert by["simulate"]["rows_in"] == sum(totals.values())
    assert json.loads(by["simulate"]["counts"])["train_steps"] == totals["train_steps"]
    assert by["diagnose"]["alerts_new"] == len(d.new) > 0
    assert by["build"]["partitions"] == sum(b.rebuilt.values()) > 0
    assert json.loads(by["build"]["counts"])["full"] is True
    counts = json.loads(by["maintenance"]["counts"])
    assert counts["retention_files_deleted"] == 5 and counts["retention_partitions"] == 2
    assert by["maintenance"]["files_deleted"] == 5 + m.files_before - m.files_after
    assert by["maintenance"]["partitions"] == 2 + m.compacted_partitions


def test_a_command_that_raises_leaves_a_failed_entry_with_the_error(lake_root):
    with pytest.raises(ValueError, match="fact tables only"):
        run_maintenance(lake_root, {"retention_days": {"alerts": 1}})
    e = only(lake_root, "maintenance")
    assert e["status"] == "failed" and e["exit_code"] == 1
    assert e["error"].startswith("ValueError: retention applies to fact tables only")


def test_an_audited_call_inside_another_is_part_of_its_entry(lake_root):
    with audit.entry(lake_root, "repair", args={"what": "test"}) as e:
        simulate(lake_root, 300, seed=1, days=1, serving_requests=4)
        audit.record(partitions=2)
    (only_entry,) = entries(lake_root)
    assert only_entry["command"] == "repair" and only_entry["status"] == "ok"
    assert only_entry["rows_in"] == e.counts["rows_in"] > 0 and only_entry["partitions"] == 2


def test_an_entry_that_cannot_be_written_stops_the_command(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the lake should be")
    ran = []
    with pytest.raises(RuntimeError, match="cannot write its audit entry"):
        with audit.entry(str(blocked), "ingest"):
            ran.append(True)
    assert not ran


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_sigkilled_command_never_claims_success(lake_root, tmp_path):
    """`mhw ingest` of a pipe, killed while it waits for the writer (its start entry written, nothing
    of its own committed), and `mhw simulate`, killed while it writes lake files: each leaves one
    entry, `started`, that `mhw audit-log` shows as killed; the next command's entry is its own."""
    env = {**os.environ, "MHW_LAKE": lake_root}
    fifo = tmp_path / "steps.fifo"
    os.mkfifo(fifo)
    p = subprocess.Popen([str(MHW), "ingest", str(fifo)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: any(e["command"] == "ingest" for e in entries(lake_root)))
    assert audit.outcome(only(lake_root, "ingest")) == "running"
    p.send_signal(signal.SIGKILL)
    p.wait()
    sim = subprocess.Popen([str(MHW), "simulate", "--rows", "200000", "--out", lake_root], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: any(Path(lake_root, "train_steps").rglob("*.parquet")) or sim.poll() is not None)
    sim.send_signal(signal.SIGKILL)
    sim.wait()
    assert sim.returncode == -signal.SIGKILL, "simulate ended before it was killed: give it more rows"
    killed = entries(lake_root)
    assert [(e["command"], e["status"]) for e in killed] == [("ingest", "started"), ("simulate", "started")]
    assert all(e["ended_at"] is None and e["exit_code"] is None and audit.outcome(e) == "killed" for e in killed)
    # The next command recovers the lake (rolls back what the kill left) and has its own entry.
    out = subprocess.run([str(MHW), "ingest", "-"], input="\n".join(steps(3)) + "\n", env=env, text=True,
                         capture_output=True, check=True)
    assert "train_steps" in out.stdout
    listed = subprocess.run([str(MHW), "audit-log", "--format", "json"], env=env, text=True,
                            capture_output=True, check=True).stdout.splitlines()
    rows = [json.loads(line) for line in listed]
    assert [(r["command"], r["outcome"]) for r in rows] == [("ingest", "ok"), ("simulate", "killed"),
                                                            ("ingest", "killed")]
    killed_only = subprocess.run([str(MHW), "audit-log", "--status", "killed"], env=env, text=True,
                                 capture_output=True, check=True).stdout
    assert "simulate" in killed_only and "(2 rows)" in killed_only


def test_entries_of_concurrent_commands_are_each_whole(lake_root):
    """Eight writers at once (threads of one process and their own transactions): eight entries."""
    errors = []

    def one(i):
        try:
            with audit.entry(lake_root, "repair", args={"i": i}) as e:
                e.record(rows_in=i)
        except Exception as x:  # noqa: BLE001
            errors.append(x)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(e["rows_in"] for e in entries(lake_root)) == list(range(8))
    assert {e["status"] for e in entries(lake_root)} == {"ok"}


def test_the_build_serves_the_trail_and_its_changes_alone_rebuild_nothing(lake_root, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    simulate(lake_root, 500, seed=2, days=2, serving_requests=4)
    first = build(lake_root, serving)
    again = build(lake_root, serving)  # only the audit log changed (the first build's own entry)
    assert not again.full and again.rebuilt == {} and again.serving_mode == "unchanged"
    con = duckdb.connect(serving, read_only=True)
    served = con.execute("select entry_id, command, status, rows_in from audit_trail order by started_at").fetchall()
    con.close()
    lake = entries(lake_root)
    # Served as of the first build: the simulate (ok) and that build itself, still started.
    assert served == [(lake[0]["entry_id"], "simulate", "ok", lake[0]["rows_in"]),
                      (lake[1]["entry_id"], "build", "started", None)]
    assert [e["command"] for e in lake] == ["simulate", "build", "build"] and first.rebuilt
    # With other work, the next build serves the trail as it is then.
    simulate(lake_root, 200, seed=5, days=1, serving_requests=4)
    build(lake_root, serving)
    con = duckdb.connect(serving, read_only=True)
    statuses = con.execute("select command, status from audit_trail order by started_at").fetchall()
    con.close()
    assert statuses == [("simulate", "ok"), ("build", "ok"), ("build", "ok"), ("simulate", "ok"), ("build", "started")]
