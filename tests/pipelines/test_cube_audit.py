"""mhw audit: passes on a fresh build, and names the partition when a cube and the lake disagree."""
import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from cube_lake import DAY0, HARDWARE, MODELS, copy_lake, make_lake
from pipelines.build import build
from warehouse.cli import main
from warehouse.writer import Lake


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    lake = make_lake(str(root / "lake"))
    build(lake, str(root / "serving.duckdb"))
    return root


def corrupt(src: str, dst: str, sql: str) -> str:
    shutil.copyfile(src, dst)
    con = duckdb.connect(dst)
    con.execute(sql)
    con.close()
    return dst


def test_audit_passes_on_a_fresh_build(built, capsys):
    assert main(["audit", "--lake", f"{built}/lake", "--serving", f"{built}/serving.duckdb"]) == 0
    assert "ok" in capsys.readouterr().out


def test_audit_names_the_partition_of_a_planted_corruption(built, tmp_path, capsys):
    m, h, day = MODELS[1], HARDWARE[0], DAY0 + dt.timedelta(days=1)
    bad = corrupt(f"{built}/serving.duckdb", str(tmp_path / "bad.duckdb"),
                  f"update train_health_daily set n_steps = n_steps + 1 where grouping_id = 0 "
                  f"and model = '{m}' and hardware = '{h}' and date = '{day}' and run_id like '%-r1'")
    assert main(["audit", "--lake", f"{built}/lake", "--serving", bad]) == 1
    out = capsys.readouterr()
    partition = f"model={m}/hardware={h}/date={day}"
    assert f"train_health_totals: {partition}: n_steps" in out.out
    assert partition in out.err  # the summary line names it too
    # the run-level rows no longer add up to the fleet level: the level checks catch it as well
    assert "level=model,hardware,precision,date,run_id: n_steps" in out.out


def test_audit_catches_a_corrupt_sketch_and_a_float_sum(built, tmp_path, capsys):
    bad = corrupt(f"{built}/serving.duckdb", str(tmp_path / "bad.duckdb"),
                  "update latency_sketch_daily set n = n + 1 where grouping_id = 0 and bucket = "
                  "(select min(bucket) from latency_sketch_daily where grouping_id = 0);"
                  f"update system_health_daily set util_sum = util_sum * (1 + 1e-6) where grouping_id = 0 "
                  f"and model = '{MODELS[0]}' and hardware = '{HARDWARE[0]}' and date = '{DAY0}' and device = 'cuda:1'")
    assert main(["audit", "--lake", f"{built}/lake", "--serving", bad]) == 1
    out = capsys.readouterr().out
    assert ": latency_sketch_n " in out
    assert f"system_totals: model={MODELS[0]}/hardware={HARDWARE[0]}/date={DAY0}: util_sum" in out


def test_audit_catches_results_counted_under_the_wrong_run(built, tmp_path, capsys):
    """Runs r0 and r1 share checkpoint steps: one run's results put under the other add up per
    partition and per level, and only the per-run count tells."""
    m, h, day = MODELS[0], HARDWARE[1], DAY0 + dt.timedelta(days=2)
    bad = corrupt(f"{built}/serving.duckdb", str(tmp_path / "bad.duckdb"),
                  f"update eval_health_daily set run_id = '{m}-{h}-r0' where grouping_id = 0 and model = '{m}' "
                  f"and hardware = '{h}' and date = '{day}' and run_id = '{m}-{h}-r1'")
    assert main(["audit", "--lake", f"{built}/lake", "--serving", bad]) == 1
    out = capsys.readouterr().out
    partition = f"model={m}/hardware={h}/date={day}"
    assert f"eval_totals: {partition}: n_results run={m}-{h}-r0 lake=3.0 cube=6.0" in out
    assert f"eval_totals: {partition}: n_results run={m}-{h}-r1 lake=3.0 cube=None" in out
    assert len(out.strip().splitlines()) == 2


