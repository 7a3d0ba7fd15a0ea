"""conf/teams.yaml (warehouse/teams.py): checked with errors naming the file and field; a team's
models as one SQL condition that DuckDB's GLOB reads as Python's fnmatch does, rollups excluded; and
`mhw query --team`, which restricts the lake views and the served cubes to the team's models and
lets DuckDB open no other file (warehouse/query.py)."""
from __future__ import annotations

import duckdb
import pytest

from mhw import cli
from pipelines.build import build
from pipelines.diagnose import diagnose
from warehouse import teams
from warehouse.query import connect
from warehouse.simulate import MODELS, simulate

TEAMS = """
teams:
  language:
    models: ['gpt2-*', 'llama-?b']
    members: [alice]
    viewers: [carol]
  classifiers:
    models: [bert-base-cls, bert-large-cls]
    members: [bob, alice]
viewers: [victor]
admins: [root]
"""


def write(tmp_path, text: str):
    p = tmp_path / "teams.yaml"
    p.write_text(text)
    return p


def test_the_shipped_file_loads_and_owns_every_simulated_model():
    t = teams.load(teams.DEFAULT_TEAMS)
    owners = {m[0]: [n for n, team in t.teams.items() if team.owns(m[0])] for m in MODELS}
    assert all(len(o) == 1 for o in owners.values()), owners


def test_users_get_their_teams_and_access(tmp_path):
    t = teams.load(write(tmp_path, TEAMS))
    u = t.users()
    assert u["alice"] == {"admin": False, "viewer": False, "teams": ["language", "classifiers"]}
    assert u["carol"] == {"admin": False, "viewer": True, "teams": ["language"]}
    assert u["victor"] == {"admin": False, "viewer": True, "teams": []}
    assert u["root"] == {"admin": True, "viewer": False, "teams": []}


@pytest.mark.parametrize("text, message", [
    ("teams: [a]", "teams must be a mapping"),
    ("teams:\n  Bad Name:\n    models: [x]", "teams.Bad Name: a team name is"),
    ("teams:\n  a:\n    models: []", "teams.a.models: a team owns at least one model"),
    ("teams:\n  a:\n    models: [\"x'; drop\"]", "teams.a.models[0]: \"x'; drop\" is not a model name"),
    ("teams:\n  a:\n    models: ['gpt[12]']", "teams.a.models[0]"),
    ("teams:\n  a:\n    models: [x]\n    members: alice", "teams.a.members: must be a list"),
    ("teams:\n  a:\n    models: [x]\n    members: [a, a]", "teams.a.members[1]: 'a' is listed twice"),
    ("teams:\n  a:\n    models: [x]\n    members: [a]\n    viewers: [a]", "listed as both members and viewers"),
    ("teams:\n  a:\n    models: [x]\n    owners: [a]", "teams.a: unknown key(s) ['owners']"),
    ("teams:\n  a:\n    models: [x]\n    members: [a]\nadmins: [a]", "admins ['a'] also belong to a team"),
    ("viewer: [a]", "unknown key(s) ['viewer']"),
    ("teams: {a: {models: [x]}\n", "not YAML"),
])
def test_a_bad_file_is_an_error_naming_the_file_and_field(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(teams.TeamsError) as e:
        teams.load(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value), str(e.value)


def test_the_sql_condition_matches_what_python_matches_and_never_a_rollup(tmp_path):
    t = teams.load(write(tmp_path, TEAMS))
    names = [m[0] for m in MODELS] + ["ALL", "gpt2", "gpt2-", "llama-70b", "llama-7b", "xgpt2-1", "bert-base-cls2"]
    con = duckdb.connect()
    con.execute("create table m as select unnest(?) as model", [names])
    for team in t.teams.values():
        got = {r[0] for r in con.execute(f"select model from m where {team.predicate()}").fetchall()}
        assert got == {n for n in names if team.owns(n)}, team.name
        assert "ALL" not in got
    lang = t.team("language")
    assert lang.owns("gpt2-124m") and lang.owns("llama-7b") and not lang.owns("llama-70b")
    with pytest.raises(teams.TeamsError, match="no team 'nope'"):
        t.team("nope")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("teams")
    lake, serving = str(root / "lake"), str(root / "serving.duckdb")
    simulate(lake, 3000, seed=7, days=3, incident_rate=0.5, serving_requests=16)
    diagnose(lake, notify_alerts=False)
    assert cli.main(["repair", "--lake", lake, "--min-severity", "info", "--apply"]) == 0  # advice: repairs rows
    build(lake, serving)
    (root / "teams.yaml").write_text(TEAMS)
    return lake, serving, root / "teams.yaml"


def query(capsys, monkeypatch, served, sql: str, team: str | None = "language") -> tuple[int, list[dict], str]:
    import json

    lake, serving, teams_file = served
    monkeypatch.setenv("MHW_TEAMS", str(teams_file))
    rc = cli.main(["query", sql, "--lake", lake, "--serving", serving, "--format", "json",
                   *(["--team", team] if team else [])])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines()], out.err


