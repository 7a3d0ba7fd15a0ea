"""``mhw ingest`` end to end: validation, quarantine, idempotent re-ingest, the CLI, the generated doc."""
import datetime as dt
import json
import math
import os
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from warehouse import cli, docs
from warehouse.ingest import run_key, validate
from warehouse.query import connect
from warehouse.schemas import DERIVED_TABLES, TABLES

REPO = Path(__file__).resolve().parents[2]
HF_STATE = REPO.parent / "shared" / "data" / "hf_trainer_state" / "lora-imdb-distilbert.trainer_state.json"
MLPERF_LOG = REPO / "tests" / "fixtures" / "mlperf" / "bert-8xh100.mlperf.log"
UTC = dt.timezone.utc
needs_hf = pytest.mark.skipif(not HF_STATE.exists(), reason=f"real HF sample not present at {HF_STATE}")

STEP = {"run_id": "r1", "model": "gpt2-tiny", "hardware": "cpu", "step": 1, "ts": "2024-05-01T12:00:00Z"}


def ingest(*argv) -> int:
    return cli.main(["ingest", *map(str, argv)])


def rows(lake, sql):
    con = connect(lake_root=lake, serving_path="")
    return con.execute(sql).fetchall()


def count(lake, table):
    return rows(lake, f"select count(*) from {table}")[0][0]


def jsonl(path: Path, *lines) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


# --- the validator ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field, kind", [
    ({"loss": "abc"}, "loss", "wrong type"),
    ({"step": 1.5}, "step", "wrong type"),
    ({"step": True}, "step", "wrong type"),
    ({"run_id": 7}, "run_id", "wrong type"),
    ({"ts": "yesterday"}, "ts", "bad timestamp"),
    ({"ts": 1714564800000}, "ts", "bad timestamp"),  # milliseconds, not seconds
    ({"ts": -9e10}, "ts", "bad timestamp"),  # before year 1
    ({"ts": "0001-01-01T00:00:00+01:00"}, "ts", "bad timestamp"),  # before year 1 in UTC
    ({"loss": 10 ** 400}, "loss", "out of range"),
    ({"ts": None}, "ts", "missing required field"),
    ({"hardware": ""}, "hardware", "missing required field"),
    ({"los": 1.0}, "los", "unknown field"),
    ({"date": "2024-05-01"}, "date", "derived field"),
    ({"model": "../../etc"}, "model", "not a slug"),
    ({"model": "a/b"}, "model", "not a slug"),
    ({"hardware": "x=y"}, "hardware", "not a slug"),
])
def test_validate_rejects(change, field, kind):
    row, problems = validate(TABLES["train_steps"], {**STEP, **change})
    assert row is None
    assert (problems[0].field, problems[0].kind) == (field, kind)


def test_validate_types_and_keeps_nonfinite():
    row, problems = validate(TABLES["train_steps"], {
        **STEP, "ts": "2024-05-01T14:00:00+02:00", "step": 3.0, "loss": float("nan"), "lr": "inf",
        "grad_norm": "-Infinity", "mfu": None})
    assert problems == []
    assert row["ts"] == dt.datetime(2024, 5, 1, 12, tzinfo=UTC) and row["step"] == 3
    assert math.isnan(row["loss"]) and row["lr"] == math.inf and row["grad_norm"] == -math.inf
    assert "mfu" not in row
    assert validate(TABLES["train_steps"], {**STEP, "ts": "2024-05-01T12:00:00"})[0]["ts"] == \
        dt.datetime(2024, 5, 1, 12, tzinfo=UTC)  # naive = UTC
    assert validate(TABLES["train_steps"], {**STEP, "ts": 1714564800})[0]["ts"] == dt.datetime(2024, 5, 1, 12, tzinfo=UTC)
    lat = {**STEP, "latency_ms": 3.5, "batch_size": 2 ** 31}
    lat.pop("step")
    assert validate(TABLES["latency_samples"], lat)[1][0].kind == "out of range"
    _, problems = validate(TABLES["train_steps"], {"los": 1})
    assert "did you mean 'loss'" in problems[0].detail
    assert {p.field for p in problems} >= {"los", "run_id", "model", "hardware", "step", "ts"}


# --- JSONL through the CLI: quarantine ---------------------------------------------------------------

def bad_file(tmp_path):
    return jsonl(
        tmp_path / "steps.jsonl",
        {"table": "train_steps", **STEP, "loss": "NaN", "lr": "inf"},        # 1 good, NaN/inf strings
        {"table": "train_steps", **STEP, "step": 2, "loss": "abc"},         # 2 wrong type
        {**STEP, "step": 3, "ts": 1714564801, "loss": float("-inf")},       # 3 good (table from --table)
        {**STEP, "step": 4, "ts": "not a time"},                              # 4 unparseable timestamp
        {**STEP, "step": 5, "model": "../../etc"},                            # 5 traversal
        {**STEP, "step": 6, "hardware": "a/b"},                               # 6 slash
        {"step": 7, "ts": "2024-05-01T12:00:07Z"},                            # 7 missing required
        {**STEP, "step": 8, "extra": 1},                                      # 8 unknown field
        "[1, 2, 3]",                                                          # 9 not an object
        "{\"step\": 10,",                                                     # 10 invalid JSON
        {"table": "nope", **STEP},                                            # 11 unknown table
        "",                                                                   # 12 blank: skipped
        {"table": "train_steps", **STEP, "step": 13, "loss": float("inf")},  # 13 good: bare Infinity token
    )


