"""mhw diagnose as a job: idempotent re-runs (no duplicate alerts, no re-notification), incremental
scope, the webhook notifier against a local HTTP server, --fail-on, mhw alerts, config validation,
the SQL style of the rules, and the alert_health cube."""
import datetime as dt
import http.server
import json
import math
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
import yaml
from sqlglot import exp

from pipelines import alerts as alerts_mod
from pipelines.diagnose import (CONTRACT, HEADER_KEYS, NAMING, ConfigError, diagnose, load_config, load_rules, parse_header,
                                 render)
from pipelines.models import to_spark
from warehouse import cli
from warehouse.query import connect
from warehouse.simulate import simulate
from warehouse.writer import Lake


class Recorder:
    min_severity = "info"

    def __init__(self):
        self.batches = []

    def send(self, alerts):
        self.batches.append([a["alert_id"] for a in alerts])


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("diag") / "lake")
    simulate(root, 20_000, seed=2, days=6, incident_rate=0.7, fleet_incidents=1, serving_requests=120)
    return root


@pytest.fixture
def lake(base_lake, tmp_path):
    root = str(tmp_path / "lake")
    shutil.copytree(base_lake, root)
    return root


def overlay(tmp_path, conf: dict) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


def alert_files(lake) -> dict[str, tuple[int, list]]:
    """Each alert file: (its mtime, its rows, comparable: NaN equal to NaN)."""
    import pyarrow.parquet as pq
    return {p: (os.stat(p).st_mtime_ns, sorted(repr(sorted(r.items())) for r in pq.read_table(p).to_pylist()))
            for ps in Lake(lake).list_files("alerts").values() for p in ps}


def checkpoint_is_the_files(lake) -> bool:
    """The alerts checkpoint, as a write left it, covers every alert file (a read opens none of them)
    and holds their rows: what a write brought up to date from the rows it wrote, not from a read."""
    from warehouse.schemas import ALERTS

    def rows(alerts):  # comparable, NaN included
        return sorted(sorted((k, repr(v)) for k, v in a.items()) for a in alerts)

    found = alerts_mod.stored(Lake(lake))
    return not found.stale and rows(found.rows()) == rows(alerts_mod.read_rows(Lake(lake), ALERTS))


@pytest.mark.slow  # three full diagnoses
def test_rerun_never_duplicates_nor_renotifies(lake):
    rec = Recorder()
    first = diagnose(lake, notifiers=[rec])
    assert first.full and first.alerts and len(first.new) == len(first.alerts) == first.total
    assert len(rec.batches) == 1 and sorted(rec.batches[0]) == sorted(a["alert_id"] for a in first.alerts)
    stored = {a["alert_id"]: a for a in alerts_mod.read_alerts(Lake(lake))}
    assert len(stored) == first.total and all(a["notified_at"] is not None for a in stored.values())

    again = diagnose(lake, notifiers=[rec])  # nothing changed: nothing recomputed, nothing sent
    assert (again.full, again.runs_in_scope, again.pairs_in_scope, again.alerts, again.notified) == (False, 0, 0, [], 0)
    files = alert_files(lake)
    full = diagnose(lake, notifiers=[rec], full=True)  # everything recomputed: same alerts, none new
    assert sorted(a["alert_id"] for a in full.alerts) == sorted(stored) and full.new == [] and full.notified == 0
    # and a file is rewritten only where its rows changed (a float's last bit can: DuckDB sums in
    # whatever order its threads finish), so the builds that read the alerts have little to redo
    now = alert_files(lake)
    rewritten = [p for p in now if now[p][0] != files[p][0]]
    assert set(now) == set(files) and len(rewritten) < len(files) / 4
    assert all(now[p][1] != files[p][1] for p in rewritten)
    assert checkpoint_is_the_files(lake)
    assert len(rec.batches) == 1
    after = {a["alert_id"]: a for a in alerts_mod.read_alerts(Lake(lake))}
    assert set(after) == set(stored)
    assert all(after[k]["detected_at"] == stored[k]["detected_at"] for k in after)
    con = connect(lake_root=lake, serving_path="")
    assert con.execute("select count(*), count(distinct alert_id) from alerts").fetchall() == [(len(stored),) * 2]