def test_a_team_query_sees_only_its_models_in_the_lake_and_the_cubes(served, capsys, monkeypatch):
    language = teams.load(served[2]).team("language")
    con = duckdb.connect(served[1], read_only=True)
    cubes = [r[0] for r in con.execute("select distinct table_name from information_schema.columns "
                                       "where column_name = 'model'").fetchall()]
    con.close()
    assert {"train_health", "loss_curve", "alert_list", "latency_sketch", "eval_health"} <= set(cubes)
    everything = connect(served[0], served[1])  # what a query without --team sees
    for name in ["train_steps", "runs", "eval_results", "latency_samples", "system_samples", "alerts", *cubes]:
        rc, rows, err = query(capsys, monkeypatch, served, f"select distinct model from {name}")
        assert rc == 0, err
        seen = {r["model"] for r in rows}
        every = everything.execute(f"select distinct model from {name}").fetchall()
        want = {m for (m,) in every if language.owns(m)}
        assert seen == want, (name, seen ^ want)
        assert seen, name  # the fixture has rows of the team's models in every table
    # The fleet-wide rollups of the cubes are nobody's: the team gets no 'ALL' row, not even one it asks for.
    rc, rows, _ = query(capsys, monkeypatch, served, "select count(*) as n from train_health where agg_level = 'total'")
    assert rc == 0 and rows == [{"n": 0}]
    rc, rows, _ = query(capsys, monkeypatch, served, "select count(*) as n from train_health where agg_level = 'total'",
                        team=None)
    assert rows == [{"n": 1}]


@pytest.mark.parametrize("sql, refused", [
    ("select count(*) from read_parquet('{lake}/train_steps/model=bert-base-cls/**/*.parquet')", "Permission Error"),
    ("select count(*) from read_parquet('{lake}/train_steps/model=gpt2-124m/../model=bert-base-cls/**/*.parquet')",
     "Permission Error"),
    ("select count(*) from read_parquet('{lake}/train_steps/*/**/*.parquet')", "Permission Error"),
    ("select count(*) from read_parquet('{lake}/train_steps/model=gpt2-124m*/**/*.parquet')", "Permission Error"),
    ("select count(*) from serving.main.train_health_daily", "does not exist"),
    ("attach '{serving}' as s2 (read_only)", "ATTACH"),
    ("select * from read_parquet('{lake}/cubes/train_health_daily/**/*.parquet')", "Permission Error"),
])
def test_a_team_query_cannot_reach_other_models_files_or_the_serving_file(served, capsys, monkeypatch, sql, refused):
    lake, serving, _ = served
    rc, rows, err = query(capsys, monkeypatch, served, sql.format(lake=lake, serving=serving))
    assert rc == 2 and not rows and refused in err, err


def test_a_team_query_reads_its_own_partitions_directly(served, capsys, monkeypatch):
    lake = served[0]
    rc, rows, err = query(capsys, monkeypatch, served,
                          f"select count(*) as n from read_parquet('{lake}/train_steps/model=gpt2-124m/**/*.parquet')")
    assert rc == 0 and rows[0]["n"] > 0, err


def test_tables_without_a_model_are_empty_for_a_team(served, capsys, monkeypatch):
    for name in ("quarantine", "audit_log", "audit_trail"):
        rc, rows, err = query(capsys, monkeypatch, served, f"select count(*) as n from {name}")
        assert rc == 0 and rows == [{"n": 0}], (name, err)
    rc, rows, _ = query(capsys, monkeypatch, served, "select count(*) as n from sketch_bounds")
    assert rows[0]["n"] > 0  # model-free: the percentile buckets


def test_an_unknown_team_is_an_error(served, capsys, monkeypatch):
    rc, _, err = query(capsys, monkeypatch, served, "select 1", team="nope")
    assert rc == 2 and "no team 'nope'" in err
