"""Teams in a real Superset (the session's, tests/dashboards/conftest.py), provisioned from a teams
file by ``dashboards.provision`` as an operator runs it against a live server:

- a team member sees only the team's models: every chart of the Model health dashboard, through the
  REST API, equals its oracle computed on the serving file restricted to the team (the rows of
  ``mhw query --team``), and in headless Chromium no chart's answer names another team's model;
  no dataset gives another team's rows (a chart-data query asking for them, a WHERE trying to widen
  the filter, a column's value list), nor the audit trail;
- the viewer cannot open SQL Lab (API or browser) nor change a dashboard or chart, and sees every model;
- the admin sees everything, the audit trail included; provisioning leaves audit entries;
- re-provisioning a file without a member takes all their access away; the dashboards stay.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import duckdb
import pytest
import requests

from dashboards.query_contexts import normalize
from test_superset import CHARTS, ORACLES, actual, assert_chart_equals, expected, fetch, sketch_percentiles
from warehouse import audit, teams
from warehouse.query import connect
from warehouse.simulate import MODELS

BI_PYTHON = Path(__file__).resolve().parents[2] / ".venv-bi" / "bin" / "python"
REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.skipif(not BI_PYTHON.exists(), reason=".venv-bi is absent: run `make setup-bi` (make test does)"),
              pytest.mark.superset, pytest.mark.timeout(600)]

TEAMS = """
teams:
  language:
    models: ["gpt2-*", "llama-*"]
    members: [alice]
  classifiers:
    models: ["bert-*", "t5-*"]
    members: [bob]
viewers: [victor]
"""
ALL_MODELS = [m[0] for m in MODELS]
# The fleet charts' oracles read the 'total' or per-hardware rollups (model = 'ALL'), which no team
# sees: for a team, the same figures come from the per-model rows of its own models.
TEAM_ORACLES = {
    **ORACLES,
    "fleet_tokens": ("select sum(tokens) from train_health where agg_level = 'model'", "scalar"),
    "fleet_train_hours": ("select sum(tokens_seconds) / 3600.0 from train_health where agg_level = 'model'", "scalar"),
    "fleet_runs": ("select sum(n_runs) from train_health where agg_level = 'model'", "scalar"),
    "step_time_p95_by_hardware": (
        f"select date, hardware, p95 from ({sketch_percentiles('train_step_time_sketch', ['date', 'hardware'])}) "
        "as t(date, hardware, p50, p95, p99)", "series"),
}


def provision(superset, text: str, tmp_path: Path) -> dict:
    f = tmp_path / "teams.yaml"
    f.write_text(text)
    env = {**os.environ, "MHW_SERVING": str(superset.serving), "MHW_LAKE": str(superset.lake)}
    p = subprocess.run([str(BI_PYTHON), "-m", "dashboards.provision", "--teams", str(f), "--home", str(superset.home)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"stdout": p.stdout, "passwords": json.loads((superset.home / "passwords.json").read_text()),
            "teams": teams.load(f)}


@pytest.fixture(scope="module")
def provisioned(superset, tmp_path_factory):
    return provision(superset, TEAMS, tmp_path_factory.mktemp("teams"))


def login(superset, provisioned, user: str):
    return superset.as_user(user, provisioned["passwords"][user])


def team_connection(superset, team):
    """The serving file as the team's `mhw query --team` sees it (filtered cubes, no rollups)."""
    return connect(str(superset.lake), str(superset.serving), team=team, locked=False)


def datasets(superset) -> dict[str, int]:
    rows = superset.get("/api/v1/dataset/", params={"q": json.dumps({"columns": ["id", "table_name"],
                                                                     "page_size": 100})}).json()["result"]
    return {r["table_name"]: r["id"] for r in rows}


def chart_data(client, dataset_id: int, columns, where: str = "", metrics=("count",)):
    metric = [{"expressionType": "SQL", "sqlExpression": "count(*)", "label": "n"}]
    return client.post("/api/v1/chart/data", json={
        "datasource": {"id": dataset_id, "type": "table"}, "force": True, "result_format": "json",
        "result_type": "full", "queries": [{"columns": list(columns), "metrics": metric if metrics else [],
                                            "extras": {"where": where}, "row_limit": 10000}]})


