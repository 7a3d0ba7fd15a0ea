import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.schemas import TABLES, TRAIN_STEPS
from warehouse.writer import BufferedWriter, Lake, PartitionError, check_slug, slugify

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, 23, 59, 30, tzinfo=UTC)


def steps(n, model="gpt2-tiny", hardware="cpu-x86_64-2c", run_id="r1", start=T0, step0=0):
    return pa.table({
        "run_id": [run_id] * n, "step": list(range(step0, step0 + n)),
        "ts": [start + dt.timedelta(seconds=i) for i in range(n)],
        "loss": [1.0 / (i + 1) for i in range(n)], "model": [model] * n, "hardware": [hardware] * n,
    })


def count(root, table="train_steps"):
    return duckdb.sql(f"select count(*) from read_parquet('{root}/{table}/**/*.parquet', hive_partitioning=true)").fetchall()[0][0]


def test_exact_paths_and_round_trip(tmp_path):
    lake = Lake(tmp_path)
    res = lake.write("train_steps", steps(60), "r1-b000000000")  # crosses midnight: two date partitions
    assert res.rows == 60
    assert sorted(res.files) == [
        f"{tmp_path}/train_steps/model=gpt2-tiny/hardware=cpu-x86_64-2c/date=2026-11-01/r1-b000000000.parquet",
        f"{tmp_path}/train_steps/model=gpt2-tiny/hardware=cpu-x86_64-2c/date=2026-11-02/r1-b000000000.parquet",
    ]
    first = pq.read_table(res.files[0])
    assert first.schema == TRAIN_STEPS.file_schema  # partition columns live in the path only
    assert first.column("step").to_pylist() == list(range(30))
    back = duckdb.sql(f"select step, loss, date from read_parquet('{tmp_path}/train_steps/**/*.parquet', "
                      "hive_partitioning=true) order by step").fetchall()
    assert [r[0] for r in back] == list(range(60))
    assert back[0][1] == 1.0 and back[29][2] == dt.date(2026, 11, 1) and back[30][2] == dt.date(2026, 11, 2)


def test_retry_with_same_key_replaces_instead_of_duplicating(tmp_path):
    lake = Lake(tmp_path)
    lake.write("train_steps", steps(10), "k1")
    lake.write("train_steps", steps(10), "k1")
    assert count(tmp_path) == 10
    lake.write("train_steps", steps(10, step0=10), "k2")
    assert count(tmp_path) == 20


def test_nan_and_inf_are_kept(tmp_path):
    t = steps(3).set_column(3, "loss", pa.array([float("nan"), float("inf"), -float("inf")]))
    Lake(tmp_path).write("train_steps", t, "k")
    got = duckdb.sql(f"select isnan(loss), loss from read_parquet('{tmp_path}/train_steps/**/*.parquet') order by step").fetchall()
    assert got[0][0] is True and got[1][1] == float("inf") and got[2][1] == -float("inf")


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "x=y", "", ".hidden", "..", "with space", "a" * 200])
def test_traversal_and_unsafe_partition_values_are_rejected(tmp_path, bad):
    with pytest.raises(PartitionError, match="model="):
        Lake(tmp_path).write("train_steps", steps(2, model=bad), "k")
    assert not any(p.suffix == ".parquet" for p in tmp_path.rglob("*"))
    assert not (tmp_path.parent / "etc").exists()


def test_unsafe_key_rejected(tmp_path):
    with pytest.raises(PartitionError, match="key="):
        Lake(tmp_path).write("train_steps", steps(2), "../evil")


def test_slugify_makes_hub_names_safe():
    assert slugify("distilbert/lora imdb") == "distilbert--lora-imdb"
    assert check_slug("model", slugify("../../etc")) == "etc"


def test_missing_partition_value_is_an_error(tmp_path):
    t = steps(2).set_column(4, "model", pa.array([None, "m"], pa.string()))
    with pytest.raises(PartitionError, match="no model"):
        Lake(tmp_path).write("train_steps", t, "k")


def test_buffered_writer_blocks_and_resume_rewrites_its_blocks(tmp_path):
    lake = Lake(tmp_path)
    with BufferedWriter(lake, "train_steps", "run1", flush_rows=100) as w:
        for i in range(250):
            w.append({"run_id": "run1", "step": i, "ts": T0, "loss": 1.0, "model": "m", "hardware": "h"})
    assert count(tmp_path) == 250
    assert len(w.files) == 3  # blocks 0-99, 100-199, 200-249
    # A resumed run re-logs from its checkpoint at step 200: the block is replaced, not duplicated.
    with BufferedWriter(lake, "train_steps", "run1", flush_rows=100) as w:
        for i in range(200, 300):
            w.append({"run_id": "run1", "step": i, "ts": T0, "loss": 2.0, "model": "m", "hardware": "h"})
    assert count(tmp_path) == 300
    assert duckdb.sql(f"select count(distinct step), sum(loss) from read_parquet('{tmp_path}/train_steps/**/*.parquet')"
                      ).fetchall() == [(300, 200 * 1.0 + 100 * 2.0)]


def test_buffered_writer_surfaces_background_errors(tmp_path):
    w = BufferedWriter(Lake(tmp_path), "train_steps", "r", flush_rows=10)
    w.append({"run_id": "r", "step": 0, "ts": T0, "model": "bad/name", "hardware": "h"})
    with pytest.raises(PartitionError):
        w.close()


KILLED_WRITER = textwrap.dedent("""
    import sys, datetime as dt, numpy as np, pyarrow as pa
    from warehouse.writer import Lake
    n = 4_000_000
    t = pa.table({"run_id": pa.array(["r"] * n), "step": np.arange(n), "ts": pa.array(np.full(n, 1_790_000_000_000_000, "datetime64[us]")),
                  "loss": np.random.default_rng(0).random(n), "grad_norm": np.random.default_rng(1).random(n),
                  "model": pa.array(["m"] * n), "hardware": pa.array(["h"] * n)})
    print("ready", flush=True)
    Lake(sys.argv[1]).write("train_steps", t, "chunk-0")
    print("done", flush=True)
""")


