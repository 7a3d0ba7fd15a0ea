"""The Model health dashboard in a real Superset (started from .venv-bi on 127.0.0.1, fresh home,
bundle imported at start) and a real browser (Debian's headless chromium via Playwright):

- every chart's data, fetched through the REST API (/api/v1/chart/{id}/data, the chart's saved query
  context), equals an independent query on the serving file: where the cube has precomputed the
  same answer at another aggregation level (fleet totals, tokens/s per model × hardware, p95 per
  hardware and day), that precomputed value is the oracle;
- the dashboard opens in the browser with every chart answered and rendered, no chart error, and a
  screenshot (out/tests/dashboards/dashboard.png); the queries the frontend sends equal the
  query contexts committed in the bundle;
- charts keep answering, with the new data, while a cube build swaps the serving file (os.replace);
- SQL Lab on the serving database cannot read files, attach, copy or write: not the serving file's
  WAL, nor the file itself, which DuckDB allows any connection (superset_config.SQL_QUERY_MUTATOR);
- a database an admin adds is forced onto the serving file, read-only and locked, or refused
  (superset_config.DB_CONNECTION_MUTATOR); Superset's start removes a WAL planted beside the file.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import duckdb
import pytest

from dashboards import bundle
from dashboards.query_contexts import normalize

BI_PYTHON = Path(__file__).resolve().parents[2] / ".venv-bi" / "bin" / "python"
pytestmark = [pytest.mark.skipif(not BI_PYTHON.exists(), reason=".venv-bi is absent: run `make setup-bi` (make test does)"),
              pytest.mark.superset, pytest.mark.timeout(600)]

ASSETS = bundle.load()
_MODEL_HEALTH = {n["meta"]["uuid"] for n in ASSETS["dashboards/model_health.yaml"]["position"].values()
                 if isinstance(n, dict) and n.get("type") == "CHART"}
# The charts of the Model health dashboard (the audit trail has a dashboard of its own, admins only).
CHARTS = {Path(name).stem: doc for name, doc in ASSETS.items()
          if name.startswith("charts/") and doc["uuid"] in _MODEL_HEALTH}
CONFIG_DAY = "agg_level = 'model,hardware,precision,date'"
RUN_DAY = "agg_level = 'model,hardware,precision,date,run_id'"


def ms(d) -> int:
    """A DATE as Superset's JSON writes a temporal x value: epoch milliseconds, UTC."""
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


def sketch_percentiles(table: str, keys: list[str], where: str = "") -> str:
    """Percentiles from a log-bucket sketch with a window (the cube's rule, written as the cubes
    write it, not as the dashboard's list_reduce metric): the representative value of the first
    bucket whose cumulative count reaches p × total, NaN bucket not ranked."""
    k = ", ".join(keys)
    return f"""
        with merged as (
            select {k}, s.bucket, sum(s.n) as n, any_value(b.mid) as mid
            from {table} as s join sketch_bounds as b on b.bucket = s.bucket
            where s.agg_level = 'model,hardware,precision,date' and s.bucket <> 30000 {where}
            group by all
        ), ranked as (
            select *, sum(n) over (partition by {k} order by bucket) as cum,
                sum(n) over (partition by {k}) as total
            from merged
        )
        select {k},
            min(mid) filter (where cum >= 0.5 * total),
            min(mid) filter (where cum >= 0.95 * total),
            min(mid) filter (where cum >= 0.99 * total)
        from ranked group by all"""


def eval_regressions(con) -> dict:
    """Regressions recomputed in Python: a checkpoint worse than the best earlier one of its
    model × hardware × precision × metric by more than 2 %."""
    rows = con.execute("""
        select model, hardware, precision, metric, checkpoint_step, date, value_mean
        from eval_health
        where agg_level = 'model,hardware,precision,checkpoint_step,date' and suite = 'quality'
        order by model, hardware, precision, metric, checkpoint_step, date""").fetchall()
    best: dict[tuple, float] = {}
    out: dict[tuple, list] = {}
    for model, hw, prec, metric, step, _, value in rows:
        key = (model, hw, prec, metric)
        score = -value if metric in ("loss", "perplexity") else value
        if key in best and score < best[key] - 0.02 * abs(best[key]):
            k = (model, hw, prec, metric, step)
            out.setdefault(k, []).append(value)
        best[key] = max(best.get(key, -math.inf), score)
    return {k: (sum(v) / len(v), len(v)) for k, v in out.items()}