def test_provisioning_prints_each_password_once_and_keeps_them_private(superset, provisioned):
    out = provisioned["stdout"]
    for user in ("alice", "bob", "victor"):
        assert out.count(f"'{user}', password '{provisioned['passwords'][user]}'") == 1
    assert (superset.home / "passwords.json").stat().st_mode & 0o777 == 0o600
    entries = [e for e in audit.read(str(superset.lake)) if e["command"] == "provision"]
    assert [e["status"] for e in entries] == ["ok", "ok"]  # the start's, then this one
    assert json.loads(entries[-1]["counts"])["users_created"] == 3 and entries[-1]["via"] == "superset"


@pytest.mark.parametrize("user, team", [("alice", "language"), ("bob", "classifiers")])
def test_a_member_sees_only_the_teams_models_in_every_chart(superset, provisioned, user, team):
    t = provisioned["teams"].team(team)
    client = login(superset, provisioned, user)
    ids = client.chart_ids()
    assert set(ids) == {doc["uuid"] for doc in CHARTS.values()}  # every Model health chart, not the audit one
    con = team_connection(superset, t)
    empty = []
    for chart, doc in sorted(CHARTS.items()):
        want = expected(con, chart, TEAM_ORACLES)
        assert_chart_equals(chart, actual(chart, fetch(client, ids[doc["uuid"]])), want, allow_empty=True)
        if want in (None, {}, []):
            empty.append(chart)
    assert set(empty) <= {"eval_regressions", "alerts"}, empty  # the rest has rows of every team


def test_no_dataset_gives_another_teams_rows(superset, provisioned):
    alice = login(superset, provisioned, "alice")
    language = provisioned["teams"].team("language")
    ids = datasets(superset)
    from dashboards import bundle

    shipped = {d["table_name"] for d in bundle.by_kind(bundle.load(), "datasets").values()}
    assert set(ids) == shipped and "audit_trail" in ids  # every shipped dataset, each one checked below
    for name, ds_id in sorted(ids.items()):
        r = chart_data(alice, ds_id, ["model"])
        if name == "audit_trail":  # admins only
            assert r.status_code in (403, 404), (name, r.status_code, r.text[:300])
            continue
        assert r.status_code == 200, (name, r.text[:500])
        seen = {row["model"] for row in r.json()["result"][0]["data"]}
        assert seen and all(language.owns(m) for m in seen), (name, seen)
        # Asking for another team's model, or trying to widen the WHERE, adds none of its rows.
        for where in ("model = 'bert-base-cls'", "model like 'bert%' or 1 = 1", "1 = 1) or (1 = 1"):
            r = chart_data(alice, ds_id, ["model"], where=where)
            rows = r.json().get("result", [{}])[0].get("data", []) if r.status_code == 200 else []
            assert all(language.owns(row["model"]) for row in rows), (name, where, rows)
        r = alice.get(f"/api/v1/datasource/table/{ds_id}/column/model/values/")
        if r.status_code == 200:
            assert all(language.owns(v) for v in r.json()["result"]), (name, r.json()["result"])
    # A subquery in an ad-hoc expression (to read a table around the filter) is refused.
    r = chart_data(alice, ids["train_health"], [], metrics=False, where="model in (select model from train_health_daily)")
    assert r.status_code >= 400 or not r.json()["result"][0]["data"], r.text[:500]


def test_a_member_sees_the_dashboard_without_another_teams_model_in_chromium(superset, provisioned, out_dir):
    alice = login(superset, provisioned, "alice")
    language = provisioned["teams"].team("language")
    report = alice.browser(out_dir / "alice", watch=ALL_MODELS, probe_sqllab=True)
    assert report["n_chart_holders"] == len(CHARTS) and report["chart_errors_in_page"] == []
    assert len(report["charts"]) == len(CHARTS)
    for sid, c in report["charts"].items():
        assert c.get("status") == 200 and not c.get("errors"), (sid, c)
        assert all(language.owns(m) for m in c["watched"]), (sid, c["watched"])
    assert {m for c in report["charts"].values() for m in c["watched"]} == {m for m in ALL_MODELS if language.owns(m)}
    assert not report["can_edit"]  # not an owner of the shared dashboard
    assert report["sqllab"]["editor"] is False and report["sqllab"]["forbidden"], report["sqllab"]


