"""mhw audit: passes on a fresh build, and names the partition when a cube and the lake disagree."""
import datetime as dt
import shutil

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


def test_audit_catches_lake_rows_the_cube_has_not_seen(built, tmp_path, capsys):
    lake = copy_lake(f"{built}/lake", str(tmp_path / "lake"))
    Lake(lake).write("eval_results", pa.table({
        "run_id": ["x"], "suite": ["quality"], "metric": ["loss"], "value": [1.0], "n": [10],
        "ts": [dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)], "model": ["m-new"], "hardware": [HARDWARE[0]]}),
        "late")
    assert main(["audit", "--lake", lake, "--serving", f"{built}/serving.duckdb"]) == 1
    assert f"eval_totals: model=m-new/hardware={HARDWARE[0]}/date=2026-02-01: n_results lake=1.0 cube=None" \
        in capsys.readouterr().out
