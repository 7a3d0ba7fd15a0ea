"""Every alert of ``mhw diagnose`` equals the reference rules' (the rules before issue 14, each reading raw
rows over the whole lake: tests/pipelines/diagnose_reference.py), column for column, on DuckDB: on the
hand-built lake where each rule fires, on a simulated fleet (two seeds, short and long runs, most with an
incident) and on a lake of every real log; and after incremental diagnoses of appended, extended and
removed data, the stored alerts table equals the reference on the whole lake. The Spark twin is in
test_diagnose_spark.py."""
from __future__ import annotations

import datetime as dt
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from diagnose_reference import assert_same_alerts, needs_real, real_lake, reference_alerts
from pipelines.alerts import read_alerts
from pipelines.diagnose import diagnose
from pipelines.engines.duckdb_engine import DuckDBEngine
from test_diagnose_rules import build_lake
from warehouse.simulate import simulate
from warehouse.writer import Lake


def sim_lake(root: str, scale: int = 1) -> None:
    """Two fleets in one lake: many short runs (peers by the dozen per model) and fewer long ones at
    half the incident size, most runs with an incident."""
    simulate(root, 50_000 // scale, seed=3, days=5, incident_rate=0.6, steps_per_run=250, fleet_incidents=2,
             serving_requests=120)
    simulate(root, 30_000 // scale, seed=4, days=5, incident_rate=0.6, steps_per_run=1000, magnitude=0.6,
             fleet_incidents=1, serving_requests=120)


@pytest.fixture(scope="module")
def lakes(tmp_path_factory):
    made = {}

    def get(name: str) -> str:
        if name not in made:
            root = str(tmp_path_factory.mktemp(name) / "lake")
            {"rules": build_lake, "sim": sim_lake, "real": real_lake}[name](root)
            made[name] = root
        return made[name]
    return get


def shipped(lake: str, **kw) -> list[dict]:
    return diagnose(lake, full=True, notify_alerts=False, **kw).alerts


@pytest.mark.parametrize("name", ["rules", pytest.param("sim", marks=pytest.mark.slow),
                                  pytest.param("real", marks=[needs_real, pytest.mark.slow])])
def test_a_full_diagnose_equals_the_reference(lakes, name):
    lake = lakes(name)
    expected = reference_alerts(lake, DuckDBEngine())
    assert len(expected) >= {"rules": 16, "sim": 60, "real": 15}[name]
    assert_same_alerts(expected, shipped(lake))


@pytest.mark.slow  # a diagnose in a dozen batches, and the reference
def test_run_rules_in_batches_equal_the_reference(lakes, monkeypatch):
    """A budget that cuts the runs in scope into a dozen batches, most models split across two: every
    batch holds only its runs' steps and reads its models' other runs raw as peers; the alerts do not
    change."""
    from pipelines import diagnose as diagnose_mod

    lake = lakes("sim")
    files = [p for paths in Lake(lake).list_files("train_steps").values() for p in paths]
    budget = sum(os.path.getsize(p) for p in files) // 12
    monkeypatch.setattr(diagnose_mod, "BATCH_BYTES", budget)
    said: list[str] = []
    result = diagnose(lake, full=True, notify_alerts=False, log=said.append)
    batches = [m for m in said if m.startswith("run rules: batch")]
    assert len(batches) >= 10, batches
    assert_same_alerts(reference_alerts(lake, DuckDBEngine()), result.alerts)


def test_a_run_that_logs_no_precision_nor_gpu(tmp_path):
    """A run with only loss, LR and grad norm (text columns all null): the shared pass and the rules take it
    as the reference does."""
    lake = str(tmp_path / "lake")
    n = 600
    rng = np.random.default_rng(1)
    t0 = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
    Lake(lake).write("train_steps", pa.table({
        "run_id": ["bare"] * n, "step": np.arange(n), "ts": [t0 + dt.timedelta(seconds=i) for i in range(n)],
        "loss": np.r_[np.full(300, 2.0), np.full(300, 9.0)] * rng.lognormal(0, 0.01, n),
        "lr": np.r_[np.linspace(1e-3, 1e-4, 400), np.full(200, 1e-2)], "grad_norm": rng.lognormal(0, 0.1, n),
        "model": ["m"] * n, "hardware": ["cpu"] * n}), "bare")
    expected = reference_alerts(lake, DuckDBEngine())
    assert {a["rule"] for a in expected} >= {"lr_schedule_anomaly", "loss_spike"}
    assert_same_alerts(expected, shipped(lake))


def extend(lake: str) -> None:
    """New data of every kind a diagnose must notice: an existing run logs 400 more steps (its blocks all
    move: their size follows its length) and its loss climbs; a new run of an existing model starts; a
    day of one run is removed (a retention job's delete)."""
    steps = Lake(lake)
    data = ds.dataset(f"{lake}/train_steps", format="parquet", partitioning="hive").to_table()
    first = sorted(set(data.column("run_id").to_pylist()))[5]
    run = data.filter(pc.equal(data.column("run_id"), first)).sort_by("step")
    last = run.slice(run.num_rows - 1).to_pylist()[0]
    n = 400
    rng = np.random.default_rng(0)
    more = pa.table({
        "run_id": [first] * n, "step": np.arange(last["step"] + 1, last["step"] + 1 + n),
        "ts": [last["ts"] + dt.timedelta(seconds=10 * (i + 1)) for i in range(n)],
        "precision": [last["precision"]] * n,
        "loss": last["loss"] * np.linspace(1.0, 3.0, n) * rng.lognormal(0, 0.01, n),
        "lr": [last["lr"]] * n, "grad_norm": last["grad_norm"] * np.linspace(1, 40, n),
        "tokens_per_s": [last["tokens_per_s"]] * n, "step_time_ms": [last["step_time_ms"]] * n,
        "data_time_ms": [last["data_time_ms"]] * n, "model": [last["model"]] * n, "hardware": [last["hardware"]] * n,
    })
    steps.write("train_steps", more, f"{first}-more")
    fresh = run.slice(0, 250).to_pydict()
    fresh["run_id"] = ["fresh-run"] * len(fresh["step"])
    fresh["loss"] = [v * 1.8 for v in fresh["loss"]]  # stuck far above its peers
    fresh["ts"] = [t + dt.timedelta(days=1) for t in fresh["ts"]]
    del fresh["date"]
    steps.write("train_steps", pa.table(fresh), "fresh-run")
    gone = sorted(p for paths in steps.list_files("train_steps").values() for p in paths)[7]
    assert steps.delete(gone)


