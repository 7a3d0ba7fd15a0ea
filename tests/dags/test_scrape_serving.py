"""dags/scrape_serving.py through Airflow's dag.test(), against a real mhw serve on 127.0.0.1: each run
scrapes the configured targets (one mapped task each) into serving_scrapes; a target that is down
lands up = 0 without failing its task; the counts of the load between runs reach the cube."""
import pytest
import yaml

from model import loadgen, serve
from pipelines.airflow_local import run_dag_test
from pipelines.build import build
from pipelines.localhost import free_port
from warehouse.query import connect

pytestmark = pytest.mark.airflow_server  # Airflow runs the DAG for real


def test_each_run_scrapes_every_target_and_a_dead_one_does_not_fail(lake_root, tmp_path, monkeypatch, airflow_db,
                                                                      serve_checkpoint):
    port, dead = free_port(), free_port()
    cfg = tmp_path / "mhw.yaml"
    cfg.write_text(yaml.safe_dump({"scrape": {"timeout_s": 5, "targets": [
        {"url": f"http://127.0.0.1:{port}/metrics", "hardware": "cpu-dag", "precision": "fp32", "model": "tiny"},
        {"url": f"http://127.0.0.1:{dead}/metrics", "hardware": "cpu-dag", "precision": "fp32", "model": "gone"}]}}))
    monkeypatch.setenv("MHW_CONFIG", str(cfg))
    proc = serve.spawn(serve_checkpoint, port, str(tmp_path / "serve.log"), model="tiny")
    try:
        run_dag_test("scrape_serving")
        load = loadgen.run_load(f"http://127.0.0.1:{port}", requests=15, concurrency=2, bad_every=5)
        run_dag_test("scrape_serving")
    finally:
        serve.stop(proc)
    con = connect(serving_path="")
    ups = con.execute("select model, value, count(*) from serving_scrapes where metric = 'up' "
                      "group by all order by all").fetchall()
    assert ups == [("gone", 0.0, 2), ("tiny", 1.0, 2)]
    build(lake_root, str(tmp_path / "serving.duckdb"))
    con = connect(serving_path=str(tmp_path / "serving.duckdb"))
    got = con.execute("select n_requests, n_ok, n_client_error from serving_health "
                      "where model = 'tiny' and period = 'day' and source = 'scrape'").fetchall()
    assert got == [(15, len(load.ok), 3)]