def test_jsonl_rejects_go_to_quarantine_with_file_line_field(tmp_path, lake_root, capsys):
    path = bad_file(tmp_path)
    assert ingest(path, "--table", "train_steps", "--lake", lake_root) == 0
    out = capsys.readouterr().out
    assert f"{path}:2: field 'loss': wrong type: expected a number, got string 'abc'" in out
    assert "rejected 9 rows (kept in the quarantine table)" in out
    assert "  by reason: not a slug 2, wrong type 1, bad timestamp 1, missing required field 1, " \
           "unknown field 1, not a JSON object 1, invalid JSON 1, unknown table 1" in out

    got = rows(lake_root, "select step, loss, lr from train_steps order by step")
    assert [r[0] for r in got] == [1, 3, 13]
    assert math.isnan(got[0][1]) and got[0][2] == math.inf and got[1][1] == -math.inf and got[2][1] == math.inf

    q = rows(lake_root, "select line, field, reason, target_table, source, raw from quarantine order by line")
    assert [(r[0], r[1], r[2].split(":")[0]) for r in q] == [
        (2, "loss", "wrong type"), (4, "ts", "bad timestamp"), (5, "model", "not a slug"),
        (6, "hardware", "not a slug"), (7, "run_id", "missing required field"), (8, "extra", "unknown field"),
        (9, None, "not a JSON object"), (10, None, "invalid JSON"), (11, "table", "unknown table")]
    assert {r[4] for r in q} == {str(path)}
    assert {r[3] for r in q if r[0] != 11} == {"train_steps"} and q[-1][3] is None
    assert q[5][5] == path.read_text().splitlines()[7]  # raw line kept for replay
    assert "also field 'model'" in q[4][2]  # line 7 misses several required fields: all are named


def test_reingest_replaces_its_own_rows(tmp_path, lake_root, capsys):
    path = bad_file(tmp_path)
    for _ in range(2):
        assert ingest(path, "--table", "train_steps", "--lake", lake_root) == 0
    assert (count(lake_root, "train_steps"), count(lake_root, "quarantine")) == (3, 9)

    # The file changes: rows move to another day and the bad lines are fixed. Nothing old survives.
    jsonl(path, {"table": "train_steps", **STEP, "ts": "2024-06-01T00:00:00Z"})
    assert ingest(path, "--lake", lake_root) == 0
    assert rows(lake_root, "select step, date from train_steps") == [(1, dt.date(2024, 6, 1))]
    assert count(lake_root, "quarantine") == 0
    assert not list(Path(lake_root, "train_steps").rglob("date=2024-05-01/*.parquet"))


def test_flags_fill_missing_columns_and_files_are_keyed_by_run(tmp_path, lake_root):
    path = jsonl(tmp_path / "s.jsonl", {"step": 1, "ts": 1714564800, "loss": 2.0})
    assert ingest(path, "--table", "train_steps", "--model", "Org/GPT 2", "--hardware", "cpu",
                  "--run-id", "r9", "--precision", "fp32", "--lake", lake_root) == 0
    assert rows(lake_root, "select run_id, model, hardware, precision from train_steps") == [
        ("r9", "Org--GPT-2", "cpu", "fp32")]
    assert Path(lake_root, "train_steps", "model=Org--GPT-2", "hardware=cpu", "date=2024-05-01",
                f"{run_key('r9')}.parquet").exists()


def test_nothing_ingested_and_unreadable_files_fail_clearly(tmp_path, lake_root, capsys):
    all_bad = jsonl(tmp_path / "bad.jsonl", "nope", {"table": "runs"})
    assert ingest(all_bad, "--lake", lake_root) == 1
    assert "nothing ingested" in capsys.readouterr().err
    assert count(lake_root, "quarantine") == 2

    good = jsonl(tmp_path / "good.jsonl", {"table": "train_steps", **STEP})
    assert ingest(good, tmp_path / "missing.jsonl", "--lake", lake_root) == 2  # the good file still lands
    assert f"{tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err
    assert count(lake_root, "train_steps") == 1

    (tmp_path / "notes.txt").write_text("just text\n")
    assert ingest(tmp_path / "notes.txt", "--lake", lake_root) == 2
    assert "notes.txt: cannot tell its format" in capsys.readouterr().err


# --- the other formats through the CLI ---------------------------------------------------------------

