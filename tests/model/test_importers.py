"""The importers alone: each format parsed from its fixture into candidate rows (no lake)."""
import datetime as dt
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from model.importers import Parsed, RunMeta, SourceError, default_run_id, detect, hf_trainer, parse, sources

REPO = Path(__file__).resolve().parents[2]
HF_STATE = REPO.parent / "shared" / "data" / "hf_trainer_state" / "lora-imdb-distilbert.trainer_state.json"
MLPERF_LOG = REPO / "tests" / "fixtures" / "mlperf" / "bert-8xh100.mlperf.log"
UTC = dt.timezone.utc
T0 = 1714564800.0  # 2024-05-01T12:00:00Z

needs_hf = pytest.mark.skipif(not HF_STATE.exists(), reason=f"real HF sample not present at {HF_STATE}")


def by_table(parsed: Parsed, table: str) -> list[dict]:
    return [r.values for r in parsed.records if r.table == table and r.error is None]


# --- Hugging Face Trainer --------------------------------------------------------------------------

@needs_hf
def test_hf_trainer_real_file_rows():
    started = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    p = parse(str(HF_STATE), "hf-trainer", RunMeta(model="distilbert/lora-imdb", hardware="t4-x1",
                                                    precision="fp16", started_at=started))
    train, evals, runs = by_table(p, "train_steps"), by_table(p, "eval_results"), by_table(p, "runs")
    assert len(train) == 18 and len(evals) == 3 * 4 and len(runs) == 1
    assert len(p.records) == 18 + 12 + 1  # nothing dropped, nothing quarantined at parse time

    first = train[0]
    assert (first["step"], first["epoch"], first["loss"]) == (20, 0.16, 0.6899)
    assert first["lr"] == 0.00018986666666666668 and first["grad_norm"] == 0.7468545436859131
    assert first["model"] == "distilbert--lora-imdb"  # free-form name made a slug
    # the run id is the content's (first log entry, trainer arguments, model, hardware), not the path's
    assert first["run_id"] == hf_trainer.run_id_of(json.loads(HF_STATE.read_text()), "distilbert--lora-imdb", "t4-x1")
    assert first["run_id"] != default_run_id("hf", str(HF_STATE)) and first["precision"] == "fp16"

    assert {e["metric"] for e in evals} == {"loss", "runtime", "samples_per_second", "steps_per_second"}
    assert {e["suite"] for e in evals} == {"hf-eval"}
    assert sorted({e["checkpoint_step"] for e in evals}) == [125, 250, 375]
    loss125 = next(e for e in evals if e["metric"] == "loss" and e["checkpoint_step"] == 125)
    assert loss125["value"] == 0.3951033353805542 and loss125["train_run_id"] == first["run_id"]

    # No summary row in this file: rows are spread by step from --started-at to the file's mtime.
    mtime = dt.datetime.fromtimestamp(os.path.getmtime(HF_STATE), tz=UTC)
    span = (mtime - started).total_seconds()
    for row in train + evals:
        step = row.get("step", row.get("checkpoint_step"))
        assert row["ts"] == started + dt.timedelta(seconds=step / 375 * span)
    run = runs[0]
    assert run["status"] == "completed"  # global_step == max_steps
    assert run["steps"] == 375 and run["final_loss"] == train[-1]["loss"]
    assert (run["started_at"], run["ended_at"], run["source"], run["kind"]) == (started, mtime, "hf-trainer", "train")
    assert json.loads(run["config_json"])["train_batch_size"] == 16
    assert any("no train_runtime" in n for n in p.notes)