@pytest.mark.slow  # two diagnoses, one of them full
def test_only_what_changed_is_recomputed(lake):
    first = diagnose(lake, notify_alerts=False)
    runs_total = first.runs_in_scope
    # a new run lands in a partition that already holds runs: it diverges at step 40
    con = connect(lake_root=lake, serving_path="")
    model, hardware, day, n_there = con.execute(
        "select model, hardware, date, count(distinct run_id) n from train_steps group by all order by n desc, model, hardware, date "
        "limit 1").fetchall()[0]
    n = 120
    start = dt.datetime.combine(day, dt.time(23, 0), dt.timezone.utc)
    ts = [start + dt.timedelta(seconds=i) for i in range(n)]
    loss = [3.0 - i * 0.001 if i < 40 else math.nan for i in range(n)]
    Lake(lake).write("train_steps", pa.table({
        "run_id": ["late-run"] * n, "step": list(range(n)), "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "precision": ["bf16"] * n, "loss": loss, "model": [model] * n, "hardware": [hardware] * n}), "late-run")
    second = diagnose(lake, notify_alerts=False)
    # the new run (its file is the one new file: the partition's other runs are not read again) and its
    # model x hardware pair, nothing else
    assert n_there >= 1 and not second.full and second.pairs_in_scope == 1 and second.runs_in_scope == 1 < runs_total
    assert [(a["rule"], a["run_id"], a["step_start"]) for a in second.new] == [("divergence", "late-run", 40)]
    stored = alerts_mod.read_alerts(Lake(lake))
    assert len(stored) == first.total + 1 == second.total
    assert len({a["alert_id"] for a in stored}) == len(stored)
    assert checkpoint_is_the_files(lake)


@pytest.mark.slow  # two diagnoses
def test_alerts_read_through_their_checkpoint_are_the_files_own_rows(lake):
    """pipelines/alerts.py's checkpoint: after a diagnose it covers every alert file (a read opens
    none of them), and whatever changes the files behind its back -- a file rewritten by another
    writer, one deleted, the checkpoint itself garbled -- a read returns the files' own rows."""
    import pyarrow.parquet as pq

    from warehouse.schemas import ALERTS

    def rows(alerts):  # comparable, NaN included
        return sorted(sorted((k, repr(v)) for k, v in a.items()) for a in alerts)

    lk = Lake(lake)
    diagnose(lake, notify_alerts=False)
    assert alerts_mod.stored(lk).stale is False  # nothing to read but the checkpoint
    assert rows(alerts_mod.read_alerts(lk)) == rows(alerts_mod.read_rows(lk, ALERTS)) != []
    files = sorted(p for ps in lk.list_files("alerts").values() for p in ps)
    rewritten, deleted = files[0], files[-1]
    t = pq.read_table(rewritten)
    pq.write_table(t.set_column(t.schema.get_field_index("message"), "message",
                                pa.array(["rewritten"] * t.num_rows, pa.string())), rewritten)
    lk.delete(deleted)
    by_files = alerts_mod.read_rows(lk, ALERTS)
    assert "rewritten" in {a["message"] for a in by_files}
    assert rows(alerts_mod.read_alerts(lk)) == rows(by_files)
    assert {a["rule"] for a in alerts_mod.read_alerts(lk, {"divergence"})} <= {"divergence"}
    assert rows(alerts_mod.read_alerts(lk, {"divergence"})) == rows(a for a in by_files if a["rule"] == "divergence")
    (Path(lake) / alerts_mod.CHECKPOINT).write_bytes(b"not parquet")
    assert rows(alerts_mod.read_alerts(lk)) == rows(by_files)
    diagnose(lake, notify_alerts=False)  # the next write brings the checkpoint up to the files
    assert alerts_mod.stored(lk).stale is False
    assert rows(alerts_mod.read_alerts(lk)) == rows(alerts_mod.read_rows(lk, ALERTS))


class Hook(http.server.BaseHTTPRequestHandler):
    bodies: list = []
    fail_next = 0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Hook.fail_next:
            Hook.fail_next -= 1
            self.send_response(500)
            self.end_headers()
            return
        Hook.bodies.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    Hook.bodies, Hook.fail_next = [], 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # three diagnoses notifying a local HTTP server
def test_webhook_posts_new_alerts_once(lake, tmp_path, hook, monkeypatch):
    monkeypatch.setenv("TEST_HOOK", hook)
    conf = overlay(tmp_path, {"notify": [{"type": "webhook", "url": "${TEST_HOOK}", "min_severity": "info"}]})
    first = diagnose(lake, config_path=conf)
    assert len(Hook.bodies) == 1
    posted = Hook.bodies[0]["alerts"]
    assert sorted(a["alert_id"] for a in posted) == sorted(a["alert_id"] for a in first.alerts)
    assert Hook.bodies[0]["summary"]["n_alerts"] == len(posted)
    a = posted[0]
    assert {"rule", "severity", "model", "hardware", "message", "action", "observed", "expected", "start_at"} <= set(a)
    dt.datetime.fromisoformat(a["start_at"])
    diagnose(lake, config_path=conf)
    diagnose(lake, config_path=conf, full=True)
    assert len(Hook.bodies) == 1  # never re-sent


@pytest.mark.slow  # three diagnoses notifying a local HTTP server
def test_a_failed_webhook_is_retried_on_the_next_run(lake, tmp_path, hook):
    conf = overlay(tmp_path, {"notify": [{"type": "webhook", "url": hook, "min_severity": "warning", "timeout_s": 5}]})
    Hook.fail_next = 1
    first = diagnose(lake, config_path=conf)
    assert first.notify_errors and first.notified == 0 and Hook.bodies == []
    assert all(a["notified_at"] is None for a in alerts_mod.read_alerts(Lake(lake)))
    second = diagnose(lake, config_path=conf)  # no new data: only the pending alerts are sent
    assert second.alerts == [] and not second.notify_errors and second.notified == first.total
    sent = Hook.bodies[0]["alerts"]
    assert sent and {a["severity"] for a in sent} <= {"warning", "critical"}  # min_severity applies
    assert len(sent) == sum(a["severity"] != "info" for a in first.alerts)
    diagnose(lake, config_path=conf)
    assert len(Hook.bodies) == 1


@pytest.mark.slow  # three diagnoses through the CLI
def test_fail_on_exit_code(lake, monkeypatch, capsys):
    monkeypatch.setenv("MHW_LAKE", lake)
    assert cli.main(["diagnose", "--full", "--no-notify", "--quiet", "--fail-on", "critical"]) == 1
    assert "open alert(s) at or above critical" in capsys.readouterr().err
    assert "critical" in {a["severity"] for a in alerts_mod.read_alerts(Lake(lake))}
    assert cli.main(["diagnose", "--no-notify", "--quiet", "--fail-on", "critical"]) == 1  # nothing new, still open
    assert cli.main(["diagnose", "--full", "--no-notify", "--quiet"]) == 0  # fail_on: null by default


def test_mhw_alerts_lists_and_filters(lake, monkeypatch, capsys):
    monkeypatch.setenv("MHW_LAKE", lake)
    found = diagnose(lake, notify_alerts=False).alerts
    capsys.readouterr()
    assert cli.main(["alerts", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["alert_id"] for r in rows) == sorted(a["alert_id"] for a in found)
    assert [r["start_at"] for r in rows] == sorted((r["start_at"] for r in rows), reverse=True)
    rule = found[0]["rule"]
    assert cli.main(["alerts", "--format", "json", "--rule", rule, "--since", "2026-11-01"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {r["rule"] for r in rows} == {rule}
    assert cli.main(["alerts", "--severity", "critical", "--since", "2030-01-01"]) == 0
    assert "(0 rows)" in capsys.readouterr().out
    assert cli.main(["alerts", "--severity", "warning", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == sum(a["severity"] != "info" for a in found) and {r["severity"] for r in rows} <= {"warning", "critical"}
    assert cli.main(["alerts"]) == 0
    assert f"({len(found)} rows)" in capsys.readouterr().out
    # in a process of its own, as a user runs it: the same alerts, and pandas never imported (pyarrow
    # imports it on a first conversion: half the command's time), through the checkpoint or without it
    import subprocess
    import sys
    code = ("import sys; from warehouse import cli; rc = cli.main(sys.argv[1:]); "
            "print('pandas' in sys.modules, file=sys.stderr); sys.exit(rc)")
    for checkpoint in (True, False):
        if not checkpoint:
            (Path(lake) / alerts_mod.CHECKPOINT).unlink()
        p = subprocess.run([sys.executable, "-c", code, "alerts", "--lake", lake, "--format", "json"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stderr.split()[-1] == "False", p.stderr[-2000:]
        assert sorted(json.loads(line)["alert_id"] for line in p.stdout.splitlines()) == \
            sorted(a["alert_id"] for a in found)
    now = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    assert alerts_mod.parse_since("2d", now) == dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    assert alerts_mod.parse_since("2026-11-20T06:00", now) == dt.datetime(2026, 11, 20, 6, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("conf,error", [
    ({"rules": {"loss_spike": {"params": {"z_threshold": -1}}}}, "z_threshold: must be > 0"),
    ({"rules": {"loss_spike": {"params": {"window_logs": 2.5}}}}, "must be a whole number"),
    ({"rules": {"loss_spike": {"params": {"z_threshold": "six"}}}}, "must be a number"),
    ({"rules": {"loss_spike": {"params": {"zscore": 3}}}}, "['zscore'] are not parameters of loss_spike.sql"),
    ({"rules": {"loss_spikes": {"severity": "warning"}}}, "have no SQL"),
    ({"rules": {"divergence": {"severity": "urgent"}}}, "severity: must be one of"),
    ({"rules": {"divergence": {"message": "loss {loss_value}"}}}, "unknown field {loss_value}"),
    ({"rules": {"eval_regression": {"params": {"baseline": "yesterday"}}}}, "must be one of ['trailing'"),
    ({"rules": {"eval_regression": {"params": {"suites": ["quality', 'x"]}}}}, "is not a plain name"),
    ({"rules": {"throughput_drop": {"params": {"max_drop": 1.5}}}}, "max_drop: must be < 1"),
    ({"latency_slos": [{"model": "m", "metric": "p50_ms", "slo_ms": 10}]}, "must be p95_ms or p99_ms"),
    ({"fail_on": "sometimes"}, "fail_on must be null or one of"),
])
def test_config_is_validated(tmp_path, conf, error):
    with pytest.raises(ConfigError) as e:
        load_config(overlay(tmp_path, conf))
    assert error in str(e.value)


def test_config_overlay_keeps_defaults_and_substitutes_literals(tmp_path):
    cfg = load_config(overlay(tmp_path, {"block_steps": 20, "rules": {"loss_spike": {"params": {"z_threshold": 8}}}}))
    assert cfg.rules["loss_spike"].params["z_threshold"] == 8.0 and cfg.rules["loss_spike"].params["min_ratio"] == 1.5
    assert cfg.rules["data_stall"].params["block_steps"] == 20  # the shared default reaches every block rule
    sql = render(load_rules()["eval_regression"], cfg.rules["eval_regression"].params)
    assert "e.suite in ('quality', 'robustness', 'precision')" in sql and "case 'trailing'" in sql and "{{" not in sql


@pytest.mark.parametrize("rule", sorted(load_rules().values(), key=lambda r: r.name), ids=lambda r: r.name)
def test_rule_sql_style(rule):
    """Like the cubes: a header, lowercase, CTEs ending in `select * from final` whose every column is
    cast and named as the alert contract says, and SQL that sqlglot translates to Spark."""
    header = parse_header(rule.sql)
    assert all(header.get(k) for k in HEADER_KEYS)
    text = render(rule, load_config().rules[rule.name].params)
    code = [line.split("--")[0] for line in text.splitlines()]
    assert not [c for c in code if any(k in c for k in (" SELECT ", "FROM ", " WHERE ", "GROUP BY", " JOIN "))]
    assert text.rstrip().endswith("select * from final")
    tree = sqlglot.parse_one(text, read="duckdb")
    final = {c.alias: c.this for c in tree.find(exp.With).expressions}["final"]
    assert [e.alias for e in final.expressions] in (CONTRACT.names, NAMING.names)  # host and rank optional
    assert all(isinstance(e.this, exp.Cast) for e in final.expressions)
    tables = {t.name for t in tree.find_all(exp.Table)} - {c.alias for c in tree.find(exp.With).expressions}
    assert tables == set(rule.sources)
    sqlglot.parse_one(to_spark(text), read="spark")


@pytest.mark.slow  # a diagnose and a build
def test_alert_health_cube_counts_the_alerts(lake, tmp_path):
    from pipelines.build import build
    found = diagnose(lake, notify_alerts=False)
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    con = connect(lake_root=lake, serving_path=serving)
    assert con.execute("select sum(n_alerts) from alert_health").fetchall() == [(found.total,)]
    per_group = """select date, model, hardware, coalesce(precision, 'n/a') as precision, rule, severity,
                            count(*) as n from alerts group by all"""
    assert con.execute(f"""select count(*) from ({per_group}) a full join alert_health h
                           using (date, model, hardware, precision, rule, severity)
                           where h.n_alerts is distinct from a.n""").fetchall() == [(0,)]


def test_a_missing_or_malformed_config_is_a_config_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
    monkeypatch.setenv("MHW_DIAGNOSTICS", str(tmp_path / "missing.yaml"))
    assert cli.main(["diagnose", "--lake", str(tmp_path / "lake")]) == 2
    assert "cannot read the diagnostics config" in capsys.readouterr().err


def test_fail_on_fails_while_the_critical_alert_is_open_and_passes_once_its_cause_is_gone(tmp_path, capsys):
    """A run logs a NaN loss: `mhw diagnose --fail-on critical` fails, a retry over the unchanged lake
    fails again, and after the run's log is fixed and re-ingested (its own rows replaced) it passes."""
    import json

    lake_dir, log = str(tmp_path / "lake"), tmp_path / "run.jsonl"

    def write_log(nan_at):
        rows = [{"table": "train_steps", "run_id": "r1", "model": "m", "hardware": "cpu", "step": i,
                 "ts": f"2026-03-02T10:{i // 60:02d}:{i % 60:02d}Z",
                 "loss": "NaN" if i == nan_at else 3.0 * (1 + i) ** -0.2} for i in range(120)]
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write_log(nan_at=80)
    assert cli.main(["ingest", str(log), "--lake", lake_dir]) == 0
    args = ["diagnose", "--lake", lake_dir, "--no-notify", "--quiet", "--fail-on", "critical"]
    assert cli.main(args) == 1
    assert "divergence r1" in capsys.readouterr().err
    assert cli.main(args) == 1  # nothing changed: the alert is still open
    write_log(nan_at=None)
    assert cli.main(["ingest", str(log), "--lake", lake_dir]) == 0
    assert cli.main(args) == 0
    assert [a for a in alerts_mod.read_alerts(Lake(lake_dir)) if a["severity"] == "critical"] == []