# chart -> (oracle SQL or function on the serving file, how to read Superset's rows)
ORACLES = {
    "fleet_tokens": ("select tokens from train_health where agg_level = 'total'", "scalar"),
    "fleet_train_hours": ("select tokens_seconds / 3600.0 from train_health where agg_level = 'total'", "scalar"),
    "fleet_runs": ("select n_runs from train_health where agg_level = 'total'", "scalar"),
    "fleet_diverged_runs": (f"select count(distinct run_id) from train_health where {RUN_DAY} "
                            "and n_loss_nonfinite > 0", "scalar"),
    "tokens_per_s_heatmap": ("select hardware, model, tokens_per_s from train_health "
                             "where agg_level = 'model,hardware'", ("keyed", ["hardware", "model"])),
    "gpu_util_vs_throughput": (f"""select run_id, hardware, sum(gpu_util_sum) / sum(n_gpu_util),
                                   sum(tokens) / sum(tokens_seconds), sum(tokens)
                                   from train_health where {RUN_DAY} group by all""",
                               ("keyed", ["run_id", "hardware"])),
    "loss_per_run": ("""with recent as (
                             select run_id from loss_curve
                             group by run_id order by max(last_ts) desc limit 20)
                         select step_start, run_id, sum(loss_sum) / sum(n_loss) from loss_curve
                         where run_id in (select run_id from recent) group by all""", "series"),
    "nonfinite_by_model": ("select date, model, n_loss_nonfinite from train_health "
                           "where agg_level = 'model,date'", "series"),
    "step_time_p95_by_hardware": ("select date, hardware, step_time_p95_ms from train_health "
                                  "where agg_level = 'hardware,date'", "series"),
    "latency_by_model_precision": (sketch_percentiles("latency_sketch", ["model", "precision"]),
                                   ("keyed", ["model", "precision"])),
    "eval_accuracy_trend": ("""select date, model, avg(value_mean) from eval_health
                               where agg_level = 'model,hardware,precision,checkpoint_step,date'
                               and suite = 'quality' and metric = 'accuracy' group by all""", "series"),
    "eval_regressions": (eval_regressions,
                         ("keyed", ["model", "hardware", "precision", "metric", "checkpoint_step"])),
    "serving_qps": ("select period_start, model, sum(qps) from serving_health "
                    "where period = 'hour' and source = 'scrape' group by all", "series"),
    "serving_error_rate": ("select period_start, model, (sum(n_requests) - sum(n_ok)) / nullif(sum(n_requests), 0) "
                           "from serving_health where period = 'hour' and source = 'scrape' group by all", "series"),
    "serving_queue_depth": ("select period_start, model, sum(queue_depth_mean) from serving_health "
                            "where period = 'hour' and source = 'scrape' group by all", "series"),
    "serving_latency": ("""select model, hardware, precision, source, sum(n_requests),
                               (sum(n_requests) - sum(n_ok)) / nullif(sum(n_requests), 0), max(e2e_p95_ms),
                               max(ttft_p95_ms), max(itl_p95_ms), sum(output_tokens_per_s)
                           from serving_health where period = 'day' group by all""",
                        ("keyed", ["model", "hardware", "precision", "source"])),
    # the served alerts, every one, newest first (the order is checked apart: ties have none)
    "alerts": ("select start_at, severity, rule, model, hardware, message, action from alert_list "
               "order by start_at desc", "rows"),
    # the repair funnel per rule, from the served alerts and repair attempts (not the funnel cube)
    "repair_funnel": ("""with funnel as (
                             select rule, count(*) filter (where severity in ('warning', 'critical')) as n_alerts,
                                    0 as n_repairs, 0 as n_healed
                             from alert_list where scope = 'run' group by rule
                             union all
                             select rule, 0, count(distinct repair_id),
                                    count(distinct repair_id) filter (where verdict = 'healed')
                             from repair_list group by rule)
                         select rule, sum(n_alerts), sum(n_repairs), sum(n_healed) from funnel group by rule""",
                      ("keyed", ["rule"])),
}


