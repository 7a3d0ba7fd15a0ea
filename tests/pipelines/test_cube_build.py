"""mhw build on DuckDB: the cube's numbers against the raw rows, and incremental builds equal to a
full rebuild after appends, rewrites and deletions in the lake."""
import datetime as dt
import json
import math
import os
from pathlib import Path

import duckdb
import pytest

from cube_lake import (DAY0, HARDWARE, MODELS, assert_tables_equal, copy_lake, make_lake, mutate, serving_tables,
                       write_day, write_repairs)
from pipelines import build as build_mod
from pipelines import lakefiles
from pipelines.build import build
from warehouse.cli import main
from warehouse.schemas import TABLES
from warehouse.writer import Lake

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source_lake(tmp_path_factory):
    return make_lake(str(tmp_path_factory.mktemp("src") / "lake"))


@pytest.fixture
def lake(source_lake, tmp_path):
    return copy_lake(source_lake, str(tmp_path / "lake"))


def served(path: str, sql: str, params=()):
    con = duckdb.connect()
    con.execute(f"attach '{path}' as s (read_only)")
    con.execute("use s")
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def raw(lake: str, sql: str):
    con = duckdb.connect()
    con.execute("set disabled_optimizers = 'statistics_propagation'")
    con.execute(f"create view train_steps as select * from read_parquet('{lake}/train_steps/**/*.parquet', "
                "hive_partitioning = true, hive_types = {'date': 'DATE'})")
    return con.execute(sql).fetchall()