@pytest.mark.slow  # three diagnoses and the reference
def test_incremental_diagnoses_keep_the_stored_alerts_equal_to_the_reference(lakes, tmp_path):
    lake = str(tmp_path / "lake")
    shutil.copytree(lakes("sim"), lake)
    diagnose(lake, notify_alerts=False)
    extend(lake)
    second = diagnose(lake, notify_alerts=False)
    assert not second.full and 0 < second.runs_in_scope
    stored = read_alerts(Lake(lake))
    assert_same_alerts(reference_alerts(lake, DuckDBEngine()), stored)
    again = diagnose(lake, notify_alerts=False)  # nothing changed: nothing recomputed, the same table
    assert (again.runs_in_scope, again.pairs_in_scope) == (0, 0)
    assert_same_alerts(stored, read_alerts(Lake(lake)))


@pytest.mark.slow  # three diagnoses, the reference twice
def test_peers_kept_between_diagnoses_give_the_reference_alerts(lakes, tmp_path):
    """pipelines/kept.py: a run appended to a model is compared with the model's other runs as the
    last diagnose kept them (their rows are not read again) and the alerts equal the reference's on the
    whole lake; a run longer than the model's longest moves the grid: the others are read again, and the
    new run's alerts equal the reference's. The per-run throughput (throughput_regression) is kept for
    every run but the new: the rule's alerts equal the reference's, which reads raw rows."""
    lake = str(tmp_path / "lake")
    shutil.copytree(lakes("sim"), lake)
    diagnose(lake, notify_alerts=False)
    data = ds.dataset(f"{lake}/train_steps", format="parquet", partitioning="hive").to_table()
    # the longest run of a model with a throughput regression (ties: the first run id)
    flagged = {a["model"] for a in read_alerts(Lake(lake)) if a["rule"] == "throughput_regression"}
    longest = data.filter(pc.is_in(data["model"], pa.array(sorted(flagged)))).sort_by(
        [("step", "descending"), ("run_id", "ascending")]).slice(0, 1).to_pylist()[0]
    model = longest["model"]
    run = data.filter(pc.equal(data["run_id"], longest["run_id"])).sort_by("step")
    runs = ds.dataset(f"{lake}/runs", format="parquet", partitioning="hive").to_table()

    def add(*new: tuple[str, pa.Table, float]) -> list[str]:
        for name, rows, factor in new:
            rows = rows.to_pydict()
            rows["run_id"] = [name] * len(rows["step"])
            rows["loss"] = [v * factor for v in rows["loss"]]
            del rows["date"]
            Lake(lake).write("train_steps", pa.table(rows), name)
            same = runs.filter(pc.equal(runs["run_id"], longest["run_id"]))  # same model and data: a peer
            Lake(lake).write("runs", same.set_column(same.schema.get_field_index("run_id"), "run_id",
                                                     pa.array([name] * same.num_rows, pa.string())), name)
        said: list[str] = []
        diagnose(lake, notify_alerts=False, log=said.append)
        return [m for m in said if m.startswith(("model_cells:", "run_throughput:"))]

    stuck = add(("stuck-run", run.slice(0, 250), 1.8))  # shorter than the longest, far above its peers
    assert stuck == [f"model_cells: kept rows of ['{model}'], raw rows of []",
                     f"run_throughput: kept rows of ['{model}'], raw rows of []"]
    alerts = read_alerts(Lake(lake))
    assert ("underfitting", "stuck-run") in {(a["rule"], a["run_id"]) for a in alerts}
    assert_same_alerts(reference_alerts(lake, DuckDBEngine()), alerts)
    more = pa.concat_tables([run, run.slice(run.num_rows - 100).set_column(
        run.schema.get_field_index("step"), "step", pc.add(run.slice(run.num_rows - 100)["step"], 100))])
    # the model's longest run grows: a new grid, the peers read again, for a new stuck run too
    longer = add(("longer-run", more, 1.0), ("stuck-again", run.slice(0, 300), 1.8))
    assert longer == [f"model_cells: kept rows of [], raw rows of ['{model}']",
                      f"run_throughput: kept rows of ['{model}'], raw rows of []"]
    # (the other runs keep their verdicts until their own rows change: only the new runs' are recomputed)
    mine = [a for a in read_alerts(Lake(lake)) if a["run_id"] in ("longer-run", "stuck-again")]
    assert ("underfitting", "stuck-again") in {(a["rule"], a["run_id"]) for a in mine}
    expected = reference_alerts(lake, DuckDBEngine())
    assert_same_alerts([a for a in expected if a["run_id"] in ("longer-run", "stuck-again")], mine)
    # the per-run throughput kept throughout: every pair of the model recomputed from it, as the
    # reference computes it from raw rows
    assert_same_alerts([a for a in expected if a["rule"] == "throughput_regression"],
                       [a for a in read_alerts(Lake(lake)) if a["rule"] == "throughput_regression"])
