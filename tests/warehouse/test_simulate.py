import duckdb
import pyarrow.parquet as pq

from warehouse import cli
from warehouse.query import connect
from warehouse.simulate import INCIDENTS, MODELS, simulate


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


def test_resimulating_replaces_the_last_simulation_whole(tmp_path):
    root = str(tmp_path / "lake")
    simulate(root, 40_000, seed=1, days=6)
    simulate(root, 3_000, seed=1, days=2)  # fewer runs and dates: the old partitions must not linger
    con = connect(lake_root=root, serving_path="")
    assert con.execute("select count(*), count(distinct date) from train_steps").fetchall() == [(3_000, 2)]