def close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def expected(con, chart: str, oracles=None):
    oracle, shape = (oracles or ORACLES)[chart]
    if callable(oracle):
        return {k: v for k, v in oracle(con).items()}
    rows = con.execute(oracle).fetchall()
    if shape == "scalar":
        return rows[0][0] if rows else None
    if shape == "series":  # (x, series) -> value, nulls dropped as the chart drops them
        return {(x.timestamp() * 1000 if isinstance(x, dt.datetime) else ms(x) if isinstance(x, dt.date) else x, s): v
                for x, s, v in rows if v is not None}
    if shape == "rows":  # every row, in order; timestamps as Superset's JSON writes them
        return [tuple(v.timestamp() * 1000 if isinstance(v, dt.datetime) else v for v in r)
                for r in rows]
    n = len(shape[1])
    return {tuple(r[:n]): tuple(r[n:]) for r in rows}


def actual(chart: str, data: list[dict]):
    doc = CHARTS[chart]
    p = doc["params"]
    _, shape = ORACLES[chart]
    if shape == "scalar":
        assert len(data) == 1, data
        return next(iter(data[0].values()))
    if shape == "series":  # pivoted: one row per x, one column per series
        out = {}
        for row in data:
            x = row[p["x_axis"]]
            for k, v in row.items():
                if k != p["x_axis"] and v is not None:
                    out[(x, k)] = v
        return out
    if shape == "rows":  # a raw table: its columns, in the chart's order
        return [tuple(r[c] for c in p["all_columns"]) for r in data]
    keys = shape[1]
    if doc["viz_type"] == "bubble_v2":
        metrics = [p["x"], p["y"], p["size"]]
    elif doc["viz_type"] == "heatmap_v2":
        metrics = [p["metric"]]
    else:
        metrics = p["metrics"]
    return {tuple(r[k] for k in keys): tuple(r[m] for m in metrics) for r in data}


def fetch(superset, chart_id: int) -> list[dict]:
    r = superset.get(f"/api/v1/chart/{chart_id}/data/", params={"format": "json", "force": "true"})
    assert r.status_code == 200, r.text[:2000]
    results = r.json()["result"]
    assert all(not res.get("error") for res in results), results
    return results[0]["data"]


def test_every_chart_has_an_oracle():
    assert sorted(ORACLES) == sorted(CHARTS)


def assert_chart_equals(chart: str, got, want, allow_empty: bool = False) -> None:
    """A chart's data as Superset answered it equals the oracle's (see ORACLES). ``allow_empty``: a
    team's view of a chart may have no rows (no regression among its models); then neither has it."""
    if allow_empty and want in (None, {}, []):
        assert got in (None, {}, []), f"{chart}: {got} where the oracle has nothing"
        return
    assert want not in (None, {}), f"{chart}: the oracle found no data; the fixture is too small"
    if isinstance(want, list):  # rows: the same multiset, in an order the oracle allows
        assert len(got) == len(want), f"{chart}: {len(got)} rows != {len(want)}"
        assert all(close(g[0], w[0]) for g, w in zip(got, want)), f"{chart}: not in the oracle's order"
        key = lambda r: tuple("" if v is None else str(v) for v in r)  # noqa: E731
        for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
            assert all(close(a, b) for a, b in zip(g, w)), f"{chart}: {g} != {w}"
    elif isinstance(want, dict):
        assert set(got) == set(want), f"{chart}: keys differ: {set(got) ^ set(want)}"
        for k in want:
            w = want[k] if isinstance(want[k], tuple) else (want[k],)
            g = got[k] if isinstance(got[k], tuple) else (got[k],)
            assert all(close(a, b) for a, b in zip(g, w)), f"{chart} {k}: {g} != {w}"
    else:
        assert close(got, want), f"{chart}: {got} != {want}"


def test_every_chart_matches_the_serving_file(superset):
    ids = superset.chart_ids()
    con = duckdb.connect(str(superset.serving), read_only=True)
    try:
        for chart, doc in sorted(CHARTS.items()):
            assert_chart_equals(chart, actual(chart, fetch(superset, ids[doc["uuid"]])), expected(con, chart))
    finally:
        con.close()


