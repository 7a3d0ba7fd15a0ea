import duckdb
import pyarrow.parquet as pq
import pytest

from warehouse import cli
from warehouse.query import connect
from warehouse.simulate import INCIDENTS, MODELS, simulate


@pytest.mark.slow  # two simulations of 60,000 rows
def test_simulate_is_seeded_partitioned_and_plants_incidents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    totals = simulate(str(a), 60_000, seed=7, days=5, incident_rate=0.5)
    simulate(str(b), 60_000, seed=7, days=5, incident_rate=0.5)
    assert totals["train_steps"] == 60_000 and totals["runs"] > 10
    con = connect(lake_root=str(a), serving_path="")
    same = "select sum(hash(run_id, step, loss, ts)) from read_parquet('{}/train_steps/**/*.parquet')"
    assert duckdb.sql(same.format(a)).fetchall() == duckdb.sql(same.format(b)).fetchall()
    n, days, models, hw = con.execute(
        "select count(*), count(distinct date), count(distinct model), count(distinct hardware) from train_steps").fetchall()[0]
    assert n == 60_000 and days == 5 and models > 1 and hw > 1
    # Each run's steps are 0..n-1 exactly once, and every fact row carries the run's partitions.
    assert con.execute("select count(*) from (select run_id, count(*) c, count(distinct step) d, max(step) m "
                       "from train_steps group by run_id) where c != d or m != c - 1").fetchall() == [(0,)]
    assert con.execute("select count(*) from train_steps s join runs r using (run_id) "
                       "where s.model != r.model or s.hardware != r.hardware").fetchall() == [(0,)]
    assert con.execute("select count(*) from runs where source != 'synthetic'").fetchall() == [(0,)]
    truth = pq.read_table(a / "_ground_truth" / "incidents.parquet").to_pylist()
    assert truth and {t["incident"] for t in truth} <= set(INCIDENTS)
    # A planted divergence shows in the data: NaN loss from its onset step, and the run says diverged.
    div = [t for t in truth if t["incident"] == "divergence"]
    assert div, "seed 7 at 50 % incidents plants at least one divergence"
    r = div[0]
    got = con.execute("select min(step) from train_steps where run_id = ? and (isnan(loss) or isinf(loss))",
                      [r["run_id"]]).fetchall()[0][0]
    assert got == r["onset_step"]
    assert con.execute("select status from runs where run_id = ?", [r["run_id"]]).fetchall() == [("diverged",)]


