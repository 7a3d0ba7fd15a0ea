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

from warehouse.importers import Parsed, RunMeta, SourceError, default_run_id, detect, hf_trainer, parse, sources

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
    assert [(m["step"], m["metric"], m["value"]) for m in by_table(p, "step_metrics")] == [(30, "custom/weird", 1.0)]


def test_tensorboard_logdir_gives_one_source_per_run_dir(tmp_path):
    write_events(tmp_path / "logs" / "a" / "events.out.tfevents.1.host.1.0", TB_SCALARS[:2])
    write_events(tmp_path / "logs" / "b" / "events.out.tfevents.2.host.1.0", TB_SCALARS[:2])
    write_events(tmp_path / "logs" / "b" / "events.out.tfevents.3.host.1.0", [(T0 + 50, 50, "loss", 1.0)], start=T0 + 40)
    found = sources(str(tmp_path / "logs"))
    assert found == [(str(tmp_path / "logs" / "a"), "tensorboard"), (str(tmp_path / "logs" / "b"), "tensorboard")]
    p = parse(found[1][0], "tensorboard", RunMeta(model="m", hardware="h"))
    assert sorted(r["step"] for r in by_table(p, "train_steps")) == [10, 50]  # both files of run b
    # the id is the run's first event file (as its writer named it) and start: a copy elsewhere is the same run
    run_b = by_table(p, "runs")[0]["run_id"]
    assert run_b != by_table(parse(found[0][0], "tensorboard", RunMeta(model="m", hardware="h")), "runs")[0]["run_id"]
    shutil.copytree(found[1][0], tmp_path / "copy" / "b")
    assert by_table(parse(str(tmp_path / "copy" / "b"), "tensorboard", RunMeta(model="m", hardware="h")),
                    "runs")[0]["run_id"] == run_b


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


# --- real public logs (../shared/data/real, MANIFEST.md) ----------------------------------------------

REAL = REPO.parent / "shared" / "data" / "real"
HF_REAL = REAL / "hf_trainer_state"
PREFIXED = REPO / "tests" / "fixtures" / "hf" / "prefixed-eval-sets.trainer_state.json"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real public logs not present at {REAL}")
HH = RunMeta(model="m", hardware="h")


def hf(name: str, meta: RunMeta = HH) -> Parsed:
    return parse(str(HF_REAL / name), "hf-trainer", meta)


def run_of(p: Parsed) -> dict:
    (run,) = by_table(p, "runs")
    return run


@needs_real
def test_hf_checkpoint_copies_share_one_run_id_and_different_runs_never_collide():
    """The id comes from what every checkpoint of a run shares, so a series lands as one run without
    --run-id; 19 public runs (33 files) give 19 ids."""
    ids: dict[str, set[str]] = {}
    for f in sorted(HF_REAL.glob("*.json")):
        series = "--".join(f.name.split("--")[:2])  # <owner>--<repo>: one run per repo in this set
        ids.setdefault(series, set()).add(run_of(parse(str(f), "hf-trainer", HH))["run_id"])
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    assert len({next(iter(v)) for v in ids.values()}) == len(ids) == 19
    series = ["subro608--Deep_learning_Bert_project2--checkpoint-500.json",
              "subro608--Deep_learning_Bert_project2--checkpoint-2400.json"]
    assert run_of(hf(series[0]))["run_id"] == run_of(hf(series[1]))["run_id"]
    # another model or hardware is another run; --run-id wins over the content id
    assert run_of(hf(series[0], RunMeta(model="m2", hardware="h")))["run_id"] != run_of(hf(series[0]))["run_id"]
    assert run_of(hf(series[0], RunMeta(model="m", hardware="h", run_id="mine")))["run_id"] == "mine"