@needs_hf
def test_hf_trainer_default_clock_is_mtime_minus_runtime(tmp_path):
    doc = json.loads(HF_STATE.read_text())
    doc["log_history"].append({"epoch": 3.0, "step": 375, "total_flos": 2.0e14, "train_loss": 0.45,
                               "train_runtime": 120.0, "train_samples_per_second": 50.0})
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(doc))
    os.utime(path, (T0, T0))
    p = parse(str(path), "hf-trainer", RunMeta(model="m", hardware="h"))
    end = dt.datetime.fromtimestamp(T0, tz=UTC)
    start = end - dt.timedelta(seconds=120)
    run = by_table(p, "runs")[0]
    assert (run["started_at"], run["ended_at"], run["status"]) == (start, end, "completed")
    assert run["final_loss"] == by_table(p, "train_steps")[-1]["loss"]  # last logged loss, not the mean
    assert json.loads(run["config_json"])["summary"]["train_loss"] == 0.45
    ts = {r["step"]: r["ts"] for r in by_table(p, "train_steps")}
    assert ts[20] == start + dt.timedelta(seconds=20 / 375 * 120)
    assert not any("no train_runtime" in n for n in p.notes)


@needs_hf
def test_hf_trainer_needs_a_model_name_and_keeps_bad_values_for_quarantine(tmp_path):
    with pytest.raises(SourceError, match="--model"):
        parse(str(HF_STATE), "hf-trainer", RunMeta(hardware="h"))
    doc = json.loads(HF_STATE.read_text())
    doc["log_history"][0]["loss"] = "abc"
    doc["log_history"].append(7)
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(doc))
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "distilbert-base-uncased",
                                                      "model_type": "distilbert"}))
    p = parse(str(path), "hf-trainer", RunMeta(hardware="h"))  # model read from the config beside it
    assert by_table(p, "train_steps")[0]["loss"] == "abc"  # the validator, not the importer, rejects
    assert by_table(p, "runs")[0]["model"] == "distilbert-base-uncased"
    assert by_table(p, "runs")[0]["model_family"] == "distilbert"
    bad = [r for r in p.records if r.error]
    assert [(r.line, r.error[1]) for r in bad] == [(22, "log_history entry is not an object")]


def test_hf_trainer_rejects_other_json(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"global_step": 3}')
    with pytest.raises(SourceError, match=r"state.json: not a Hugging Face trainer_state.json: no 'log_history' list "
                                          r"\(top-level keys: global_step\)"):
        parse(str(path), "hf-trainer", RunMeta(model="m", hardware="h"))


# --- TensorBoard -----------------------------------------------------------------------------------