def test_audit_catches_lake_rows_the_cube_has_not_seen(built, tmp_path, capsys):
    lake = copy_lake(f"{built}/lake", str(tmp_path / "lake"))
    Lake(lake).write("eval_results", pa.table({
        "run_id": ["x"], "suite": ["quality"], "metric": ["loss"], "value": [1.0], "n": [10],
        "ts": [dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)], "model": ["m-new"], "hardware": [HARDWARE[0]]}),
        "late")
    assert main(["audit", "--lake", lake, "--serving", f"{built}/serving.duckdb"]) == 1
    assert f"eval_totals: model=m-new/hardware={HARDWARE[0]}/date=2026-02-01: n_results lake=1.0 cube=None" \
        in capsys.readouterr().out


# --- lakes where a measure is absent on both sides --------------------------------------------------

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
HF_STATE = REAL / "hf_trainer_state" / "subro608--Deep_learning_Bert_project2--checkpoint-2400.json"
MLPERF_LOG = REAL / "mlperf" / "mlcommons--training_results_v3.1--Intel-HabanaLabs-HLS-Gaudi2-N32-PT-gpt3-result_0.txt"
TB_EVENTS = REAL / "tensorboard" / \
    "wtwong316--alpaca-bitcoin-tweets-sentiment--runs-Apr26_11-44-26-events.out.tfevents.1682480667.dsrc-server"