def test_the_viewer_reads_every_model_but_cannot_open_sql_lab_or_edit(superset, provisioned, out_dir):
    victor = login(superset, provisioned, "victor")
    ids = victor.chart_ids()
    heat = CHARTS["tokens_per_s_heatmap"]["uuid"]
    con = duckdb.connect(str(superset.serving), read_only=True)
    assert_chart_equals("tokens_per_s_heatmap", actual("tokens_per_s_heatmap", fetch(victor, ids[heat])),
                        expected(con, "tokens_per_s_heatmap"))
    con.close()
    db_id = next(d["id"] for d in superset.get("/api/v1/database/").json()["result"])
    r = victor.post("/api/v1/sqllab/execute/", json={"database_id": db_id, "sql": "select 1", "runAsync": False,
                                                     "schema": "main", "tab": "t", "client_id": "victor1"})
    assert r.status_code in (401, 403), r.text[:300]
    dash = superset.get("/api/v1/dashboard/model-health").json()["result"]["id"]
    assert victor.put(f"/api/v1/dashboard/{dash}", json={"dashboard_title": "mine"}).status_code in (401, 403)
    assert victor.put(f"/api/v1/chart/{ids[heat]}", json={"slice_name": "mine"}).status_code in (401, 403)
    assert victor.post("/api/v1/chart/", json={"slice_name": "x", "datasource_id": 1,
                                               "datasource_type": "table"}).status_code in (401, 403)
    assert superset.get(f"/api/v1/dashboard/{dash}").json()["result"]["dashboard_title"] == "Model health"
    report = victor.browser(out_dir / "victor", watch=ALL_MODELS, probe_sqllab=True)
    assert report["chart_errors_in_page"] == [] and not report["can_edit"]
    assert report["sqllab"]["editor"] is False and report["sqllab"]["forbidden"], report["sqllab"]
    assert {m for c in report["charts"].values() for m in c["watched"]} == set(ALL_MODELS)


def test_the_admin_sees_every_model_and_the_audit_trail(superset, provisioned, out_dir):
    ids = superset.chart_ids()
    con = duckdb.connect(str(superset.serving), read_only=True)
    assert_chart_equals("fleet_tokens", actual("fleet_tokens", fetch(superset, ids[CHARTS["fleet_tokens"]["uuid"]])),
                        expected(con, "fleet_tokens"))
    served = con.execute("select command, status from audit_trail order by started_at").fetchall()
    con.close()
    from dashboards import bundle

    audit_chart = bundle.load()["charts/audit_trail.yaml"]
    rows = fetch(superset, ids[audit_chart["uuid"]])
    assert sorted((r["command"], r["status"]) for r in rows) == sorted(served)
    assert ("simulate", "ok") in served and ("diagnose", "ok") in served
    report = superset.browser(out_dir / "audit", slug="audit-trail", probe_sqllab=True)
    assert report["title"] == "Lake audit trail" and report["chart_errors_in_page"] == []
    assert [c["rowcounts"] for c in report["charts"].values()] == [[len(served)]]
    (sent,) = report["charts"].values()  # the committed query context is what the frontend sends
    assert normalize(sent["query_context"]) == audit_chart["query_context"]
    # What the team users and the viewer were refused, the admin gets: the probes can tell.
    assert report["can_edit"] and report["sqllab"]["editor"] and not report["sqllab"]["forbidden"], report["sqllab"]


def test_a_removed_member_loses_access_after_reprovisioning(superset, provisioned, tmp_path):
    """bob and his team leave the file: his login, his old token and the team's role and filter go."""
    bob = login(superset, provisioned, "bob")
    charts = bob.chart_ids()
    assert charts
    without = TEAMS.replace('  classifiers:\n    models: ["bert-*", "t5-*"]\n    members: [bob]\n', "")
    assert "bob" not in without and "classifiers" not in without
    again = provision(superset, without, tmp_path)  # bob, and his team with him
    assert "users_deactivated 1" in again["stdout"] and "teams_removed 1" in again["stdout"], again["stdout"]
    with pytest.raises(requests.HTTPError):
        login(superset, provisioned, "bob")  # the login is refused
    # The token he held no longer reads anything.
    r = bob.get(f"/api/v1/chart/{next(iter(charts.values()))}/data/")
    assert r.status_code in (401, 403, 404), r.text[:300]
    # The others and the dashboards are as they were.
    assert login(superset, provisioned, "alice").chart_ids()
    assert superset.get("/api/v1/dashboard/model-health").status_code == 200
    roles = superset.get("/api/v1/security/roles/", params={"q": json.dumps({"page_size": 100})})
    if roles.status_code == 200:  # the roles API is on in this Superset
        names = {r["name"] for r in roles.json()["result"]}
        assert "mhw-team-language" in names and "mhw-team-classifiers" not in names