@needs_real
def test_hf_extra_numbers_go_to_step_metrics_and_eval_keys_keep_their_suite():
    p = hf("LEEDONGQUE--serverlog--checkpoint-2000.json")
    extra = {(m["step"], m["metric"]): m["value"] for m in by_table(p, "step_metrics")}
    assert extra[(50, "mean_token_accuracy")] == 0.789223695397377 and extra[(50, "num_tokens")] == 24730.0
    assert extra[(50, "entropy")] == 1.1514280203729867
    assert {m for _, m in extra} == {"entropy", "mean_token_accuracy", "num_tokens"}
    assert len(extra) == 3 * len(by_table(p, "train_steps")) == 120
    evals = {(e["suite"], e["metric"]) for e in by_table(p, "eval_results")}
    # eval_mean_token_accuracy sits beside eval_loss: a metric of hf-eval, not a set named "mean"
    assert evals == {("hf-eval", m) for m in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "runtime",
                                               "samples_per_second", "steps_per_second")}
    assert not any("not imported" in n for n in p.notes)


@needs_real
def test_hf_lr_key_is_the_lr_column_and_string_values_are_noted_not_rejected():
    p = hf("HangerYang--Star--trainer_state.json")
    train = by_table(p, "train_steps")
    assert len(train) == 2000 and not [r for r in p.records if r.error]
    assert (train[0]["step"], train[0]["lr"], train[0]["loss"]) == (20, 0.0001, 24.79317626953125)
    extra = [m for m in by_table(p, "step_metrics") if m["step"] == 20]
    assert {m["metric"] for m in extra} == {f"train/{k}_{i}" for k in ("acc", "ploss") for i in range(7)}
    assert "remaining_time" not in {m["metric"] for m in by_table(p, "step_metrics")}
    assert any("not numbers" in n and "remaining_time (string)" in n for n in p.notes)


def test_hf_prefixed_eval_sets_are_suites_of_their_own():
    """Fixture built from the Trainer's format (tests/fixtures/hf/make_prefixed_eval_sets.py): six
    eval sets logged as eval_g0_loss ... eval_g5_loss over 30 epochs, one log per epoch."""
    p = parse(str(PREFIXED), "hf-trainer", HH)
    evals = by_table(p, "eval_results")
    suites = {e["suite"] for e in evals}
    assert suites == {f"hf-eval-g{g}" for g in range(6)}
    assert {e["metric"] for e in evals} == {"loss", "runtime", "samples_per_second", "steps_per_second"}
    assert len(evals) == 6 * 4 * 30
    for g in range(6):
        loss = {e["checkpoint_step"]: e["value"] for e in evals if e["suite"] == f"hf-eval-g{g}" and e["metric"] == "loss"}
        assert sorted(loss) == list(range(25, 751, 25))
        assert loss[25] == pytest.approx(1.085 + 0.01 * g) and loss[750] == pytest.approx(1.875 + 0.01 * g)
    train = by_table(p, "train_steps")
    assert len(train) == 30 and train[-1]["loss"] == 0.0708 and train[0]["loss"] == 1.2
    assert run_of(p)["status"] == "completed"


def test_hf_eval_set_needs_its_own_loss_key():
    """``eval_<p>_<m>`` is a set only where the same entry has ``eval_<p>_loss``."""
    e = {"eval_loss": 1.0, "eval_mean_token_accuracy": 0.9, "eval_val_set_loss": 2.0, "eval_val_set_runtime": 3.0,
         "eval_val_bleu": 0.5, "step": 10}
    assert sorted(hf_trainer.eval_keys(e)) == sorted([
        ("hf-eval", "loss", "eval_loss"), ("hf-eval", "mean_token_accuracy", "eval_mean_token_accuracy"),
        ("hf-eval-val_set", "loss", "eval_val_set_loss"), ("hf-eval-val_set", "runtime", "eval_val_set_runtime"),
        ("hf-eval", "val_bleu", "eval_val_bleu")])


@needs_real
@pytest.mark.parametrize("name", ["alicelouis47--VisLungTransformer--model.json",
                                  "arbordreams--tokalign-baseline--model.json",
                                  "fabiom91--ConvNeXt_AI_Competition_Platform--model.json",
                                  "yuanhuanghuang--quality--lrqa-init-py-trainer_state.json"])
def test_trainer_states_with_other_names_import(name):
    assert detect(str(HF_REAL / name)) == "hf-trainer"
    p = hf(name)
    assert by_table(p, "train_steps") and not [r for r in p.records if r.error]