needs_real = pytest.mark.skipif(not all(p.exists() for p in (HF_STATE, MLPERF_LOG, TB_EVENTS)),
                                reason=f"real public logs not present under {REAL}")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A simulated fleet (with step times) plus real HF, MLPerf and TensorBoard imports (none), built
    and audited through the CLI, as a user would."""
    root = tmp_path_factory.mktemp("imported")
    lake, serving = str(root / "lake"), str(root / "serving.duckdb")
    assert main(["simulate", "--rows", "2000", "--days", "2", "--serving-requests", "40", "--out", lake]) == 0
    assert main(["ingest", "--lake", lake, "--model", "bert-project2", "--hardware", "t4-x1", str(HF_STATE)]) == 0
    assert main(["ingest", "--lake", lake, str(MLPERF_LOG)]) == 0
    assert main(["ingest", "--lake", lake, "--model", "alpaca-btc", "--hardware", "v100-x1", str(TB_EVENTS)]) == 0
    assert main(["build", "--lake", lake, "--serving", serving, "--quiet"]) == 0
    return lake, serving


@needs_real
@pytest.mark.slow  # real logs ingested and built (`imported`)
def test_audit_passes_on_real_imports_without_step_times(imported, capsys):
    lake, serving = imported
    con = duckdb.connect()
    con.execute(f"attach '{serving}' as s (read_only)")
    # the case: partitions with steps but not one step time, beside simulated ones that have them
    untimed = con.execute(f"select count(*) from (select model, hardware, date from read_parquet("
                          f"'{lake}/train_steps/**/*.parquet', hive_partitioning = true) group by all "
                          f"having count(step_time_ms) = 0)").fetchone()[0]
    timed = con.execute("select count(*) from s.train_step_time_sketch_daily").fetchone()[0]
    assert untimed >= 2 and timed > 0
    capsys.readouterr()
    assert main(["audit", "--lake", lake, "--serving", serving]) == 0, capsys.readouterr()
    assert "ok" in capsys.readouterr().out


@needs_real
@pytest.mark.slow  # real logs ingested and built (`imported`)
def test_audit_still_catches_sketch_rows_missing_or_invented(imported, tmp_path, capsys):
    lake, serving = imported
    con = duckdb.connect(serving, read_only=True)
    m, h, d = con.execute("select model, hardware, date from train_step_time_sketch_daily where grouping_id = 0 "
                          "order by all limit 1").fetchone()
    con.close()
    # a timed partition's sketch rows gone: lake counts its steps, the cube none
    bad = corrupt(serving, str(tmp_path / "gone.duckdb"),
                  f"delete from train_step_time_sketch_daily where grouping_id = 0 and model = '{m}' "
                  f"and hardware = '{h}' and date = '{d}'")
    assert main(["audit", "--lake", lake, "--serving", bad]) == 1
    assert f"train_health_totals: model={m}/hardware={h}/date={d}: step_time_sketch_n lake=" \
        in capsys.readouterr().out
    # sketched steps for an HF import that timed none
    bad = corrupt(serving, str(tmp_path / "invented.duckdb"),
                  "insert into train_step_time_sketch_daily select model, hardware, precision, date, run_id, "
                  "grouping_id, agg_level, 0, 3 from train_health_daily where grouping_id = 0 "
                  "and model = 'bert-project2'")
    assert main(["audit", "--lake", lake, "--serving", bad]) == 1
    out = capsys.readouterr().out
    assert "train_health_totals: model=bert-project2/hardware=t4-x1/date=" in out
    assert "step_time_sketch_n lake=0.0 cube=3.0" in out


def test_audit_passes_on_a_lake_of_absent_and_nonfinite_values(tmp_path, capsys):
    """Every table with the values that are absent on both sides: evals all NaN, ±inf or null with
    null checkpoint steps and example counts, steps with only NaN/inf losses and no step time,
    requests with only NaN/inf latencies and unknown outcomes, samples with no utilization or power;
    and no table has a partition of another's (a lake of system samples only, etc.)."""
    lake = Lake(str(tmp_path / "lake"))
    t = dt.datetime(2026, 3, 1, 5, tzinfo=dt.timezone.utc)
    nan, inf = float("nan"), float("inf")
    lake.write("eval_results", pa.table({
        "run_id": ["e1"] * 5, "train_run_id": [None, "tr", None, "tr", "tr"],
        "checkpoint_step": pa.array([None, None, 5, 5, None], pa.int64()), "ts": [t] * 5, "suite": ["q"] * 5,
        "metric": ["loss", "acc", "loss", "acc", "f1"], "value": pa.array([nan, nan, None, inf, nan], pa.float64()),
        "n": pa.array([None, 3, None, None, None], pa.int64()), "model": ["m1"] * 5, "hardware": ["cpu"] * 5}), "ev")
    lake.write("train_steps", pa.table({
        "run_id": ["r"] * 3, "step": [1, 2, 3], "ts": [t] * 3, "loss": [nan, inf, nan],
        "model": ["m2"] * 3, "hardware": ["cpu"] * 3}), "ts")
    lake.write("latency_samples", pa.table({
        "run_id": ["l"] * 3, "ts": [t] * 3, "latency_ms": [nan, nan, inf], "ok": pa.array([None, None, True], pa.bool_()),
        "model": ["m3"] * 3, "hardware": ["cpu"] * 3}), "lat")
    lake.write("system_samples", pa.table({
        "run_id": ["s"] * 2, "ts": [t] * 2, "device": ["cpu", "cpu"], "util": pa.array([None, None], pa.float64()),
        "model": ["m4"] * 2, "hardware": ["cpu"] * 2}), "sys")
    serving = str(tmp_path / "serving.duckdb")
    build(lake.uri, serving)
    assert main(["audit", "--lake", lake.uri, "--serving", serving]) == 0, capsys.readouterr()
    # and the audit still reads these partitions: one result less in the cube is caught
    bad = corrupt(serving, str(tmp_path / "bad.duckdb"),
                  "update eval_health_daily set n_results = n_results - 1 where grouping_id = 0 and metric = 'f1'")
    assert main(["audit", "--lake", lake.uri, "--serving", bad]) == 1
    assert "eval_totals: model=m1/hardware=cpu/date=2026-03-01: n_results lake=5.0 cube=4.0" in capsys.readouterr().out