def test_dashboard_in_a_real_browser(superset, out_dir):
    report = superset.browser(out_dir)
    n = len(CHARTS)
    assert report["title"] == "Model health"
    assert report["n_chart_holders"] == n
    assert report["chart_errors_in_page"] == [], report["chart_errors_in_page"]
    assert report["page_errors"] == [], report["page_errors"]
    # The only console errors allowed are resources on other hosts, unreachable here by design.
    assert [e for e in report["console_errors"] if "ERR_NAME_NOT_RESOLVED" not in e
            and "ERR_INTERNET_DISCONNECTED" not in e] == []
    assert len(report["charts"]) == n, report["charts"].keys()
    for sid, c in report["charts"].items():
        assert c.get("status") == 200 and not c.get("errors"), (sid, c)
        assert all(rc and rc > 0 for rc in c["rowcounts"]), (sid, c["rowcounts"])
    assert report["n_rendered_elements"] >= n
    shot = Path(report["screenshot"])
    assert shot.exists() and shot.stat().st_size > 50_000
    # The query contexts committed in the bundle are what this frontend builds from the params:
    # the REST test above checked the same queries the browser shows.
    by_id = {v: k for k, v in superset.chart_ids().items()}
    by_uuid = {doc["uuid"]: (name, doc) for name, doc in CHARTS.items()}
    for sid, c in report["charts"].items():
        name, doc = by_uuid[by_id[int(sid)]]
        assert normalize(c["query_context"]) == doc["query_context"], (
            f"{name}: params changed without a query-context refresh: run dashboards.query_contexts")


def test_charts_keep_answering_while_the_serving_file_is_swapped(superset, tmp_path):
    """A cube build writes the new serving file beside the old one and os.replace()s it in. Every
    chart must answer during the swaps, and show the new data right after (no cache, no stale
    handle: Superset opens the file per query, read-only)."""
    ids = superset.chart_ids()
    tokens_id = ids[CHARTS["fleet_tokens"]["uuid"]]
    serving = superset.serving
    original = tmp_path / "original.duckdb"
    doubled = tmp_path / "doubled.duckdb"
    shutil.copy(serving, original)
    shutil.copy(serving, doubled)
    con = duckdb.connect(str(doubled))
    con.execute("update train_health_daily set tokens = tokens * 2")  # train_health is a view over it
    con.close()
    base = fetch(superset, tokens_id)[0]["tokens"]

    stop = threading.Event()
    swaps = []

    def swapper():
        i = 0
        while not stop.is_set():
            src = doubled if i % 2 == 0 else original
            tmp = serving.with_name(f".serving.{i}.tmp")
            shutil.copy(src, tmp)
            os.replace(tmp, serving)  # what mhw build does with a finished file
            swaps.append(i)
            i += 1
            time.sleep(0.05)

    t = threading.Thread(target=swapper)
    t.start()
    seen = set()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(swaps) < 40:
            for chart, doc in CHARTS.items():
                data = fetch(superset, ids[doc["uuid"]])  # asserts 200 and no error
                if chart == "fleet_tokens":
                    seen.add(round(data[0]["tokens"] / base, 6))
    finally:
        stop.set()
        t.join()
    assert len(swaps) >= 5, "the swapper did not get to swap"
    assert seen <= {1.0, 2.0}, seen  # every answer is one whole file or the other
    # After the last swap the dashboard shows exactly the file in place.
    shutil.copy(doubled, serving.with_name(".serving.last.tmp"))
    os.replace(serving.with_name(".serving.last.tmp"), serving)
    assert math.isclose(fetch(superset, tokens_id)[0]["tokens"], 2 * base, rel_tol=1e-12)
    shutil.copy(original, serving.with_name(".serving.back.tmp"))
    os.replace(serving.with_name(".serving.back.tmp"), serving)
    assert math.isclose(fetch(superset, tokens_id)[0]["tokens"], base, rel_tol=1e-12)


@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('/etc/passwd')",
    "select * from read_csv_auto('/etc/passwd', header = false)",
    "attach '/etc/passwd' as p",
    "set enable_external_access = true",
    "copy (select 1) to '/tmp/mhw-sqllab-escape.csv'",
    "create table escape as select 1",
    "install httpfs",
])
def test_sql_lab_cannot_reach_the_file_system(superset, sql):
    db = superset.get("/api/v1/database/").json()["result"]
    db_id = next(d["id"] for d in db if d["database_name"] == "Model health serving")
    r = superset.post("/api/v1/sqllab/execute/", json={
        "database_id": db_id, "sql": sql, "runAsync": False, "schema": "main", "tab": "t",
        "client_id": os.urandom(5).hex()[:10]})
    assert r.status_code != 200 or r.json().get("status") != "success", r.text[:1000]
    assert "root:" not in r.text
    assert not Path("/tmp/mhw-sqllab-escape.csv").exists()