def write_events(path: Path, scalars: list[tuple[float, int, str, float]], start: float = T0) -> Path:
    """An event file written with tensorboard's own record writer, wall times under our control."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        w = RecordWriter(f)
        w.write(event_pb2.Event(wall_time=start, step=0, file_version="brain.Event:2").SerializeToString())
        for wall, step, tag, value in scalars:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            w.write(event_pb2.Event(wall_time=wall, step=step, summary=summary).SerializeToString())
    return path


TB_SCALARS = [
    (T0 + 10, 10, "train/loss", 2.5), (T0 + 10, 10, "train/learning_rate", 1e-3),
    (T0 + 11, 10, "train/grad_norm", 0.75), (T0 + 11, 10, "throughput", 128.0),
    (T0 + 20, 20, "train/loss", float("nan")), (T0 + 20, 20, "lr", 5e-4),
    (T0 + 30, 30, "loss", float("inf")), (T0 + 30, 30, "train/step_time", 0.25),
    (T0 + 31, 30, "eval/accuracy", 0.5), (T0 + 31, 30, "eval/loss", 1.25),
    (T0 + 32, 30, "custom/weird", 1.0),
]


def test_tensorboard_scalars_map_by_alias(tmp_path):
    f = write_events(tmp_path / "run1" / "events.out.tfevents.1714564800.host.1.0", TB_SCALARS)
    p = parse(str(f), "tensorboard", RunMeta(model="gpt2/tiny", hardware="cpu", run_id="tb-run"))
    train = {r["step"]: r for r in by_table(p, "train_steps")}
    assert sorted(train) == [10, 20, 30]
    s10 = train[10]
    assert (s10["loss"], s10["grad_norm"], s10["samples_per_s"]) == (2.5, 0.75, 128.0)
    assert math.isclose(s10["lr"], 1e-3, rel_tol=1e-6)  # TensorBoard stores float32
    assert s10["ts"] == dt.datetime.fromtimestamp(T0 + 11, tz=UTC)  # latest event of the step
    assert math.isnan(train[20]["loss"]) and math.isinf(train[30]["loss"])  # kept as data
    assert train[30]["step_time_ms"] == 250.0  # seconds tag scaled to ms
    assert train[10]["model"] == "gpt2--tiny" and train[10]["run_id"] == "tb-run"

    evals = {r["metric"]: r for r in by_table(p, "eval_results")}
    assert set(evals) == {"accuracy", "loss"}
    assert (evals["accuracy"]["value"], evals["accuracy"]["checkpoint_step"], evals["accuracy"]["suite"]) == (0.5, 30, "tb-eval")
    assert evals["loss"]["ts"] == dt.datetime.fromtimestamp(T0 + 31, tz=UTC)

    run = by_table(p, "runs")[0]
    assert run["started_at"] == dt.datetime.fromtimestamp(T0, tz=UTC)
    assert run["ended_at"] == dt.datetime.fromtimestamp(T0 + 32, tz=UTC)
    assert run["steps"] == 30 and math.isinf(run["final_loss"])
    assert any("custom/weird (1)" in n for n in p.notes)  # unmapped tags are reported, not hidden


def test_tensorboard_logdir_gives_one_source_per_run_dir(tmp_path):
    write_events(tmp_path / "logs" / "a" / "events.out.tfevents.1.host.1.0", TB_SCALARS[:2])
    write_events(tmp_path / "logs" / "b" / "events.out.tfevents.2.host.1.0", TB_SCALARS[:2])
    write_events(tmp_path / "logs" / "b" / "events.out.tfevents.3.host.1.0", [(T0 + 50, 50, "loss", 1.0)], start=T0 + 40)
    found = sources(str(tmp_path / "logs"))
    assert found == [(str(tmp_path / "logs" / "a"), "tensorboard"), (str(tmp_path / "logs" / "b"), "tensorboard")]
    p = parse(found[1][0], "tensorboard", RunMeta(model="m", hardware="h"))
    assert sorted(r["step"] for r in by_table(p, "train_steps")) == [10, 50]  # both files of run b
    assert by_table(p, "runs")[0]["run_id"] == default_run_id("tb", found[1][0])


def test_tensorboard_unreadable_file_is_an_error(tmp_path):
    f = tmp_path / "events.out.tfevents.bad"
    f.write_bytes(b"this is not a record file" * 10)
    with pytest.raises(SourceError, match="no TensorBoard events"):
        parse(str(f), "tensorboard", RunMeta(model="m", hardware="h"))


# --- MLPerf ----------------------------------------------------------------------------------------

def test_mlperf_fixture():
    p = parse(str(MLPERF_LOG), "mlperf", RunMeta(precision="bf16"))
    run = by_table(p, "runs")[0]
    assert (run["model"], run["hardware"], run["source"], run["status"]) == ("bert", "8xH100-SXM5-80GB", "mlperf", "completed")
    assert run["started_at"] == dt.datetime(2024, 7, 1, 14, 11, 0, tzinfo=UTC)  # run_start, not init
    assert run["ended_at"] == dt.datetime(2024, 7, 1, 14, 13, 1, 4000, tzinfo=UTC)
    assert run["steps"] == 400 and run["final_loss"] == 1.75
    config = json.loads(run["config_json"])
    assert config["global_batch_size"] == 448 and config["submission_org"] == "ExampleOrg"

    train = {r["step"]: r for r in by_table(p, "train_steps") if isinstance(r["step"], int)}
    assert sorted(train) == [100, 200, 300, 400]
    assert (train[100]["loss"], train[100]["lr"], train[100]["samples_per_s"], train[100]["epoch"]) == (7.25, 1e-4, 14210.5, 1)
    assert math.isnan(train[300]["loss"])
    assert train[200]["ts"] == dt.datetime(2024, 7, 1, 14, 12, 0, 500000, tzinfo=UTC)  # train_loss merged in
    assert train[100]["precision"] == "bf16"

    evals = by_table(p, "eval_results")
    assert [(e["checkpoint_step"], e["metric"], e["value"], e["n"], e["suite"]) for e in evals] == [
        (300, "mlm_accuracy", 0.6512, 10000, "mlperf"), (400, "mlm_accuracy", 0.7215, 10000, "mlperf")]
    assert config["quality_targets"] == {"mlm_accuracy": {"target": 0.72, "higher_is_better": True, "reached": True}}
    # a tracked stat with no train_steps column is kept, not dropped
    assert [(m["step"], m["metric"], m["value"]) for m in by_table(p, "step_metrics")] == [(300, "train_epoch_timing", 90.0)]

    # Quirks of real logs: a [phase, step] step (left for the validator to reject) and a line cut off
    # when the process was killed.
    unkeyed = [r for r in p.records if r.table == "train_steps" and not isinstance(r.values["step"], int)]
    assert [(r.line, r.values["step"]) for r in unkeyed] == [(37, [2, 400])]
    broken = [r for r in p.records if r.error]
    assert [(r.line, r.error[1].split(":")[0]) for r in broken] == [(39, "invalid MLLOG JSON")]
    assert any("5 lines without :::MLLOG" in n for n in p.notes)


def test_mlperf_flags_win_and_run_without_stop_is_running(tmp_path):
    lines = [l for l in MLPERF_LOG.read_text().splitlines() if '"run_stop"' not in l]
    path = tmp_path / "x.log"
    path.write_text("\n".join(lines))
    p = parse(str(path), "mlperf", RunMeta(model="bert-large", hardware="dgx-h100"))
    run = by_table(p, "runs")[0]
    assert (run["model"], run["hardware"], run["status"]) == ("bert-large", "dgx-h100", "running")
    assert "ended_at" not in run


def test_mlperf_without_mllog_lines_is_an_error(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("epoch 1 loss 2.0\n")
    with pytest.raises(SourceError, match="no :::MLLOG lines"):
        parse(str(path), "mlperf", RunMeta())


# --- JSONL and detection ---------------------------------------------------------------------------

def test_jsonl_lines_are_passed_through_with_their_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"table": "runs", "run_id": "a"}\n\n{"run_id": "b", "loss": NaN}\n'
                     b'{oops\n[1, 2]\n\xff\xfe\n')
    p = parse(str(path), "jsonl", RunMeta(), table="train_steps")
    assert [(r.line, r.table) for r in p.records] == [(1, "runs"), (3, "train_steps"), (4, "train_steps"),
                                                       (5, "train_steps"), (6, "train_steps")]
    assert p.records[0].values == {"run_id": "a"}
    assert math.isnan(p.records[1].values["loss"])
    assert p.records[2].error[1].startswith("invalid JSON")
    assert p.records[3].error[1] == "not a JSON object: got a JSON array"
    assert p.records[4].error[1].startswith("not UTF-8")
    assert p.records[2].raw == "{oops"


@needs_hf
def test_detect_by_name_and_content(tmp_path):
    assert detect(str(HF_STATE)) == "hf-trainer"
    assert detect(str(MLPERF_LOG)) == "mlperf"
    tb = write_events(tmp_path / "events.out.tfevents.1.host", TB_SCALARS[:1])
    assert detect(str(tb)) == "tensorboard"
    (tmp_path / "rows.txt").write_text('\n{"table": "runs"}\n')
    assert detect(str(tmp_path / "rows.txt")) == "jsonl"
    (tmp_path / "empty.jsonl").write_text("")
    assert detect(str(tmp_path / "empty.jsonl")) == "jsonl"
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(SourceError, match="pass --format"):
        detect(str(tmp_path / "notes.txt"))
    copy = tmp_path / "trainer_state.json"
    shutil.copy(HF_STATE, copy)
    assert sources(str(copy)) == [(str(copy), "hf-trainer")]
    with pytest.raises(SourceError, match="no such file"):
        sources(str(tmp_path / "missing.jsonl"))