@needs_hf
def test_hf_trainer_end_to_end(lake_root, capsys):
    args = [HF_STATE, "--model", "distilbert/lora-imdb", "--hardware", "t4-x1", "--precision", "fp16",
            "--started-at", "2024-05-01T12:00:00Z", "--lake", lake_root]
    for _ in range(2):  # idempotent
        assert ingest(*args) == 0
    out = capsys.readouterr().out
    assert "[hf-trainer]: 31 rows (runs 1, train_steps 18, eval_results 12)" in out
    assert "stored as 'distilbert--lora-imdb'" in out
    assert (count(lake_root, "runs"), count(lake_root, "train_steps"), count(lake_root, "eval_results")) == (1, 18, 12)
    assert rows(lake_root, "select distinct model, hardware, precision from train_steps") == [
        ("distilbert--lora-imdb", "t4-x1", "fp16")]
    # epoch(): fetching a TIMESTAMPTZ into Python would need pytz, which the core env does not ship
    assert rows(lake_root, "select status, steps, source, epoch(started_at) from runs") == [
        ("completed", 375, "hf-trainer", dt.datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp())]
    assert rows(lake_root, "select value from eval_results where metric = 'loss' and checkpoint_step = 375") == [
        (0.3891691565513611,)]
    assert count(lake_root, "quarantine") == 0
    # without a model name the file is refused, with the flag to pass
    assert ingest(HF_STATE, "--hardware", "t4-x1", "--lake", lake_root) == 2
    assert "pass --model" in capsys.readouterr().err


def test_tensorboard_logdir_end_to_end(tmp_path, lake_root):
    t0 = 1714564800.0
    run = tmp_path / "logs" / "run-a"
    run.mkdir(parents=True)
    with open(run / "events.out.tfevents.1714564800.host.1.0", "wb") as f:
        w = RecordWriter(f)
        w.write(event_pb2.Event(wall_time=t0, file_version="brain.Event:2").SerializeToString())
        for step, tag, value in [(1, "train/loss", 3.0), (2, "train/loss", float("nan")), (2, "eval/accuracy", 0.25)]:
            s = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            w.write(event_pb2.Event(wall_time=t0 + step, step=step, summary=s).SerializeToString())
    for _ in range(2):
        assert ingest(tmp_path / "logs", "--model", "tiny", "--hardware", "cpu", "--lake", lake_root) == 0
    got = rows(lake_root, "select step, loss, isnan(loss) from train_steps order by step")
    assert got[0] == (1, 3.0, False) and got[1][0] == 2 and got[1][2] is True
    assert rows(lake_root, "select metric, value, suite from eval_results") == [("accuracy", 0.25, "tb-eval")]
    assert rows(lake_root, "select source, steps from runs") == [("tensorboard", 2)]


def test_mlperf_end_to_end(lake_root, capsys):
    for _ in range(2):
        assert ingest(MLPERF_LOG, "--lake", lake_root) == 0  # format detected from content
    out = capsys.readouterr().out
    assert "[mlperf]: 8 rows (runs 1, train_steps 4, step_metrics 1, eval_results 2), 2 rejected" in out
    assert rows(lake_root, "select model, hardware, status from runs") == [("bert", "8xH100-SXM5-80GB", "completed")]
    assert rows(lake_root, "select count(*), count(*) filter (where isnan(loss)) from train_steps") == [(4, 1)]
    q = rows(lake_root, "select line, field, split_part(reason, ':', 1) from quarantine order by line")
    assert q == [(37, "step", "wrong type"), (39, None, "invalid MLLOG JSON")]


# --- docs --------------------------------------------------------------------------------------------

def test_committed_jsonl_doc_is_generated():
    assert docs.DOC_PATH.read_text() == docs.render(), "run: python -m warehouse.docs"


@pytest.mark.parametrize("table", [t for t in TABLES if t != "quarantine" and t not in DERIVED_TABLES])
def test_doc_examples_are_valid_lines(table):
    example = dict(docs.EXAMPLES[table])
    assert example.pop("table") == table
    row, problems = validate(TABLES[table], example)
    assert problems == [] and row


def test_jsonl_ingest_leaves_pandas_out(tmp_path):
    """pyarrow imports pandas on its first conversion (0.3 s of CPU a call); `mhw ingest` of JSON lines,
    in a process of its own, runs without it, through the columns and DuckDB as for a big file."""
    import subprocess
    import sys

    path = jsonl(tmp_path / "big.jsonl", *({**STEP, "table": "train_steps", "step": i, "loss": 1.0 / (i + 1)}
                                          for i in range(5000)), '{"table": "train_steps", "step": "x"}')
    code = ("import sys; from warehouse import cli; rc = cli.main(sys.argv[1:]); "
            "print('modules:', *sorted(m for m in sys.modules if m in ('pandas', 'duckdb')), file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "ingest", str(path), "--lake", str(tmp_path / "lake")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "5000 rows" in p.stdout and "1 rejected" in p.stdout
    assert p.stderr.splitlines()[-1].split()[1:] == ["duckdb"]  # the columns ran; pandas was never imported
    assert count(str(tmp_path / "lake"), "train_steps") == 5000