@needs_real
def test_a_trainer_state_json_that_is_not_one_is_refused_with_what_is_missing(tmp_path):
    impostor = tmp_path / "checkpoint-100" / "trainer_state.json"
    impostor.parent.mkdir()
    shutil.copy(REAL / "lm_eval" / "saucam--model_evals--Orpomis-Prime-7B-winogrande.json", impostor)
    assert detect(str(impostor)) == "hf-trainer"  # by its name: never read as JSON lines
    with pytest.raises(SourceError) as e:
        parse(str(impostor), "hf-trainer", HH)
    assert str(e.value).startswith(f"{impostor}: not a Hugging Face trainer_state.json: no 'log_history' list")
    assert "results" in str(e.value)  # the keys it does have
    (tmp_path / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match="a JSON array, not an object with a 'log_history' list"):
        parse(str(tmp_path / "trainer_state.json"), "hf-trainer", HH)
    doc = tmp_path / "other.json"
    doc.write_text(json.dumps({"global_step": 3, "history": []}, indent=2))
    with pytest.raises(SourceError, match=r"one JSON document \(not JSON lines\) of no known format.*"
                                          r"keys found: global_step, history"):
        detect(str(doc))


@needs_real
def test_a_prometheus_scrape_is_refused_clearly():
    f = REAL / "prometheus" / "Ahasannn--hardware-aware-router--vllm_metrics.txt"
    with pytest.raises(SourceError, match="a Prometheus /metrics scrape .*not a training or evaluation log"):
        detect(str(f))


# MLPerf: (file, metric, evals, first, last, status, target reached), values from MANIFEST.md
MLPERF_REAL = [
    ("v3.1--Intel-HabanaLabs-HLS-Gaudi2-N32-PT-gpt3-result_0.txt", "log_perplexity", 24, 2.7495551109313965,
     2.6898789405822754, "completed", True),
    ("v3.1--ASUSTeK-ESC-N8-E11-dlrm_dcnv2-result_0.txt", "auc", 14, 0.7897379398345947, None, "completed", True),
    ("v3.1--Intel-16-nodes-SPR-pytorch-bert-result_0.txt", "mlm_accuracy", 17, 0.3653998374938965, None,
     "completed", True),
    ("v3.0--Dell-R750xax4A100-PCIE-80GB-unet3d-result_0.txt", "dice", 38, None, None, "completed", True),
    ("v3.1--NVIDIA-eos_n96_ngc23.04_mxnet-unet3d-result_04.txt", "dice", 1, 6.657659840092478e-11,
     6.657659840092478e-11, "failed", False),
    ("v3.1--Fujitsu-primergy-cdi-A100x8-mxnet-ngc23.09-resnet-result_4.txt", "top1_accuracy", 9, 0.3083, 0.75878,
     "failed", False),
]


def directions() -> dict[str, int]:
    import yaml

    spec = yaml.safe_load((REPO / "conf" / "diagnostics.yaml").read_text())["metric_directions"]
    return {**{m: 1 for m in spec["higher_is_better"]}, **{m: -1 for m in spec["lower_is_better"]}}


@needs_real
@pytest.mark.parametrize("name, metric, n, first, last, status, reached", MLPERF_REAL)
def test_mlperf_eval_accuracy_is_named_for_what_it_measures(name, metric, n, first, last, status, reached):
    (path,) = (REAL / "mlperf").glob(f"*{name}")
    p = parse(str(path), "mlperf", RunMeta())
    evals = sorted(by_table(p, "eval_results"), key=lambda e: (e["ts"], e.get("checkpoint_step")))
    assert {e["metric"] for e in evals} == {metric} and len(evals) == n
    assert all(isinstance(e["checkpoint_step"], int) for e in evals)  # dlrm's epoch 0.05 is samples seen
    if first is not None:
        assert evals[0]["value"] == first
    if last is not None:
        assert round(evals[-1]["value"], 5) == round(last, 5)
    run = run_of(p)
    assert run["status"] == status
    target = json.loads(run["config_json"])["quality_targets"][metric]
    assert target["reached"] is reached
    # the direction of the metric is known to the rules, and agrees with the target's
    assert directions()[metric] == (1 if target["higher_is_better"] else -1)