@pytest.mark.slow  # a writer process, killed mid-file, and its retry
def test_sigkill_mid_write_leaves_no_partial_file_and_retry_no_duplicate(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(KILLED_WRITER)
    root = tmp_path / "lake"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    tmp_dir = root / "_tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_dir.exists() and any(tmp_dir.iterdir())):
        time.sleep(0.001)  # wait until the writer is mid-file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert any(tmp_dir.iterdir()), "the writer was killed before it started writing; the test proved nothing"
    assert list((root / "train_steps").rglob("*.parquet")) == []  # readers see nothing, not half a file
    # The retry (same key) lands the whole chunk exactly once; taking the lake lock, it removed the
    # orphan temp file of the killed writer.
    assert subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True).returncode == 0
    assert count(root) == 4_000_000
    assert list(tmp_dir.iterdir()) == []


def test_rewrite_of_a_key_on_a_later_day_replaces_it_there_too(tmp_path):
    lake = Lake(tmp_path)
    lake.write("train_steps", steps(10), "r1-b0")  # day 1 (and a bit of day 2)
    later = T0 + dt.timedelta(days=3)
    lake.write("train_steps", steps(10, start=later), "r1-b0")  # the same block, re-logged days later
    assert count(tmp_path) == 10
    assert {p.parent.name for p in (tmp_path / "train_steps").rglob("*.parquet")} == {"date=2026-11-04"}
    lake.write("train_steps", steps(5, model="other"), "r1-b0")  # another model's partitions are not touched
    assert count(tmp_path) == 15


def test_publish_replaces_whole_or_not_at_all(tmp_path):
    """warehouse.writer.publish, the one atomic writer (lake files, cube files, the build manifest):
    a write that fails leaves the old file and no temp file; ``before`` sees the old file in place."""
    import pyarrow.fs as pafs

    from warehouse.writer import parquet_bytes, publish

    path = str(tmp_path / "d" / "f.parquet")
    fs = pafs.LocalFileSystem()
    publish(fs, path, parquet_bytes(pa.table({"x": [1.0, float("nan")]})), True)
    assert pq.read_table(path).column("x").to_pylist()[0] == 1.0
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).statistics is None  # NaN-safe: no float min/max

    def broken(f):
        f.write(b"PAR1 half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(fs, path, broken, True)
    assert pq.read_table(path).num_rows == 2 and sorted(os.listdir(tmp_path / "d")) == ["f.parquet"]

    seen = []
    publish(fs, path, lambda f: f.write(b"new"), True, staging=str(tmp_path / "_tmp"), durable=True,
            before=lambda p: seen.append(open(p, "rb").read(4)))
    assert seen == [b"PAR1"] and open(path, "rb").read() == b"new" and os.listdir(tmp_path / "_tmp") == []


# --- Lake.merge: what the telemetry sinks and the collector write with ---------------------------------

def lake_rows(root, table="train_steps", cols="run_id, step, loss"):
    return duckdb.sql(f"select {cols} from read_parquet('{root}/{table}/**/*.parquet', hive_partitioning=true) "
                      "order by all").fetchall()


def test_merge_replaces_rows_of_the_same_key_keeps_the_others_and_lands_a_retry_once(tmp_path):
    lake = Lake(tmp_path)
    lake.merge("train_steps", steps(60), "r1-steps-b0")  # crosses midnight: two date partitions
    redo = steps(10, step0=55, start=T0 + dt.timedelta(seconds=55)).set_column(
        3, "loss", pa.array([9.0] * 10))  # steps 55-64: 55-59 again (the next day's), 60-64 new
    for _ in range(2):  # a retried delivery merges onto itself
        lake.merge("train_steps", redo, "r1-steps-b0")
        got = lake_rows(tmp_path)
        assert [s for _, s, _ in got] == list(range(65))
        assert [loss for _, s, loss in got if s >= 55] == [9.0] * 10
        assert [loss for _, s, loss in got if s < 55] == [1.0 / (i + 1) for i in range(55)]
    assert len(list(tmp_path.rglob("r1-steps-b0.parquet"))) == 2  # one file per date partition, still


def test_merge_keeps_the_last_row_of_a_repeated_key_and_matches_null_key_columns(tmp_path):
    lake = Lake(tmp_path)
    lake.merge("train_steps", pa.concat_tables([steps(3), steps(1).set_column(3, "loss", pa.array([7.0]))]), "k")
    assert lake_rows(tmp_path) == [("r1", 0, 7.0), ("r1", 1, 0.5), ("r1", 2, 1.0 / 3)]

    def evals(value):  # precision, part of eval_results' key, is null: a null matches a null
        return pa.table({"run_id": ["e"], "checkpoint_step": [5], "suite": ["validation"], "metric": ["loss"],
                         "value": [value], "ts": [T0], "model": ["m"], "hardware": ["h"]})
    lake.merge("eval_results", evals(1.0), "e-val")
    lake.merge("eval_results", evals(2.0), "e-val")
    assert lake_rows(tmp_path, "eval_results", "metric, precision, value") == [("loss", None, 2.0)]


def test_merge_needs_a_natural_key(tmp_path):
    data = pa.table({"run_id": ["r"], "latency_ms": [1.0], "ts": [T0], "model": ["m"], "hardware": ["h"]})
    with pytest.raises(ValueError, match="latency_samples has no natural key"):
        Lake(tmp_path).merge("latency_samples", data, "k")