def test_cube_numbers_match_the_raw_rows(lake, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    r = build(lake, serving)
    assert r.full and r.serving_mode == "fresh"
    run = f"{MODELS[1]}-{HARDWARE[1]}-r0"
    got = served(serving, "select n_steps, n_loss, n_loss_nonfinite, n_grad_norm_nonfinite, n_step_time, "
                          "step_min, step_max, first_step, last_step from train_health "
                          "where run_id = ? and date = ?", [run, DAY0])
    assert got == [(100, 97, 3, 1, 97, 0, 99, 0, 99)]  # NaN, +inf, -inf loss; 0 ms counts, inf/NaN/null not
    (loss_sum, loss_min, last_loss), = raw(lake, f"select sum(loss) filter (where abs(loss) < 'inf'::double), "
                                                 f"min(loss) filter (where abs(loss) < 'inf'::double), "
                                                 f"arg_max(loss, step) from train_steps where run_id = '{run}' "
                                                 f"and date = '{DAY0}'")
    (c_sum, c_min, c_last, c_mean), = served(serving, "select loss_sum, loss_min, last_loss, loss_mean "
                                                      "from train_health where run_id = ? and date = ?", [run, DAY0])
    assert math.isclose(c_sum, loss_sum, rel_tol=1e-12) and c_min == loss_min and c_last == last_loss
    assert math.isclose(c_mean, loss_sum / 97, rel_tol=1e-12)


def test_first_loss_ties_are_broken_by_run_id(lake, tmp_path):
    """Runs r0 and r1 of one configuration log the same (ts, step): the configuration's first loss is
    r0's, in both the daily and the window rollups."""
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    m, h = MODELS[0], HARDWARE[0]  # r0 and r1 both bf16 on h100
    (first_run, first_loss), = served(serving, "select first_run_id, first_loss from train_health where "
                                               "agg_level = 'model,hardware,precision,date' and model = ? and "
                                               "hardware = ? and precision = 'bf16' and date = ?", [m, h, DAY0])
    assert first_run == f"{m}-{h}-r0"
    (r0_first,), = raw(lake, f"select loss from train_steps where run_id = '{m}-{h}-r0' and step = 0")
    assert first_loss == r0_first


def test_grouping_levels_and_all_markers(lake, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    levels = dict(served(serving, "select agg_level, count(*) from train_health group by all"))
    assert levels["total"] == 1 and levels["date"] == 3 and levels["model,date"] == 6
    assert set(levels) == {
        "model,hardware,precision,date,run_id", "model,hardware,precision,date", "model,hardware,date",
        "model,date", "hardware,precision,date", "hardware,date", "precision,date", "date",
        "model,hardware,precision", "model,hardware", "model", "hardware,precision", "hardware", "precision",
        "total"}
    (n_total, model, gid), = served(serving, "select n_steps, model, grouping_id from train_health "
                                             "where agg_level = 'total'")
    (n_raw,), = raw(lake, "select count(*) from train_steps")
    assert n_total == n_raw and model == "ALL" and gid == 31
    for level, n in served(serving, "select agg_level, sum(n_steps) from train_health group by all"):
        assert n == n_raw, level
    # eval's levels with the run rolled up are latency's, so every one of their rows has its latency;
    # the run levels have none (latency samples name no training run)
    (_, n_run_rows, n_run_latency), (_, n_rolled, n_rolled_latency) = served(
        serving, "select run_id = 'ALL' as rolled, count(*), count(latency_p95_ms) from eval_health "
                 "group by rolled order by rolled")
    assert n_run_rows == 2 * 2 * 3 * 2 * 3 * 2  # models × hardware × days × runs × metrics × (daily, window)
    assert n_run_latency == 0 and n_rolled_latency == n_rolled > n_run_rows
    assert served(serving, "select grouping_id, agg_level from eval_health where run_id != 'ALL' "
                           "group by all order by all") == [
        (0, "model,hardware,precision,checkpoint_step,date,run_id"),
        (2, "model,hardware,precision,checkpoint_step,run_id")]


def test_eval_cube_keeps_each_run_of_a_checkpoint(lake, tmp_path):
    """Runs r0 and r1 of one model × hardware are evaluated at the same checkpoint on the same day:
    the run level holds each run's own value (a checkpoint naming no training run under its eval
    run); the checkpoint level merges them, as every rolled-up level does."""
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    m, h, day = MODELS[0], HARDWARE[1], DAY0 + dt.timedelta(days=2)
    con = duckdb.connect()
    raw_rows = con.execute(
        f"select coalesce(train_run_id, run_id), suite, metric, value from read_parquet("
        f"'{lake}/eval_results/**/*.parquet', hive_partitioning = true) where model = '{m}' and hardware = '{h}' "
        f"and date = '{day}' order by all").fetchall()
    assert [r[0] for r in raw_rows] == [f"{m}-{h}-r0"] * 3 + [f"{m}-{h}-r1"] * 3
    got = served(serving, "select run_id, suite, metric, value_mean from eval_health "
                          "where agg_level = 'model,hardware,precision,checkpoint_step,date,run_id' "
                          "and model = ? and hardware = ? and date = ? and checkpoint_step = 300 order by all",
                 [m, h, day])
    assert got == raw_rows
    # the same runs over the whole window: one checkpoint each, so the same values
    window = served(serving, "select run_id, suite, metric, value_mean, date from eval_health where agg_level = "
                             "'model,hardware,precision,checkpoint_step,run_id' and model = ? and hardware = ? "
                             "and checkpoint_step = 300 order by all", [m, h])
    assert window == [r + (None,) for r in raw_rows]
    merged = served(serving, "select suite, metric, n_results, value_mean, run_id, last_run_id from eval_health "
                             "where agg_level = 'model,hardware,precision,checkpoint_step,date' and model = ? "
                             "and hardware = ? and date = ? order by all", [m, h, day])
    assert merged == [
        (suite, metric, 2, pytest.approx((a + b) / 2, rel=1e-12), "ALL", f"{m}-{h}-eval-r1")
        for (_, suite, metric, a), (_, _, _, b) in zip(raw_rows[:3], raw_rows[3:])]
    # day 0: r1's quality evals name no training run, so they stand under their eval run
    bare = served(serving, "select distinct run_id from eval_health where grouping_id = 0 and model = ? and "
                           "hardware = ? and date = ? and suite = 'quality' order by 1", [m, h, DAY0])
    assert bare == [(f"{m}-{h}-eval-r1",), (f"{m}-{h}-r0",)]


@pytest.mark.slow  # a full build, an incremental one and a full rebuild to compare
def test_incremental_build_equals_full_rebuild(lake, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    first = build(lake, serving)
    assert first.full
    mutate(lake)
    inc = build(lake, serving)
    assert not inc.full and inc.serving_mode == "patched"
    # only what changed: 4 new + 4 rewritten + 1 appended train partitions, dates 0, 1 and 3
    assert inc.rebuilt["train_health_base"] == 9
    assert inc.rebuilt["train_health_daily"] == 3
    assert inc.rebuilt["latency_base"] == 9  # 4 new, 4 rewritten, 1 deleted
    assert inc.rebuilt["system_base"] == 8
    full = build(lake, str(tmp_path / "full.duckdb"), full=True, cubes_root=str(tmp_path / "full-cubes"))
    assert full.full
    assert_tables_equal(serving_tables(serving), serving_tables(str(tmp_path / "full.duckdb")))
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0
    # the deleted partition's cube rows are gone from the cube store as well; its date's file keeps
    # the other partitions' rows
    day2 = f"{lake}/cubes/latency_base/date={DAY0 + dt.timedelta(days=2)}/part.parquet"
    left = duckdb.sql(f"select model, hardware, count(*) from '{day2}' group by all").fetchall()
    assert len(left) == 3 and (MODELS[0], HARDWARE[1]) not in {(m, h) for m, h, _ in left}


@pytest.mark.slow  # four builds
def test_alert_cubes_read_the_alerts_checkpoint_only_while_it_holds_every_alert_file(lake, tmp_path):
    """The cubes over every alert read the alerts' checkpoint (one file, pipelines/alerts.py) instead
    of the alert files while it holds exactly their rows; a file changed behind its back is read from
    the file. Either way the served tables are those of a build that reads only the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import alerts

    def covering():
        lk = Lake(lake)
        listed = lakefiles.list_partitions(lk.fs, lk.table_dir("alerts"), TABLES["alerts"].partition_by)
        return alerts.checkpoint_covering(lk.fs, lk.root, [f for fs_ in listed.values() for f in fs_])

    def files_only(name):  # the same lake without the checkpoint, built full
        other = copy_lake(lake, str(tmp_path / f"{name}-lake"))
        os.unlink(f"{other}/{alerts.CHECKPOINT}")
        build(other, str(tmp_path / f"{name}.duckdb"), full=True)
        return serving_tables(str(tmp_path / f"{name}.duckdb"))

    write_repairs(Lake(lake))  # alerts (and the repairs that answered them), by pipelines' writers
    serving = str(tmp_path / "serving.duckdb")
    assert covering()
    build(lake, serving)
    assert_tables_equal(serving_tables(serving), files_only("first"))
    path = sorted(p for ps in Lake(lake).list_files("alerts").values() for p in ps)[0]
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index("message"), "message",
                                pa.array(["rewritten"] * t.num_rows, pa.string())), path)
    assert covering() is None
    build(lake, serving)
    assert served(serving, "select count(*) from alert_list where message = 'rewritten'") == [(t.num_rows,)]
    assert_tables_equal(serving_tables(serving), files_only("second"))


def test_nothing_changed_rebuilds_nothing_and_keeps_the_file(lake, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    inode = os.stat(serving).st_ino
    again = build(lake, serving)
    assert not again.full and again.rebuilt == {} and again.serving_mode == "unchanged"
    assert os.stat(serving).st_ino == inode


@pytest.mark.slow  # two builds, the second full
def test_a_changed_sql_definition_makes_the_build_full(lake, tmp_path, monkeypatch):
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    monkeypatch.setattr(build_mod, "_bounds_version", lambda: "another sketch")
    assert build(lake, serving).full


@pytest.mark.slow  # several builds
def test_a_serving_file_from_another_build_is_rebuilt_fresh(lake, tmp_path):
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    os.unlink(serving)
    write_day(Lake(lake), 3)
    r = build(lake, serving)
    assert not r.full and r.serving_mode == "fresh"
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0


def test_an_empty_lake_builds_empty_cubes(tmp_path):
    lake = str(tmp_path / "lake")
    os.makedirs(lake)
    serving = str(tmp_path / "serving.duckdb")
    assert build(lake, serving).full
    assert served(serving, "select count(*) from train_health") == [(0,)]
    assert served(serving, "select count(*) from latency_sketch") == [(0,)]
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0
    write_day(Lake(lake), 0)  # the first data then arrives: an incremental build picks it up
    assert not build(lake, serving).full
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0


@pytest.mark.slow  # builds racing each other
def test_concurrent_builds_take_turns(lake, tmp_path):
    import threading
    serving = str(tmp_path / "serving.duckdb")
    build(lake, serving)
    write_day(Lake(lake), 3)
    errors = []

    def one():
        try:
            build(lake, serving)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0


def _dag(edges: dict[str, tuple[str, ...]]):
    from pathlib import Path

    from pipelines.models import Model
    return [Model(n, Path(f"{n}.sql"), "", {}, (), srcs, None) for n, srcs in edges.items()]


def test_scheduler_runs_inputs_first_and_raw_readers_one_at_a_time():
    import threading
    import time

    models = _dag({"raw_a": ("train_steps",), "raw_b": ("latency_samples",), "raw_c": ("eval_results",),
                   "a_daily": ("raw_a",), "a_window": ("a_daily",), "b_daily": ("raw_b",)})
    lock, log, active, overlap = threading.Lock(), [], set(), []

    def run(m, release):
        with lock:
            if m.name.startswith("raw") and any(a.startswith("raw") for a in active):
                overlap.append(m.name)
            active.add(m.name)
            log.append(("start", m.name))
        time.sleep(0.02)
        with lock:
            active.discard(m.name)  # the query is over: the next raw reader may start
        release()
        time.sleep(0.02)  # writing its output
        with lock:
            log.append(("end", m.name))

    raw = {"raw_a", "raw_b", "raw_c"}
    build_mod._run_dag(models, run, 3, {m.name: (m.name == "raw_c", 0) for m in models}, raw)
    ends = [n for k, n in log if k == "end"]
    starts = [n for k, n in log if k == "start"]
    assert sorted(starts) == sorted(m.name for m in models) and overlap == []
    for m in models:
        for s in m.sources:
            if s in starts:
                assert ends.index(s) < starts.index(m.name), (s, m.name, log)
    assert [n for n in starts if n in raw][-1] == "raw_c"  # priority: the one nobody reads goes last


def test_scheduler_raises_the_first_failure_and_starts_nothing_after_it():
    models = _dag({"raw_a": ("train_steps",), "a_daily": ("raw_a",), "other": ()})
    started = []

    def run(m, release):
        started.append(m.name)
        release()
        if m.name == "raw_a":
            raise ValueError("bad partition")

    with pytest.raises(ValueError, match="bad partition"):
        build_mod._run_dag(models, run, 1, {m.name: (0,) for m in models}, {"raw_a"})
    assert "a_daily" not in started


def test_two_real_runs_of_one_model_on_one_day_stay_apart(tmp_path, capsys):
    """Two real trainings of gpt2-tiny (seeds 1 and 2) on this machine, today: both validate at steps
    0, 2 and 4. `mhw query` reads each run's own validation values at the run level, the checkpoint
    level averages the two, and the audit holds."""
    from model import train

    lake, serving = str(tmp_path / "lake"), str(tmp_path / "serving.duckdb")
    for run, seed in (("tiny-seed1", 1), ("tiny-seed2", 2)):
        train.train(train.build_config(str(REPO / "configs" / "gpt2-tiny.yaml"), {
            "trainer.max_steps": 4, "trainer.batch_size": 4, "trainer.eval_interval": 2, "trainer.eval_batches": 1,
            "trainer.ckpt_interval": 0, "trainer.log_interval": 0, "trainer.seed": seed,
            "trainer.out_dir": str(tmp_path / run), "data.n_examples": 200, "model.block_size": 32,
            "telemetry.lake": lake, "telemetry.run_id": run, "telemetry.system_interval_s": 0}))
    assert main(["build", "--lake", lake, "--serving", serving, "--quiet"]) == 0
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0
    capsys.readouterr()

    def query(sql: str) -> list[dict]:
        assert main(["query", "--lake", lake, "--serving", serving, "--format", "json", sql]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON lines

    raw_evals = query("select train_run_id as run_id, checkpoint_step, date, metric, value from eval_results "
                      "where suite = 'validation' order by all")
    by_key: dict[tuple, list] = {}
    for r in raw_evals:
        by_key.setdefault((r["checkpoint_step"], r["date"], r["metric"]), []).append(r)
    shared = {k: v for k, v in by_key.items() if len(v) == 2}
    assert {k[0] for k in shared} == {0, 2, 4}  # both runs, the same checkpoints, one day
    assert all(a["value"] != b["value"] for a, b in shared.values() if a["metric"] == "loss")

    runs = query("select run_id, checkpoint_step, cast(date as varchar) as date, metric, value_mean as value "
                 "from eval_health where agg_level = 'model,hardware,precision,checkpoint_step,date,run_id' "
                 "and suite = 'validation' order by all")
    assert runs == raw_evals
    merged = query("select checkpoint_step, cast(date as varchar) as date, metric, n_results, value_mean "
                   "from eval_health where agg_level = 'model,hardware,precision,checkpoint_step,date' "
                   "and suite = 'validation' order by all")
    for m in merged:
        pair = shared[(m["checkpoint_step"], m["date"], m["metric"])]
        assert m["n_results"] == 2 and m["value_mean"] == pytest.approx((pair[0]["value"] + pair[1]["value"]) / 2)