@needs_real
def test_mlperf_stable_diffusion_fid_and_clip_are_two_metrics():
    (path,) = (REAL / "mlperf").glob("*stable_diffusion*")
    p = parse(str(path), "mlperf", RunMeta())
    evals = by_table(p, "eval_results")
    fid = {e["checkpoint_step"]: e["value"] for e in evals if e["metric"] == "fid"}  # last line per step wins
    clip = {e["checkpoint_step"]: e["value"] for e in evals if e["metric"] == "clip_score"}
    assert sorted(fid) == sorted(clip) == [1000, 2000, 3000, 4000, 5000, 6000]
    assert round(fid[5000], 2) == 82.01 and round(clip[5000], 3) == 0.175  # MANIFEST: FID 82.0 / CLIP 0.175
    targets = json.loads(run_of(p)["config_json"])["quality_targets"]
    assert targets == {"fid": {"target": 90.0, "higher_is_better": False, "reached": True},
                       "clip_score": {"target": 0.15, "higher_is_better": True, "reached": True}}
    assert directions()["fid"] == -1 and directions()["clip_score"] == 1


@needs_real
def test_mlperf_dlrm_fractional_epochs_are_samples_seen():
    (path,) = (REAL / "mlperf").glob("*dlrm_dcnv2*")
    p = parse(str(path), "mlperf", RunMeta())
    steps = sorted(e["checkpoint_step"] for e in by_table(p, "eval_results"))
    assert steps[0] == round(0.049980888109768154 * 4195197692)
    assert [r["step"] for r in by_table(p, "train_steps")] == [round(0.6999037815181431 * 4195197692)]
    assert any("fractional epoch values" in n for n in p.notes)


# lm-evaluation-harness: MANIFEST.md values
LM_EVAL_REAL = [
    ("Meta-Llama-3-8B-Instruct-arc", "lm-eval.arc_challenge", "acc", 0.585),
    ("Meta-Llama-3-8B-Instruct-arc", "lm-eval.arc_challenge", "acc_norm", 0.622),
    ("Meta-Llama-3-8B-Instruct-gsm8k", "lm-eval.gsm8k.strict-match", "exact_match", 0.756),
    ("Meta-Llama-3-8B-Instruct-mmlu", "lm-eval.mmlu", "acc", 0.658),
    ("Meta-Llama-3-8B-Instruct-truthfulqa", "lm-eval.truthfulqa_mc1", "acc", 0.362),
    ("Orpomis-Prime-7B-hellaswag", "lm-eval.hellaswag", "acc_norm", 0.791),
    ("Orpomis-Prime-7B-winogrande", "lm-eval.winogrande", "acc", 0.740),
]


@needs_real
@pytest.mark.parametrize("name, suite, metric, value", LM_EVAL_REAL)
def test_lm_eval_results(name, suite, metric, value):
    path = REAL / "lm_eval" / f"saucam--model_evals--{name}.json"
    assert detect(str(path)) == "lm-eval"
    p = parse(str(path), "lm-eval", RunMeta())
    evals = {(e["suite"], e["metric"]): e for e in by_table(p, "eval_results")}
    assert round(evals[(suite, metric)]["value"], 3) == value
    assert 0 < evals[(suite, f"{metric}_stderr")]["value"] < 0.05  # stderr kept as its own metric
    run = run_of(p)
    assert (run["kind"], run["source"], run["status"], run["hardware"]) == ("eval", "lm-eval", "completed",
                                                                            "NVIDIA-A100-80GB-PCIe-x1")
    assert run["model"] == ("meta-llama--Meta-Llama-3-8B-Instruct" if "Llama" in name else "saucam--Orpomis-Prime-7B")
    assert {e["run_id"] for e in evals.values()} == {run["run_id"]} and run["run_id"].startswith("lmeval-")
    assert json.loads(run["config_json"])["n-shot"]  # the file's context kept with the run


