"""Every DAG file parses with zero import errors and no connection lookups, and has the task
structure the project relies on."""
import pytest

from pipelines.airflow_local import DAGS

DAG_IDS = ["build_cubes", "evaluate_models", "maintenance", "repair_runs", "scrape_serving", "train_model"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.connection import Connection

    looked_up = []
    orig = Connection.get
    Connection.get = classmethod(lambda cls, conn_id: looked_up.append(conn_id) or orig.__func__(cls, conn_id))
    try:
        bag = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})
    finally:
        Connection.get = orig
    assert looked_up == [], f"DAG files looked up connections at parse time: {looked_up}"
    return bag


def test_every_dag_file_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == DAG_IDS
    for dag in dagbag.dags.values():
        assert dag.tags and "mhw" in dag.tags
        assert dag.doc_md, f"{dag.dag_id} has no Markdown docstring"
        assert dag.catchup is False
        assert str(dag.start_date.tzinfo) == "UTC"


def _edges(dag):
    return {(t.task_id, d) for t in dag.tasks for d in sorted(t.downstream_task_ids)}


def test_train_model_structure(dagbag):
    dag = dagbag.dags["train_model"]
    (train,) = dag.tasks
    assert train.task_id == "train" and train.pool == "gpu" and train.retries == 2
    assert {a.name for a in train.outlets} == {"lake.runs", "lake.train_steps", "lake.eval_results", "lake.system_samples"}
    assert dag.schedule is None  # triggered with params, never on a timer
    assert set(dag.params) == {"config", "precision", "steps", "hardware", "nproc", "overrides"}


def test_evaluate_models_structure(dagbag):
    dag = dagbag.dags["evaluate_models"]
    assert _edges(dag) == {("find_unevaluated", "evaluate")}
    assert dag.get_task("evaluate").pool == "gpu"
    assert dag.max_active_runs == 1


def test_build_cubes_runs_on_lake_assets(dagbag):
    dag = dagbag.dags["build_cubes"]
    # data order: the rules read the lake; one build then serves the cubes and the alerts
    assert _edges(dag) == {("diagnose", "build"), ("build", "notify"), ("notify", "summarize")}
    consumed = {a.name for a in dag.timetable.asset_condition.objects}
    assert consumed == {"lake.train_steps", "lake.eval_results", "lake.latency_samples", "lake.system_samples",
                        "lake.serving_scrapes", "lake.serving_requests", "lake.repairs"}
    assert {a.name for a in dag.get_task("build").outlets} == {"serving.cubes"}
    assert {a.name for a in dag.get_task("diagnose").outlets} == {"lake.alerts"}  # what repair_runs reacts to


def test_repair_runs_reacts_to_alerts(dagbag):
    dag = dagbag.dags["repair_runs"]
    assert _edges(dag) == {("enabled", "plan"), ("plan", "train"), ("train", "judge"), ("judge", "notify")}
    assert dag.timetable.asset_condition.name == "lake.alerts"
    train, judge = dag.get_task("train"), dag.get_task("judge")
    assert train.pool == "gpu" and train.retries == 2 and judge.retries == 2
    assert {"lake.train_steps", "lake.runs", "lake.repairs"} <= {a.name for a in train.outlets}
    # the judge's diagnose updates the alerts: the next attempt runs in the DAG run that event starts
    assert {a.name for a in judge.outlets} == {"lake.alerts", "lake.repairs"}
    assert dag.max_active_runs == 1


def test_maintenance_is_daily(dagbag):
    dag = dagbag.dags["maintenance"]
    assert [t.task_id for t in dag.tasks] == ["compact_and_retain"]
    assert dag.schedule == "@daily"


def test_scrape_serving_maps_one_task_per_target_every_minute(dagbag):
    dag = dagbag.dags["scrape_serving"]
    assert _edges(dag) == {("find_targets", "scrape")}
    assert dag.schedule == "* * * * *" and dag.max_active_runs == 1
    assert {a.name for a in dag.get_task("scrape").outlets} == {"lake.serving_scrapes"}
