"""``mhw collect`` (warehouse/collector.py), a real process on 127.0.0.1: a bad token is refused, bad
rows are quarantined with their reasons while the batch's good rows are stored, a retried batch lands
once, and concurrent clients (real processes, N x M steps) land every row once through a SIGKILL of
the collector and its restart."""
import http.client
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warehouse import audit
from warehouse.collector import batch_key
from warehouse.query import connect

REPO = Path(__file__).resolve().parents[2]


def post(c, body, token: str | None = None, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    conn.request("POST", "/v1/batches", body=data, headers=h)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, json.loads(out) if out else {}


def rows(lake_root, sql):
    return connect(lake_root=lake_root, serving_path="").execute(sql).fetchall()


def step(run, s, **kw):
    return {"run_id": run, "model": "m", "hardware": "box", "step": s, "ts": f"2025-03-01T12:00:{s:02d}Z", **kw}


def test_a_bad_or_missing_token_is_refused_and_nothing_is_stored(collector, lake_root):
    batch = {"batch": "b", "writes": [{"table": "train_steps", "key": "r-steps-b0", "rows": [step("r", 0, loss=1.0)]}]}
    for token in (None, "wrong", collector.token + "x", ""):
        status, answer = post(collector, batch, token)
        assert status == 401 and "Authorization" in answer["error"], (token, status, answer)
    status, _ = post(collector, batch, headers={"Authorization": f"Basic {collector.token}"})
    assert status == 401
    assert not os.path.exists(os.path.join(lake_root, "train_steps"))
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
    conn.request("GET", "/v1/health")
    assert conn.getresponse().status == 200  # says nothing but that it is up


def test_bad_rows_are_quarantined_with_reasons_and_the_good_ones_stored(collector, lake_root):
    batch = {"batch": "client-1-000000001", "writes": [
        {"table": "train_steps", "key": "r1-steps-b000000000", "rows": [
            step("r1", 0, loss=1.5), step("r1", 1, loss=math.nan),         # NaN is data: stored
            step("r1", 2, loss="high"),                                      # 3: wrong type
            step("r1", 3, loss=1.0, colour="red"),                           # 4: unknown field
            {"run_id": "r1", "model": "m", "hardware": "box", "ts": "2025-03-01T12:00:00Z"},  # 5: no step
            step("r1", 4, model="../etc"),                                   # 6: not a slug
            step("r2", 5),                                                   # 7: another run's key
            "not a row"]},                                                   # 8: not an object
        {"table": "alerts", "key": "r1-a", "rows": [{"alert_id": "x"}]},    # 9: not a table a run writes
        {"table": "runs", "key": "ingest-run-0123", "rows": [{"run_id": "ingest-run-0123"}]},  # 10: reserved
        {"table": "step_metrics", "key": "r1-metrics-b000000000", "rows": [
            {**step("r1", 0), "metric": "tokens", "value": 128}]},         # 11: stored
        {"table": "runs", "key": "r1", "rows": "nope"},                     # 12: rows not a list
    ]}
    body = json.dumps(batch).encode()  # json writes NaN as the NaN token, as the client does
    status, answer = post(collector, body, collector.token)
    assert status == 200, answer
    assert answer["rows"] == {"train_steps": 2, "step_metrics": 1} and answer["rejected"] == 9
    got = rows(lake_root, "select step, loss from train_steps order by step")
    assert got[0] == (0, 1.5) and got[1][0] == 1 and math.isnan(got[1][1]) and len(got) == 2
    assert rows(lake_root, "select step, metric, value from step_metrics") == [(0, "tokens", 128.0)]
    q = rows(lake_root, "select line, target_table, field, reason, source, raw from quarantine order by line")
    assert [(line, t, f) for line, t, f, *_ in q] == [
        (3, "train_steps", "loss"), (4, "train_steps", "colour"), (5, "train_steps", "step"),
        (6, "train_steps", "model"), (7, "train_steps", "run_id"), (8, "train_steps", None),
        (9, None, "table"), (10, "runs", "key"), (12, "runs", "rows")]
    reasons = {line: reason for line, _, _, reason, *_ in q}
    assert reasons[3].startswith("wrong type: expected a number, got string 'high'")
    assert reasons[4].startswith("unknown field") and reasons[5].startswith("missing required field")
    assert reasons[6].startswith("not a slug") and "is not run 'r2''s" in reasons[7]
    assert reasons[9].startswith("unknown table") and reasons[10].startswith("reserved key")
    assert all(src == f"collector: batch client-1-000000001 from 127.0.0.1" for *_, src, _ in q)
    assert json.loads(q[0][5])["loss"] == "high"  # the row as received, for repair and replay
    files = sorted(p.name for p in Path(lake_root, "quarantine").rglob("*.parquet"))
    assert files == [f"{batch_key('client-1-000000001')}.parquet"]

    # the answer was lost: the client posts the same batch again, and the lake does not change
    def state():
        return [rows(lake_root, f"select * exclude (ingested_at) from {t} order by all") if t == "quarantine" else
                rows(lake_root, f"select * from {t} order by all") for t in ("train_steps", "step_metrics", "quarantine")]
    before = state()
    assert post(collector, body, collector.token)[0] == 200
    assert repr(state()) == repr(before)  # repr: NaN == NaN

    # One audit entry for the collector's run: running while it serves, its counts once stopped.
    (entry,) = audit.read(lake_root)
    assert (entry["command"], audit.outcome(entry)) == ("collect", "running")
    collector.stop()
    (entry,) = audit.read(lake_root)
    assert (entry["status"], entry["rows_in"], entry["rows_quarantined"]) == ("ok", 6, 18)


def test_a_body_that_is_not_a_batch_is_refused_whole(collector, lake_root):
    assert post(collector, b"{not json", collector.token)[0] == 400
    assert post(collector, {"writes": "x", "batch": "b"}, collector.token)[0] == 400
    assert post(collector, {"writes": []}, collector.token)[0] == 400  # no batch id: no key for its rejects
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
    conn.putrequest("POST", "/v1/batches")
    conn.putheader("Authorization", f"Bearer {collector.token}")
    conn.putheader("Content-Length", str(10 ** 12))  # refused on its header, before a byte is read
    conn.endheaders()
    assert conn.getresponse().status == 413
    assert not os.path.exists(lake_root) or not os.listdir(lake_root) or \
        not os.path.exists(os.path.join(lake_root, "quarantine"))


CLIENT = """
import sys, time, mhw
url, run_id, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
with mhw.start_run("load-model", run_id=run_id, collector=url, hardware="test-box", system_interval_s=None,
                   flush_seconds=0.05, block_rows=40) as run:
    for s in range(steps):
        run.log(s, loss=1.0 / (s + 1), lr=1e-3, seen=s * 64)
        time.sleep(0.004)
sink = run.telemetry.sink
print("stored", sink.stored, "given_up", sink.given_up, "dropped", sink.dropped, flush=True)
"""


@pytest.mark.slow  # real client processes, the collector killed and restarted
def test_concurrent_clients_land_every_row_once_through_a_sigkill_of_the_collector(collector, lake_root, tmp_path):
    n_clients, n_steps = 4, 150
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "MHW_COLLECTOR_TOKEN": collector.token}
    env.pop("MHW_LAKE")  # the clients cannot write the lake: only the collector can
    clients = [subprocess.Popen([sys.executable, str(script), collector.url, f"load-{i}", str(n_steps)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
               for i in range(n_clients)]
    try:
        deadline = time.monotonic() + 120
        while not list(Path(lake_root, "train_steps").rglob("*.parquet")):  # some batches acknowledged
            assert time.monotonic() < deadline, "no batch stored in 120 s"
            time.sleep(0.05)
        collector.kill()  # SIGKILL: mid-batch or between batches, whatever the moment
        killed_with = len(rows(lake_root, "select * from train_steps"))
        time.sleep(1.0)  # the clients' posts fail meanwhile and are retried with backoff
        collector.start()  # the same port
        outs = [c.communicate(timeout=240) for c in clients]
    finally:
        for c in clients:
            c.kill()
    for c, (out, err) in zip(clients, outs):
        assert c.returncode == 0 and "given_up 0 dropped 0" in out, err[-2000:]
    assert killed_with < n_clients * n_steps  # the kill came while rows were still arriving
    got = rows(lake_root, "select run_id, count(*), count(distinct step), min(step), max(step), "
                          "sum(loss) from train_steps group by run_id order by run_id")
    expected_loss = sum(1.0 / (s + 1) for s in range(n_steps))
    assert [g[:5] for g in got] == [(f"load-{i}", n_steps, n_steps, 0, n_steps - 1) for i in range(n_clients)]
    assert all(g[5] == pytest.approx(expected_loss) for g in got)
    assert rows(lake_root, "select count(*), count(distinct (run_id, step)) from step_metrics") == \
        [(n_clients * n_steps, n_clients * n_steps)]
    assert rows(lake_root, "select status, count(*) from runs group by status") == [("completed", n_clients)]
    assert rows(lake_root, "select count(*) from quarantine") == [(0,)]
    assert not os.path.isdir(os.path.join(lake_root, "_txn")) or not os.listdir(os.path.join(lake_root, "_txn"))


def test_the_first_start_writes_a_private_token_file_and_never_prints_the_token(tmp_path, lake_root):
    from tests.conftest import CollectorProcess

    conf = tmp_path / "mhw.yaml"
    conf.write_text(f"lake:\n  root: {lake_root}\ncollector:\n  token_file: secrets/collector.token\n")
    c = CollectorProcess(lake_root, "", env={"MHW_CONFIG": str(conf)})
    del c.env["MHW_COLLECTOR_TOKEN"]
    c.start()
    try:
        token_file = tmp_path / "secrets" / "collector.token"
        token = token_file.read_text().strip()
        assert len(token) >= 40 and oct(token_file.stat().st_mode & 0o777) == "0o600"
        assert oct(token_file.parent.stat().st_mode & 0o777) == "0o700"
        c.token = token
        batch = {"batch": "b", "writes": [{"table": "train_steps", "key": "r-steps-b0", "rows": [step("r", 0, loss=1.0)]}]}
        assert post(c, batch, token)[0] == 200
    finally:
        out = c.stop()
    assert token not in c.banner + out and str(token_file) in c.banner
    c2 = CollectorProcess(lake_root, "", env={"MHW_CONFIG": str(conf)})  # a restart keeps the token
    del c2.env["MHW_COLLECTOR_TOKEN"]
    c2.start()
    try:
        assert token_file.read_text().strip() == token and post(c2, batch, token)[0] == 200
    finally:
        c2.stop()