@needs_real
def test_lm_eval_declared_directions_agree_with_the_rules():
    """Every metric a real results file declares (configs.<task>.metric_list.higher_is_better) has that
    direction in conf/diagnostics.yaml, so a better score never reads as a regression."""
    dirs, declared = directions(), {}
    for f in (REAL / "lm_eval").glob("*.json"):
        for cfg in json.loads(f.read_text())["configs"].values():
            for m in cfg.get("metric_list", []):
                declared[m["metric"]] = 1 if m["higher_is_better"] else -1
    assert len(declared) >= 10
    assert {m: dirs.get(m) for m in declared} == declared


@needs_real
def test_lm_eval_not_available_stderr_is_not_an_error(tmp_path):
    """The harness writes "N/A" where it computed no stderr: no row, a note; a score that is not a
    number is left for ingest to reject with the task and key."""
    doc = json.loads((REAL / "lm_eval" / "saucam--model_evals--Meta-Llama-3-8B-Instruct-arc.json").read_text())
    doc["results"]["arc_challenge"]["acc_stderr,none"] = "N/A"
    doc["results"]["arc_challenge"]["acc_norm,none"] = "oops"
    path = tmp_path / "results_2024-04-19.json"
    path.write_text(json.dumps(doc))
    p = parse(str(path), "lm-eval", RunMeta())
    metrics = {e["metric"]: e["value"] for e in by_table(p, "eval_results")}
    assert "acc_stderr" not in metrics and metrics["acc_norm"] == "oops" and metrics["acc"] == 0.5853242320819113
    assert any('1 scores are "N/A"' in n for n in p.notes)


@needs_real
def test_mlflow_runs():
    store = REAL / "mlflow"
    found = sources(str(store))
    assert [(os.path.basename(s), f) for s, f in found] == [("ed05f9cd599442fe9a0c9222184710b8", "mlflow"),
                                                            ("c9efc9e12e8d4c7c846d2c2805695cd5", "mlflow")]
    speech = parse(found[0][0], "mlflow", RunMeta(hardware="cpu"))
    run = run_of(speech)
    assert (run["run_id"], run["status"], run["steps"], run["model"]) == (
        "ed05f9cd599442fe9a0c9222184710b8", "completed", 9, "Speech-model-simple-rnn")  # status 3 FINISHED
    loss = [r["loss"] for r in by_table(speech, "train_steps")]
    assert len(loss) == 10 and round(loss[0], 1) == 332.7 and round(loss[-1], 1) == 234.8
    assert json.loads(run["config_json"])["params"]["opt_name"] == "SGD"
    image = parse(found[1][0], "mlflow", RunMeta(hardware="cpu"))
    evals = {(e["suite"], e["metric"]): round(e["value"], 3) for e in by_table(image, "eval_results")}
    assert evals == {("mlflow-eval", "loss"): 0.317, ("mlflow-eval", "accuracy"): 0.890,
                     ("mlflow-test", "loss"): 0.333, ("mlflow-test", "accuracy"): 0.886}
    assert any("marked deleted" in n for n in image.notes)
    with pytest.raises(SourceError, match="pass --hardware"):
        parse(found[0][0], "mlflow", RunMeta())