def test_sql_lab_reads_the_cubes(superset):
    """The lock-down leaves what SQL Lab is for: reading the cubes."""
    db = superset.get("/api/v1/database/").json()["result"]
    db_id = next(d["id"] for d in db if d["database_name"] == "Model health serving")
    r = superset.post("/api/v1/sqllab/execute/", json={
        "database_id": db_id, "sql": "select count(*) as n from train_health", "runAsync": False,
        "schema": "main", "tab": "t", "client_id": os.urandom(5).hex()[:10]})
    assert r.status_code == 200, r.text[:1000]
    con = duckdb.connect(str(superset.serving), read_only=True)
    assert r.json()["data"][0]["n"] == con.execute("select count(*) from train_health").fetchone()[0]
    con.close()


def sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def sql_lab(superset, sql: str, database: str = "Model health serving"):
    dbs = superset.get("/api/v1/database/").json()["result"]
    db_id = next(d["id"] for d in dbs if d["database_name"] == database)
    return superset.post("/api/v1/sqllab/execute/", json={
        "database_id": db_id, "sql": sql, "runAsync": False, "schema": "main", "tab": "t",
        "client_id": os.urandom(5).hex()[:10]})


def succeeded(r) -> bool:
    return r.status_code == 200 and r.json().get("status") == "success"


# Writes DuckDB allows a read-only connection with external access off and the configuration locked
# (the shipped URI): its own database's WAL and file are always writable. name -> (SQL, who refuses)
SQL_LAB_WRITES = {
    "copy into the serving file's WAL": ("copy (select 1) to '{serving}.wal'", "Refused: COPY statement"),
    "copy over the serving file": ("copy (select 1) to '{serving}' (use_tmp_file false)",
                                   "Refused: COPY statement"),
    "a read, then a copy": ("select 1; copy (select 1) to '{serving}.wal'", "Refused: COPY statement"),
    "a serialized copy": ("select * from json_execute_serialized_sql(json_serialize_sql("
                          "'with w as (copy (select 1 as x) to ''{serving}.wal'') select 1'))",
                          "Refused: json_execute_serialized_sql() refused"),
    # Superset's own parser (sqlglot) does not read a COPY inside a WITH: refused before DuckDB sees it
    "copy inside a WITH": ("with w as (copy (select 1 as x) to '{serving}.wal') select 1", "Error parsing"),
}


@pytest.mark.parametrize("name", sorted(SQL_LAB_WRITES))
def test_sql_lab_cannot_write_the_serving_file_or_its_wal(superset, name):
    serving = superset.serving
    before = sha256(serving)
    sql, refused_by = SQL_LAB_WRITES[name]
    r = sql_lab(superset, sql.format(serving=serving))
    assert not succeeded(r), r.text[:1000]
    assert refused_by in r.text, r.text[:1000]
    assert not Path(f"{serving}.wal").exists()
    assert sha256(serving) == before


def add_database(superset, name: str, uri: str, **extra):
    return superset.post("/api/v1/database/", json={
        "database_name": name, "sqlalchemy_uri": uri, "expose_in_sqllab": True, **extra})


def import_database(superset, name: str, uri: str) -> None:
    """A database imported from a bundle, as an admin may: no connection test on the way in."""
    import io
    import uuid
    import zipfile

    import yaml

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("db/metadata.yaml", yaml.safe_dump({
            "version": "1.0.0", "type": "Database", "timestamp": "2026-11-23T00:00:00+00:00"}))
        z.writestr("db/databases/scratch.yaml", yaml.safe_dump({
            "database_name": name, "sqlalchemy_uri": uri, "expose_in_sqllab": True, "allow_dml": True,
            "allow_ctas": False, "allow_cvas": False, "allow_csv_upload": False, "extra": {},
            "uuid": str(uuid.uuid4()), "version": "1.0.0"}))
    r = superset.http.post(f"{superset.url}/api/v1/database/import/", timeout=60,
                           files={"formData": ("db.zip", buf.getvalue(), "application/zip")},
                           data={"overwrite": "true", "passwords": "{}"})
    assert r.status_code == 200, r.text[:1000]


def drop_database(superset, name: str) -> None:
    for d in superset.get("/api/v1/database/").json()["result"]:
        if d["database_name"] == name:
            superset.http.delete(f"{superset.url}/api/v1/database/{d['id']}", timeout=60)


