"""Airflow's users from conf/teams.yaml (pipelines/airflow_local.users), checked with Airflow's own
simple auth manager in process: the admins run DAGs, every team member and viewer only reads them
(Airflow 3.3's simple auth manager grants by role, not by DAG: see airflow_local's docstring)."""
from __future__ import annotations

from pipelines.airflow_local import environment, users

TEAMS = """
teams:
  language:
    models: ["gpt2-*"]
    members: [alice]
    viewers: [carol]
viewers: [victor]
admins: [root]
"""


def test_users_follow_the_teams_file(tmp_path, monkeypatch):
    f = tmp_path / "teams.yaml"
    f.write_text(TEAMS)
    assert users(f) == "admin:admin,alice:viewer,carol:viewer,root:admin,victor:viewer"
    monkeypatch.setenv("MHW_TEAMS", str(f))
    assert environment(tmp_path)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == users(f)


def test_team_users_read_dags_and_run_none(tmp_path, monkeypatch):
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    f = tmp_path / "teams.yaml"
    f.write_text(TEAMS)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", users(f))
    am = SimpleAuthManager()
    by_name = {u.username: u for u in am.get_users()}
    assert set(by_name) == {"admin", "alice", "carol", "root", "victor"}
    dag = DagDetails(id="build_cubes")
    for name in ("alice", "carol", "victor"):
        u = by_name[name]
        assert am.is_authorized_dag(method="GET", details=dag, user=u)
        assert am.is_authorized_dag(method="GET", access_entity=DagAccessEntity.TASK_LOGS, details=dag, user=u)
        for method in ("POST", "PUT", "DELETE"):  # trigger, pause, clear, delete: none
            assert not am.is_authorized_dag(method=method, details=dag, user=u), (name, method)
            assert not am.is_authorized_dag(method=method, access_entity=DagAccessEntity.RUN, details=dag, user=u)
    for name in ("admin", "root"):
        assert am.is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN, details=dag, user=by_name[name])