def test_mlflow_bad_metric_lines_name_file_line_and_field(tmp_path):
    """A run folder built from MLflow's file-store format."""
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics" / "train").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: abc123\nstatus: 4\nstart_time: 1714564800000\nend_time: null\n")
    (run / "metrics" / "train" / "loss").write_text("1714564801000 2.5 1\n1714564802000 nan 2\nbad 1.0 3\n")
    (run / "metrics" / "grad_norm").write_text("1714564801000 0.5 1\n1714564802000 x 2\n1714564803000 1 2 3\n")
    (run / "metrics" / "val_f1").write_text("1714564802000 0.4 2\n")
    (run / "metrics" / "custom").write_text("1714564802000 7 2\n")
    assert sources(str(tmp_path / "mlruns")) == [(str(run), "mlflow")]
    p = parse(str(run), "mlflow", RunMeta(model="m", hardware="h"))
    train = {r["step"]: r for r in by_table(p, "train_steps")}
    assert train[1]["loss"] == 2.5 and train[1]["grad_norm"] == 0.5 and math.isnan(train[2]["loss"])
    assert [(e["suite"], e["metric"], e["value"]) for e in by_table(p, "eval_results")] == [("mlflow-eval", "f1", 0.4)]
    assert [(m["metric"], m["value"]) for m in by_table(p, "step_metrics")] == [("custom", 7.0)]
    bad = sorted((os.path.relpath(r.file, run), r.line, r.error[0], r.table) for r in p.records if r.error)
    assert bad == [("metrics/grad_norm", 2, "value", "train_steps"), ("metrics/grad_norm", 3, None, "train_steps"),
                   ("metrics/train/loss", 3, "ts", "train_steps")]
    assert run_of(p)["status"] == "failed" and "ended_at" not in run_of(p)


@needs_real
def test_tensorboard_keras_epoch_tags(tmp_path):
    """Keras' TensorBoard callback (TF2 tensor values): epoch_loss in logs/train is the train loss;
    the same tags under logs/validation are evals."""
    (f,) = (REAL / "tensorboard").glob("10-Academy-*")
    p = parse(str(f), "tensorboard", HH)
    loss = [r["loss"] for r in by_table(p, "train_steps")]
    assert [r["step"] for r in by_table(p, "train_steps")] == list(range(10))
    assert round(loss[0], 1) == 332.7 and round(loss[-1], 1) == 234.8  # as MANIFEST.md and the MLflow copy say
    val = tmp_path / "logs" / "validation"
    val.mkdir(parents=True)
    shutil.copy(f, val / "events.out.tfevents.1628697775.host.v2")
    p = parse(str(val), "tensorboard", HH)
    assert not by_table(p, "train_steps")
    assert {(e["suite"], e["metric"]) for e in by_table(p, "eval_results")} == {("tb-eval", "loss")}


def test_tensorboard_eval_and_test_tags_are_separate_suites(tmp_path):
    f = write_events(tmp_path / "run" / "events.out.tfevents.1714564800.host.1.0", [
        (T0 + 1, 10, "val_loss", 1.5), (T0 + 1, 10, "test/accuracy", 0.75), (T0 + 1, 10, "loss", 2.0)])
    p = parse(str(f), "tensorboard", HH)
    assert sorted((e["suite"], e["metric"], e["value"]) for e in by_table(p, "eval_results")) == [
        ("tb-eval", "loss", 1.5), ("tb-test", "accuracy", 0.75)]
    assert [r["loss"] for r in by_table(p, "train_steps")] == [2.0]


def mllog(key, value, time_ms=1719843000000, **md) -> str:
    return "0: :::MLLOG " + json.dumps({"namespace": "", "time_ms": time_ms, "event_type": "POINT_IN_TIME",
                                        "key": key, "value": value, "metadata": {"file": "x.py", **md}})


def test_mlperf_dict_valued_and_unknown_benchmark_evals(tmp_path):
    """Built from mlperf-logging's format: Mask R-CNN logs {"BBOX": .., "SEGM": ..} (its compliance
    rules check both); a benchmark the importer does not know keeps 'accuracy' and says so."""
    path = tmp_path / "maskrcnn.log"
    path.write_text("\n".join([mllog("submission_benchmark", "maskrcnn"), mllog("submission_platform", "8xA100"),
                               mllog("run_start", None), mllog("eval_accuracy", {"BBOX": 0.38, "SEGM": 0.335},
                                                               epoch_num=12)]) + "\n")
    p = parse(str(path), "mlperf", RunMeta())
    assert sorted((e["metric"], e["value"]) for e in by_table(p, "eval_results")) == [("bbox_map", 0.38),
                                                                                       ("segm_map", 0.335)]
    targets = json.loads(run_of(p)["config_json"])["quality_targets"]
    assert (targets["bbox_map"]["reached"], targets["segm_map"]["reached"]) == (True, False)  # 0.377 / 0.339
    assert directions()["bbox_map"] == directions()["segm_map"] == 1
    path.write_text("\n".join([mllog("submission_benchmark", "newbench"), mllog("submission_platform", "x"),
                               mllog("eval_accuracy", 0.5, epoch_num=1)]) + "\n")
    p = parse(str(path), "mlperf", RunMeta())
    assert [e["metric"] for e in by_table(p, "eval_results")] == ["accuracy"]
    assert any("'newbench' is not in the importer's table" in n for n in p.notes)