def test_an_admin_added_memory_connection_reads_no_host_file(superset):
    """`duckdb:///:memory:` has external access on: through it SQL Lab read /etc/passwd. Added by the
    form (connection tested) it is refused; imported (not tested) it answers nothing."""
    before = sha256(superset.serving)
    r = add_database(superset, "scratch (added)", "duckdb:///:memory:")
    assert r.status_code >= 400, r.text[:1000]
    try:
        import_database(superset, "scratch (imported)", "duckdb:///:memory:")
        r = sql_lab(superset, "select * from read_csv('/etc/passwd', header = false)", "scratch (imported)")
        assert not succeeded(r) and "root:" not in r.text, r.text[:1000]
        assert "only opens the model-health serving file" in r.text, r.text[:1000]
    finally:
        drop_database(superset, "scratch (added)")
        drop_database(superset, "scratch (imported)")
    assert sha256(superset.serving) == before


def test_an_admin_added_serving_connection_is_forced_read_only_and_locked(superset):
    """The serving file with external access on, read-write, DML allowed and a config in connect_args
    asking for the same: the connection still gets the shipped restrictions."""
    serving = superset.serving
    before = sha256(serving)
    name = "serving, unlocked"
    r = add_database(superset, name, f"duckdb:///{serving}?access_mode=read_write&enable_external_access=true",
                     allow_dml=True, extra=json.dumps({"engine_params": {"connect_args": {
                         "config": {"enable_external_access": True, "lock_configuration": False}}}}))
    assert r.status_code == 201, r.text[:1000]
    try:
        r = sql_lab(superset, "select count(*) as n from train_health", name)
        assert succeeded(r), r.text[:1000]  # it reads the cubes
        for sql in ["select * from read_csv('/etc/passwd', header = false)",
                    "select * from read_text('/etc/passwd')",
                    "set enable_external_access = true",
                    "create table escape as select 1",
                    "delete from train_health_daily",
                    f"copy (select 1) to '{serving}.wal'"]:
            r = sql_lab(superset, sql, name)
            assert not succeeded(r) and "root:" not in r.text, (sql, r.text[:1000])
        r = sql_lab(superset, "select current_setting('enable_external_access') as a, "
                              "current_setting('access_mode') as m, current_setting('lock_configuration') as l",
                    name)
        assert succeeded(r) and r.json()["data"] == [{"a": False, "m": "read_only", "l": True}], r.text[:1000]
    finally:
        drop_database(superset, name)
    assert not Path(f"{serving}.wal").exists()
    assert sha256(serving) == before


def test_superset_start_removes_a_wal_planted_beside_the_serving_file(superset, tmp_path):
    """Read-only opens replay `<serving>.wal` over the file: Superset's start (dashboards/serve.py)
    removes one, so the dashboards show the cubes the build wrote."""
    import subprocess

    serving = tmp_path / "serving.duckdb"
    shutil.copy(superset.serving, serving)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(serving, copy)
    con = duckdb.connect(str(copy))
    con.execute("set wal_autocheckpoint = '10GB'")
    con.execute("pragma disable_checkpoint_on_shutdown")
    con.execute("update train_health_daily set tokens = tokens * 2")
    con.close()
    os.replace(f"{copy}.wal", f"{serving}.wal")
    con = duckdb.connect(str(serving), read_only=True)
    tampered = con.execute("select sum(tokens) from train_health_daily").fetchone()[0]
    con.close()
    os.replace(f"{serving}.wal", tmp_path / "planted.wal")
    con = duckdb.connect(str(serving), read_only=True)
    truth = con.execute("select sum(tokens) from train_health_daily").fetchone()[0]
    con.close()
    assert tampered == 2 * truth  # the planted WAL is real: a reader sees its numbers
    os.replace(tmp_path / "planted.wal", f"{serving}.wal")
    before = sha256(serving)
    env = {**os.environ, "MHW_SUPERSET_PASSWORD": superset.password, "MHW_SERVING": str(serving),
           "MHW_LAKE": str(tmp_path / "lake")}  # the start's provisioning audits into a lake of its own
    p = subprocess.run([str(BI_PYTHON), "-m", "dashboards.serve", "--setup-only", "--home", str(tmp_path / "home"),
                        "--serving", str(serving)], cwd=Path(__file__).resolve().parents[2], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"removed {serving}.wal" in p.stdout
    assert not Path(f"{serving}.wal").exists() and sha256(serving) == before