def test_cli_simulate_then_query(lake_root, capsys):
    assert cli.main(["simulate", "--rows", "5000", "--days", "2"]) == 0
    assert "train_steps" in capsys.readouterr().out
    assert cli.main(["query", "select model, count(*) n from train_steps group by model order by model",
                     "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "model,n" and sum(int(l.split(",")[1]) for l in out[1:]) == 5000
    assert {l.split(",")[0] for l in out[1:]} <= {m[0] for m in MODELS}


@pytest.mark.slow  # two simulations, one of 40,000 rows
def test_resimulating_replaces_the_last_simulation_whole(tmp_path):
    root = str(tmp_path / "lake")
    simulate(root, 40_000, seed=1, days=6)
    simulate(root, 3_000, seed=1, days=2)  # fewer runs and dates: the old partitions must not linger
    con = connect(lake_root=root, serving_path="")
    assert con.execute("select count(*), count(distinct date) from train_steps").fetchall() == [(3_000, 2)]


# --- planted incidents: one type per diagnostic rule, with ground truth -------------------------------

import math  # noqa: E402

from warehouse.simulate import FLEET_INCIDENTS, RUN_INCIDENTS  # noqa: E402


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "lake"
    simulate(str(root), 120_000, seed=9, days=8, incident_rate=0.8, steps_per_run=600, fleet_incidents=1,
             serving_requests=100)
    truth = pq.read_table(root / "_ground_truth" / "incidents.parquet").to_pylist()
    con = connect(lake_root=str(root), serving_path="")
    for name in ("train_steps", "eval_results", "latency_samples"):  # many small queries: read the files once
        con.execute(f"create temp table {name}_read as select * from {name}")
        con.execute(f"create or replace view {name} as select * from {name}_read")
    return con, truth


@pytest.mark.slow  # a simulation of 120,000 rows (`planted`)
def test_every_incident_type_is_planted_with_its_ground_truth(planted):
    con, truth = planted
    assert {t["incident"] for t in truth} == set(INCIDENTS) == set(RUN_INCIDENTS) | set(FLEET_INCIDENTS)
    runs = dict(con.execute("select run_id, precision from runs").fetchall())
    for t in truth:
        assert t["magnitude"] == 1.0 and t["onset_date"] is not None and t["model"] and t["hardware"]
        if t["level"] == "run":
            assert runs[t["run_id"]] == t["precision"] and t["onset_step"] >= 0 and t["suite"] is None
        else:
            assert t["run_id"] is None and t["onset_step"] is None
    fleet = {t["incident"]: t for t in truth if t["level"] == "fleet"}
    assert fleet["precision_gap"]["precision"] == "int8" and fleet["precision_gap"]["suite"] == "quality"
    assert fleet["eval_regression"]["suite"] in ("quality", "robustness")
    assert fleet["latency_slo_breach"]["precision"] in ("fp32", "bf16", "int8")
    # fleet incidents sit on distinct model x hardware pairs
    assert len({(t["model"], t["hardware"]) for t in fleet.values()}) == len(fleet)


def _runs_of(truth, incident):
    return [t for t in truth if t["incident"] == incident]


@pytest.mark.slow  # a simulation of 120,000 rows (`planted`)
def test_run_incidents_show_in_the_data_from_their_onset(planted):
    con, truth = planted

    def one(sql, t):
        return con.execute(sql.replace("$run", f"'{t['run_id']}'").replace("$onset", str(t["onset_step"]))).fetchall()[0]

    for t in _runs_of(truth, "divergence"):
        assert one("select min(step) from train_steps where run_id = $run and not (abs(loss) < 'inf'::double)", t) == (t["onset_step"],)
    for t in _runs_of(truth, "loss_spike"):
        ratio, = one("""select max(loss) filter (where step between $onset and $onset + 2)
                        / median(loss) filter (where step between $onset - 50 and $onset - 1)
                        from train_steps where run_id = $run""", t)
        assert ratio > 2.5
    for t in _runs_of(truth, "exploding_gradients"):
        assert one("select max(grad_norm) > 100 * min(grad_norm) filter (where step < $onset) from train_steps "
                   "where run_id = $run", t) == (True,)
    for t in _runs_of(truth, "vanishing_gradients"):
        assert one("select max(grad_norm) filter (where step >= $onset + 50) < 0.01 from train_steps where run_id = $run", t) == (True,)
    for t in _runs_of(truth, "lr_schedule_anomaly"):  # lr jumps by exactly 1 + 9 m at onset
        ratio, = one("""select max(lr) filter (where step = $onset) / max(lr) filter (where step = $onset - 1)
                        from train_steps where run_id = $run""", t)
        assert ratio == pytest.approx(10, rel=0.01)
    for t in _runs_of(truth, "data_stall"):
        assert one("select sum(data_time_ms) / sum(step_time_ms) > 0.3 from train_steps where run_id = $run "
                   "and step between $onset and $onset + 299", t) == (True,)
    for t in _runs_of(truth, "throughput_drop"):
        ratio, = one("""select median(tokens_per_s) filter (where step between $onset and $onset + 20)
                        / median(tokens_per_s) filter (where step < $onset) from train_steps where run_id = $run""", t)
        assert ratio == pytest.approx(0.5, rel=0.05)
    for t in _runs_of(truth, "gpu_underutilization"):
        assert one("select avg(gpu_util) filter (where step >= $onset) < 50 from train_steps where run_id = $run", t) == (True,)
    for t in _runs_of(truth, "memory_pressure"):
        assert one("select min(gpu_mem_gb / gpu_mem_total_gb) filter (where step >= $onset) > 0.97 from train_steps "
                   "where run_id = $run", t) == (True,)
    for t in _runs_of(truth, "overfitting"):  # the last validation loss is above the best one
        assert one("""select max_by(value, checkpoint_step) > 1.05 * min(value) from eval_results
                      where train_run_id = $run and suite = 'validation' and metric = 'loss'""", t) == (True,)
    for t in _runs_of(truth, "plateau"):  # flat after onset: the last 200 steps are no better than onset's
        late, at = one("""select median(loss) filter (where step >= max_step - 200),
                                 median(loss) filter (where step between $onset and $onset + 100)
                          from (select *, max(step) over () max_step from train_steps where run_id = $run)""", t)
        assert late == pytest.approx(at, rel=0.01)


@pytest.mark.slow  # a simulation of 120,000 rows (`planted`)
def test_runs_without_an_incident_are_clean(planted):
    con, truth = planted
    hit = ", ".join(f"'{t['run_id']}'" for t in truth if t["level"] == "run")
    bad = con.execute(f"""
        with clean as (select * from train_steps where run_id not in ({hit})),
        per_run as (
            select run_id,
                count(*) filter (where not (abs(loss) < 'inf'::double)) as n_nonfinite,
                min(gpu_util) as util_min, max(gpu_mem_gb / gpu_mem_total_gb) as mem_max,
                max(data_time_ms / step_time_ms) as data_share_max,
                max(grad_norm) / min(grad_norm) as grad_range,
                max(tokens_per_s) / min(tokens_per_s) as tps_range
            from clean group by run_id),
        lr_jumps as (
            select run_id, lr / lag(lr) over (partition by run_id order by step) as up from clean)
        select run_id from per_run
        where n_nonfinite > 0 or util_min < 70 or mem_max > 0.85 or data_share_max > 0.05 or grad_range > 20
            or tps_range > 1.3
        union all
        select distinct run_id from lr_jumps where up > 2.01""").fetchall()
    assert bad == []
    assert con.execute(f"select count(distinct run_id) from train_steps where run_id not in ({hit})").fetchall()[0][0] > 5


@pytest.mark.slow  # a simulation of 30,000 rows per magnitude
def test_magnitude_scales_the_incidents(tmp_path):
    jumps = {}
    for m in (0.4, 2.0):
        root = tmp_path / f"m{m}"
        simulate(str(root), 30_000, seed=4, days=3, incident_rate=1.0, magnitude=m, fleet_incidents=0,
                 serving_requests=10)
        truth = pq.read_table(root / "_ground_truth" / "incidents.parquet").to_pylist()
        assert {t["magnitude"] for t in truth} == {m}
        con = connect(lake_root=str(root), serving_path="")
        t = next(t for t in truth if t["incident"] == "lr_schedule_anomaly")
        jumps[m] = con.execute(f"""select max(lr) filter (where step = {t['onset_step']})
                                  / max(lr) filter (where step = {t['onset_step'] - 1})
                                  from train_steps where run_id = '{t['run_id']}'""").fetchall()[0][0]
    assert jumps[0.4] == pytest.approx(4.6, rel=0.01) and jumps[2.0] == pytest.approx(19, rel=0.01)


@pytest.mark.slow  # a simulation of 120,000 rows (`planted`)
def test_fleet_incidents_show_in_the_serving_data(planted):
    con, truth = planted
    fleet = {t["incident"]: t for t in truth if t["level"] == "fleet"}
    gap = fleet["precision_gap"]
    gaps = dict(con.execute("""
        select (model = ? and hardware = ?) as planted,
               max(f.value - i.value) from eval_results f join eval_results i
               using (model, hardware, suite, metric, date)
        where f.precision = 'fp32' and i.precision = 'int8' and suite = 'quality' and metric = 'accuracy'
        group by all""", [gap["model"], gap["hardware"]]).fetchall())
    assert gaps[True] > 0.025 and gaps[False] < 0.01
    err = fleet["error_rate_breach"]
    rates = dict(con.execute("""
        select (model = ? and hardware = ? and precision = ? and date >= ?) as planted, avg(1 - ok::int)
        from latency_samples group by all""", [err["model"], err["hardware"], err["precision"], err["onset_date"]]).fetchall())
    assert rates[True] > 0.02 and rates[False] < 0.002  # training-checkpoint requests never fail: diluted
    assert math.isfinite(rates[False])