@needs_real
def test_lm_eval_newer_fields(tmp_path):
    """The fields lm-eval >= 0.4.3 adds (EvaluationTracker: model_name, total_evaluation_time_seconds,
    higher_is_better, n-samples, task_hashes), added to a real 0.4.2 file."""
    doc = json.loads((REAL / "lm_eval" / "saucam--model_evals--Meta-Llama-3-8B-Instruct-arc.json").read_text())
    doc.update({"model_name": "org/other-name", "total_evaluation_time_seconds": "123.5",
                "higher_is_better": {"arc_challenge": {"acc": True, "acc_norm": True}},
                "n-samples": {"arc_challenge": {"original": 1172, "effective": 1172}},
                "task_hashes": {"arc_challenge": "ab12"}})
    doc["config"]["model_args"] = "pretrained=org/x,dtype=bfloat16"
    path = tmp_path / "results_2024-04-19T09-27-55.json"
    path.write_text(json.dumps(doc, indent=2))
    assert detect(str(path)) == "lm-eval"
    p = parse(str(path), "lm-eval", RunMeta())
    run = run_of(p)
    assert (run["model"], run["precision"]) == ("org--other-name", "bf16")  # model_name wins over model_args
    assert (run["ended_at"] - run["started_at"]).total_seconds() == 123.5
    assert {e["n"] for e in by_table(p, "eval_results")} == {1172}
    assert {e["ts"] for e in by_table(p, "eval_results")} == {run["ended_at"]}
    config = json.loads(run["config_json"])
    assert config["task_hashes"] == {"arc_challenge": "ab12"} and config["higher_is_better"]["arc_challenge"]["acc"]
    assert "results" not in config  # the scores are rows, not config


def test_mlflow_store_wins_over_the_tensorboard_logs_in_its_artifacts(tmp_path):
    run = tmp_path / "mlruns" / "3" / "r1"
    (run / "metrics").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_uuid: r1\nstatus: 3\nstart_time: 1714564800000\n")
    (run / "metrics" / "loss").write_text("1714564801000 2.5 1\n")
    write_events(run / "artifacts" / "tb" / "events.out.tfevents.1.host.1.0", TB_SCALARS[:1])
    write_events(tmp_path / "mlruns" / "tb-elsewhere" / "events.out.tfevents.2.host.1.0", TB_SCALARS[:1])
    assert sources(str(tmp_path / "mlruns")) == [(str(run), "mlflow"),
                                                 (str(tmp_path / "mlruns" / "tb-elsewhere"), "tensorboard")]
    assert sources(str(tmp_path / "mlruns"), "tensorboard") == [
        (str(run / "artifacts" / "tb"), "tensorboard"), (str(tmp_path / "mlruns" / "tb-elsewhere"), "tensorboard")]
    with pytest.raises(SourceError, match="no MLflow runs"):
        sources(str(tmp_path / "mlruns" / "tb-elsewhere"), "mlflow")


def test_an_eval_set_with_dashes_keeps_its_suite_findable(tmp_path):
    """``eval_dataset={"val-a": ...}`` logs eval_val-a_loss: its suite is hf-eval-val_a, so the part
    before the suite's last dash is still hf-eval (what the overfitting rule reads)."""
    from warehouse.importers.hf_trainer import eval_keys
    keys = eval_keys({"eval_val-a_loss": 1.0, "eval_val-a_samples": 10, "eval_loss": 2.0, "step": 5})
    assert ("hf-eval-val_a", "loss", "eval_val-a_loss") in keys and ("hf-eval", "loss", "eval_loss") in keys
