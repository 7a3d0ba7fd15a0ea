"""The training job, end to end on tiny real models (CPU, fp32): it learns, it resumes exactly, it
writes one row per step to the lake however often it was interrupted, it keeps NaN as data, and
under DDP only rank 0 writes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from model import checkpoint, data, train
from model.config import CfgNode
from warehouse import audit, cli
from warehouse.query import connect

REPO = Path(__file__).resolve().parents[2]


def tiny(tmp_path, lake_root, **overrides) -> CfgNode:
    """gpt2-tiny, made smaller and faster for tests."""
    base = {"trainer.max_steps": 30, "trainer.batch_size": 8, "trainer.eval_interval": 10,
            "trainer.eval_batches": 2, "trainer.ckpt_interval": 10, "trainer.log_interval": 0,
            "trainer.out_dir": str(tmp_path / "out" / "{run_id}"), "data.n_examples": 3000,
            "model.block_size": 32, "telemetry.lake": lake_root, "telemetry.system_interval_s": 0.05}
    base.update(overrides)
    return train.build_config("configs/gpt2-tiny.yaml", base)


def lake(root):
    return connect(lake_root=root, serving_path="")


def records(root, sql) -> list[dict]:
    return lake(root).sql(sql).arrow().read_all().to_pylist()  # via Arrow: timestamps stay tz-aware


@pytest.mark.slow  # a real training run
def test_loss_falls_and_every_table_gets_its_rows(tmp_path, lake_root):
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 40}))
    first, last = sum(s["losses"][:5]) / 5, sum(s["losses"][-5:]) / 5
    print(f"loss first5 {first:.3f} -> last5 {last:.3f}")
    assert s["status"] == "completed" and s["steps"] == 40
    assert last < first - 1.5, (first, last)  # 5.5 (uniform over 258 bytes) -> ~2.7 on this task

    # read back through the hive layout, as any reader of the lake would
    steps = records(lake_root, "select * from train_steps order by step")
    assert [r["step"] for r in steps] == list(range(40))
    for col in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "step_time_ms", "data_time_ms",
                "cpu_util", "host_mem_gb", "epoch", "ts"):
        assert all(r[col] is not None for r in steps), col
    r = steps[-1]
    assert (r["run_id"], r["model"], r["hardware"], r["precision"]) == (s["run_id"], "gpt2-tiny", s["hardware"], "fp32")
    assert r["mfu"] is None and r["loss_scale"] is None and r["gpu_util"] is None  # CPU: no peak, no scaler, no GPU
    assert steps[5]["lr"] < steps[9]["lr"] and steps[-1]["lr"] < steps[15]["lr"]  # warmup, then cosine decay
    files = sorted(str(p.relative_to(lake_root)) for p in Path(lake_root, "train_steps").rglob("*.parquet"))
    assert files and all(f.startswith(f"train_steps/model=gpt2-tiny/hardware={s['hardware']}/date=") for f in files)

    run = records(lake_root, "select * from runs")
    assert len(run) == 1
    run = run[0]
    assert (run["kind"], run["status"], run["steps"], run["source"], run["model_family"]) == \
        ("train", "completed", 40, "trainer", "gpt2")
    assert run["final_loss"] == pytest.approx(s["losses"][-1])
    assert run["n_params"] > 100_000 and run["gpu_count"] == 0 and run["precision"] == "fp32"
    assert run["ended_at"] >= run["started_at"] and len(run["config_hash"]) == 16 and run["code_version"]
    assert json.loads(run["config_json"])["trainer"]["max_steps"] == 40

    val = lake(lake_root).execute(
        "select checkpoint_step, metric, value from eval_results where suite = 'validation'").fetchall()
    assert {(st, m) for st, m, _ in val} >= {(0, "loss"), (40, "loss"), (40, "perplexity"), (20, "accuracy")}
    sysrows = lake(lake_root).execute("select device, util, mem_used_gb from system_samples").fetchall()
    assert len(sysrows) >= 2 and all(d == "cpu" and m > 0 for d, _, m in sysrows)


@pytest.mark.slow  # two real training runs
def test_resume_from_mid_run_checkpoint_continues_the_same_curve_without_duplicate_rows(tmp_path, lake_root):
    whole = train.train(tiny(tmp_path / "a", str(tmp_path / "lake_a")))

    # the same run crashes at step 25: its runs row says failed, its rows up to the crash are kept
    cfg = tiny(tmp_path / "b", lake_root, **{"trainer.inject_error_at_step": 25})
    with pytest.raises(RuntimeError, match="injected failure"):
        train.train(cfg)
    run_id = lake(lake_root).execute("select run_id from runs").fetchone()[0]
    assert lake(lake_root).execute("select status from runs").fetchone()[0] == "failed"
    assert lake(lake_root).execute("select max(step) from train_steps").fetchone()[0] == 24
    (crashed,) = audit.read(lake_root)
    assert crashed["status"] == "failed" and "injected failure" in crashed["error"]

    # resume from the middle checkpoint (step 10, not the latest): steps 10..24 are logged again
    ckpts = checkpoint.all_in(tmp_path / "b" / "out" / run_id)
    assert [checkpoint.load(p)["step"] for p in ckpts] == [10, 20]
    resumed = train.train(tiny(tmp_path / "b", lake_root, **{"trainer.resume": str(ckpts[0])}))
    assert resumed["run_id"] == run_id and resumed["status"] == "completed" and resumed["steps"] == 30

    rows = lake(lake_root).execute("select step, loss from train_steps order by step").fetchall()
    assert [st for st, _ in rows] == list(range(30))  # exactly one row per step
    for st, loss in rows:
        assert loss == pytest.approx(whole["losses"][st], rel=1e-5, abs=1e-6), st
    assert resumed["losses"] == pytest.approx(whole["losses"][10:], rel=1e-5)
    assert lake(lake_root).execute("select count(*), any_value(status) from runs").fetchone() == (1, "completed")
    val = lake(lake_root).execute("select checkpoint_step, count(*) from eval_results where metric = 'loss' "
                              "group by 1 order by 1").fetchall()
    assert val == [(0, 1), (10, 1), (20, 1), (30, 1)]


def test_nan_loss_is_kept_as_data_and_counted(tmp_path, lake_root):
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 8, "trainer.inject_nan_at_step": 3,
                                                 "trainer.eval_interval": 0}))
    assert s["nonfinite_steps"] == 1 and s["status"] == "completed"
    losses = dict(lake(lake_root).execute("select step, loss from train_steps").fetchall())
    assert math.isnan(losses[3]) and math.isnan(lake(lake_root).execute(
        "select grad_norm from train_steps where step = 3").fetchone()[0])
    # the non-finite step was skipped, so the weights (and every later loss) stayed finite
    assert all(math.isfinite(v) for k, v in losses.items() if k != 3)
    assert lake(lake_root).execute("select count(*) from train_steps where isnan(loss)").fetchone()[0] == 1
    (entry,) = audit.read(lake_root)  # one audit entry: the run, its steps and status
    assert (entry["command"], entry["status"]) == ("train", "ok")
    assert {k: json.loads(entry["counts"])[k] for k in ("run_id", "steps", "status")} == \
        {"run_id": s["run_id"], "steps": 8, "status": "completed"}


def test_stop_on_nan_ends_the_run_as_diverged(tmp_path, lake_root):
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 8, "trainer.inject_nan_at_step": 2,
                                                 "trainer.stop_on_nan": True, "trainer.eval_interval": 0}))
    assert s["status"] == "diverged" and s["steps"] == 3
    status, steps, final = lake(lake_root).execute("select status, steps, final_loss from runs").fetchone()
    assert status == "diverged" and steps == 3 and math.isnan(final)


def test_bf16_autocast_on_cpu_when_asked(tmp_path, lake_root):
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 4, "trainer.eval_interval": 0,
                                                 "trainer.precision": "bf16"}))
    assert s["precision"] == "bf16" and all(math.isfinite(x) for x in s["losses"])
    assert lake(lake_root).execute("select precision from runs").fetchone()[0] == "bf16"
    assert lake(lake_root).execute("select count(*) from train_steps where precision = 'bf16'").fetchone()[0] == 4
    assert train.resolve_precision("auto", "cpu") == "fp32"


def test_fp16_on_cpu_autocasts_to_float16_and_scales_the_loss(tmp_path, lake_root):
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 4, "trainer.eval_interval": 0,
                                                 "trainer.precision": "fp16"}))
    assert s["precision"] == "fp16" and all(math.isfinite(x) for x in s["losses"])
    rows = lake(lake_root).execute("select precision, loss_scale from train_steps order by step").fetchall()
    assert rows == [("fp16", 65536.0)] * 4  # GradScaler("cpu")'s initial scale, logged every step
    with torch.autocast("cpu", dtype=torch.float16):  # what the trainer's autocast runs the matmuls in
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    ck = checkpoint.load(s["checkpoint"])
    assert ck["scaler"]["scale"] == 65536.0  # the scaler's state resumes with the run


def test_bert_classifier_fine_tunes_from_a_hf_folder(tmp_path, lake_root):
    from transformers import BertConfig, BertForSequenceClassification
    tok = data.ByteTokenizer()
    hf_dir = tmp_path / "hf-bert"
    BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=48, num_labels=2, pad_token_id=tok.pad_id,
    )).save_pretrained(hf_dir)
    cfg = train.build_config("configs/bert-tiny-cls.yaml", {
        "trainer.max_steps": 20, "trainer.eval_interval": 20, "trainer.ckpt_interval": 0, "trainer.log_interval": 0,
        "trainer.init_from": str(hf_dir), "trainer.out_dir": str(tmp_path / "out"), "data.n_examples": 2000,
        "telemetry.lake": lake_root, "telemetry.system_interval_s": 0})
    s = train.train(cfg)
    assert s["status"] == "completed" and set(s["val"]) == {"loss", "accuracy", "f1"}
    assert all(math.isfinite(x) for x in s["losses"])  # (it learns the task in ~300 steps: too slow for a test)
    assert lake(lake_root).execute("select model_family, n_params from runs").fetchone() == \
        ("bert", sum(p.numel() for p in BertForSequenceClassification.from_pretrained(hf_dir).parameters()))
    ck = checkpoint.load(s["checkpoint"])
    assert ck["step"] == 20 and ck["family"] == "bert" and ck["hf_config"]["hidden_size"] == 32


def test_init_from_own_checkpoint_loads_its_weights(tmp_path, lake_root):
    first = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 20, "trainer.eval_interval": 0}))
    tuned = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 3, "trainer.eval_interval": 0,
                                                     "trainer.init_from": first["checkpoint"]}))
    assert tuned["run_id"] != first["run_id"]
    assert tuned["losses"][0] < first["losses"][0] - 1.0  # starts where the first run left off, not from scratch


def test_cli_train_with_dotted_overrides(tmp_path, lake_root):
    rc = cli.main(["train", "--config", "gpt2-tiny", "--lake", lake_root, "--hardware", "test-box-x1",
                   "--run-id", "cli-run", "--trainer.max_steps=4", "--trainer.batch_size", "4",
                   "--trainer.eval_interval=0", f"--trainer.out_dir={tmp_path}/out", "--data.n_examples=500",
                   "--telemetry.system_interval_s=0"])
    assert rc == 0
    assert lake(lake_root).execute("select run_id, hardware, steps, status from runs").fetchone() == \
        ("cli-run", "test-box-x1", 4, "completed")
    with pytest.raises(SystemExit):  # an unknown key is a typo, not a silent default
        cli.main(["train", "--config", "gpt2-tiny", "--trainer.batchsize=4"])
    with pytest.raises(KeyError, match="unknown config key"):
        train.build_config(None, {"trainer.nope": "1"})


@pytest.mark.ddp
def test_ddp_two_gloo_processes_write_from_rank_0_only(tmp_path, lake_root):
    marker = f"mhw-ddp-test-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MHW_TEST_MARKER": marker}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.train",
           "--config", "configs/gpt2-tiny.yaml", "--lake", lake_root, "--run-id", "ddp-run",
           "--trainer.device=cpu", "--trainer.max_steps=6", "--trainer.batch_size=4", "--trainer.eval_interval=3",
           "--trainer.eval_batches=1", "--trainer.ckpt_interval=3", f"--trainer.out_dir={tmp_path}/out",
           "--data.n_examples=800", "--model.block_size=32", "--telemetry.system_interval_s=0.2"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own, and a worker outlives a torchrun that
        # exited: find every process of this run by the marker in its environment
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("MHW_TEST_MARKER") == marker:
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        out, _ = p.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish:\n{out[-4000:]}")
    assert p.returncode == 0, out[-4000:]
    assert out.count("run ddp-run: completed") == 1  # rank 1 prints nothing either
    con = lake(lake_root)
    assert con.execute("select count(*), count(distinct step) from train_steps").fetchone() == (6, 6)
    assert con.execute("select count(*), any_value(status), any_value(steps) from runs").fetchone() == (1, "completed", 6)
    # each step saw both ranks' samples: 2 processes x 4 samples
    assert con.execute("select min(samples_per_s * step_time_ms / 1000) from train_steps").fetchone()[0] == \
        pytest.approx(8)
    ck = checkpoint.load(tmp_path / "out")
    assert ck["step"] == 6 and len(ck["rng"]) == 2  # each rank's RNG state, for an exact DDP resume


def test_sampler_is_a_function_of_the_step_and_ranks_are_disjoint():
    a = data.Sampler(n=100, batch_size=8, grad_accum=2, seed=1, rank=0, world=2)
    b = data.Sampler(n=100, batch_size=8, grad_accum=2, seed=1, rank=1, world=2)
    assert torch.equal(a.indices(5, 1), data.Sampler(100, 8, 2, 1, 0, 2).indices(5, 1))
    seen = torch.cat([s.indices(st, m) for st in range(3) for m in range(2) for s in (a, b)])
    assert len(set(seen.tolist())) == 96  # 96 distinct samples before the first epoch ends
    assert a.epoch(5) == pytest.approx(6 * 32 / 100)


def test_user_text_and_jsonl_files_load(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world\n" * 200)
    with open(tmp_path / "cls.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"sample {i}", "label": "pos" if i % 2 else "neg"}) + "\n")
    cfg = data.default_config()
    cfg.name, cfg.path = "text", str(tmp_path / "corpus.txt")
    tr, va = data.build(cfg, "lm", data.ByteTokenizer(), 16)
    assert tr.n > va.n > 0 and tr.batch(torch.tensor([0]))["input_ids"].shape == (1, 16)
    cfg.name, cfg.path = "jsonl", str(tmp_path / "cls.jsonl")
    tr, va = data.build(cfg, "cls", data.ByteTokenizer(), 16)
    assert tr.n + va.n == 40 and tr.label_names == ["neg", "pos"] == va.label_names


def test_hf_datasets_folder_loads(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `datasets` package is not installed in this venv")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": [i % 2 for i in range(30)]}),
        "test": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}),
    }).save_to_disk(tmp_path / "ds")
    cfg = data.default_config()
    cfg.name, cfg.path = "hf_disk", str(tmp_path / "ds")
    tr, va = data.build(cfg, "cls", data.ByteTokenizer(), 8)
    assert (tr.n, va.n) == (30, 2)


# -----------------------------------------------------------------------------
# streaming data and sparse telemetry


def _arith_jsonl(path, n, seed):
    import random
    texts = data.arithmetic_texts(n, 3, random.Random(seed))
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def test_streamed_lm_windows_are_the_in_memory_windows_and_passes_repeat(tmp_path):
    texts = _arith_jsonl(tmp_path / "train.jsonl", 300, 1)
    cfg = data.default_config()
    cfg.name, cfg.path, cfg.streaming, cfg.val_examples = "jsonl", str(tmp_path / "train.jsonl"), True, 40
    tok = data.ByteTokenizer()
    stream, val = data.build(cfg, "lm", tok, 16)
    # validation is the stream's head; training starts after it, packed exactly as lm_data packs
    assert torch.equal(val.windows, data.lm_data(texts[:40], tok, 16).windows)
    ref = data.lm_data(texts[40:], tok, 16).windows
    assert stream.n is None and data.Sampler(stream.n, 4, 1, 0).epoch(3) is None
    got = stream.batch(torch.arange(0, 5))
    assert torch.equal(got["input_ids"], ref[:5, :-1]) and torch.equal(got["labels"], ref[:5, 1:])
    got = stream.batch(torch.arange(8, 10))  # a rank's slice: samples 5-7 are read and skipped
    assert torch.equal(got["input_ids"], ref[8:10, :-1])
    with pytest.raises(ValueError, match="cannot go back"):
        stream.batch(torch.arange(0, 2))
    stream.batch(torch.arange(10, 10 + 2 * len(ref)))  # past the end: a second pass over the source
    assert stream.passes >= 1


def test_streamed_classifier_examples_take_their_labels_from_validation(tmp_path):
    rows = [{"text": f"sample {i}", "label": "pos" if i % 2 else "neg"} for i in range(30)]
    (tmp_path / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    cfg = data.default_config()
    cfg.name, cfg.path, cfg.val_path, cfg.streaming = "jsonl", str(tmp_path / "cls.jsonl"), str(tmp_path / "val.jsonl"), True
    tok = data.ByteTokenizer()
    stream, val = data.build(cfg, "cls", tok, 12)
    assert val.n == 6 and stream.label_names == ["neg", "pos"]
    ref = data.cls_data([r["text"] for r in rows], [r["label"] for r in rows], tok, 12)  # val_path: nothing skipped
    got = stream.batch(torch.arange(0, 8))
    for k in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(got[k], getattr(ref, k)[:8]), k
    (tmp_path / "val.jsonl").write_text(json.dumps({"text": "x", "label": "neg"}) + "\n")
    stream, _ = data.build(cfg, "cls", tok, 12)
    with pytest.raises(ValueError, match="not among the validation labels"):
        stream.batch(torch.arange(0, 4))
    cfg.name = "arithmetic"
    with pytest.raises(ValueError, match="text or jsonl"):
        data.build(cfg, "lm", tok, 12)


def test_training_streams_from_a_named_pipe_and_times_the_wait(tmp_path, lake_root):
    """A producer process feeds a named pipe (as a slow mount would); the trainer reads it lazily."""
    _arith_jsonl(tmp_path / "train.jsonl", 2000, 1)
    _arith_jsonl(tmp_path / "val.jsonl", 100, 2)
    fifo = tmp_path / "train.pipe"
    os.mkfifo(fifo)
    producer = subprocess.Popen([sys.executable, str(REPO / "bench" / "bench_realruns.py"), "produce",
                                 str(tmp_path / "train.jsonl"), str(fifo), "--bytes-per-s", "200000"])
    try:
        s = train.train(tiny(tmp_path, lake_root, **{
            "trainer.max_steps": 12, "trainer.eval_interval": 6, "data.name": "jsonl", "data.streaming": True,
            "data.path": str(fifo), "data.val_path": str(tmp_path / "val.jsonl")}))
    finally:
        producer.kill()
        producer.wait()
    assert s["status"] == "completed" and all(math.isfinite(x) for x in s["losses"])
    rows = records(lake_root, "select step, epoch, data_time_ms, step_time_ms from train_steps order by step")
    assert [r["step"] for r in rows] == list(range(12))
    assert all(r["epoch"] is None for r in rows)  # a stream's length is unknown
    assert all(0 < r["data_time_ms"] <= r["step_time_ms"] for r in rows)  # the wait is part of the step
    assert records(lake_root, "select dataset from runs")[0]["dataset"] == str(fifo)


@pytest.mark.slow  # two real training runs
def test_streaming_run_resumes_where_it_left_the_stream(tmp_path, lake_root):
    _arith_jsonl(tmp_path / "train.jsonl", 2000, 1)
    _arith_jsonl(tmp_path / "val.jsonl", 100, 2)
    stream = {"data.name": "jsonl", "data.streaming": True, "data.path": str(tmp_path / "train.jsonl"),
              "data.val_path": str(tmp_path / "val.jsonl"), "trainer.max_steps": 20, "trainer.eval_interval": 0}
    whole = train.train(tiny(tmp_path / "a", str(tmp_path / "lake_a"), **stream))
    with pytest.raises(RuntimeError, match="injected failure"):
        train.train(tiny(tmp_path / "b", lake_root, **stream, **{"trainer.inject_error_at_step": 15}))
    out = next((tmp_path / "b" / "out").iterdir())
    resumed = train.train(tiny(tmp_path / "b", lake_root, **stream, **{"trainer.resume": str(out)}))
    assert resumed["losses"] == pytest.approx(whole["losses"][10:], rel=1e-5)  # skipped the 10 steps' samples


@pytest.mark.slow  # real training runs
def test_sparse_telemetry_logs_span_means_and_resumes_to_the_same_rows(tmp_path, lake_root):
    sparse = {"telemetry.every_steps": 7, "trainer.max_steps": 30, "trainer.eval_interval": 10}
    whole = train.train(tiny(tmp_path / "a", str(tmp_path / "lake_a"), **sparse))
    rows = records(str(tmp_path / "lake_a"), "select * from train_steps order by step")
    # spans of 7 counted from each checkpoint (every 10 steps), and one ending at each checkpoint
    assert [r["step"] for r in rows] == [6, 9, 16, 19, 26, 29]
    spans = [(0, 7), (7, 10), (10, 17), (17, 20), (20, 27), (27, 30)]
    for r, (a, b) in zip(rows, spans):
        assert r["loss"] == pytest.approx(sum(whole["losses"][a:b]) / (b - a), rel=1e-6)  # HF: the span's mean
        assert r["data_time_ms"] <= r["step_time_ms"] and r["tokens_per_s"] > 0
    assert rows[0]["lr"] < rows[1]["lr"]  # the last step's LR (warmup ends at step 10)
    assert records(str(tmp_path / "lake_a"), "select count(*) as n from eval_results where metric = 'loss'")[0]["n"] == 4

    # interrupted at 25 and resumed from the checkpoint at 10: the same rows, once each
    with pytest.raises(RuntimeError, match="injected failure"):
        train.train(tiny(tmp_path / "b", lake_root, **sparse, **{"trainer.inject_error_at_step": 25}))
    ckpt = checkpoint.all_in(next((tmp_path / "b" / "out").iterdir()))[0]
    train.train(tiny(tmp_path / "b", lake_root, **sparse, **{"trainer.resume": str(ckpt)}))
    again = records(lake_root, "select step, loss from train_steps order by step")
    assert [(r["step"], pytest.approx(r["loss"], rel=1e-5)) for r in again] == [(r["step"], r["loss"]) for r in rows]
    # logging every N steps is how a run is watched, not what it computes
    assert train.build_config("configs/gpt2-tiny.yaml", {"telemetry.every_steps": 7}).hash(train.HASH_EXCLUDE) == \
        train.build_config("configs/gpt2-tiny.yaml").hash(train.HASH_EXCLUDE)


@pytest.mark.slow  # three real training runs
def test_a_fork_is_a_new_run_from_the_parents_checkpoint_with_its_own_hyperparameters(tmp_path, lake_root):
    parent = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 20}))
    ckpt = checkpoint.path_for(parent["out_dir"], 10)
    # the parent's own config from its checkpoint step: the same curve, bit for bit, as a new run
    same = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 20, "trainer.fork_from": str(ckpt),
                                                    "telemetry.parent_run_id": parent["run_id"]}))
    assert same["run_id"] != parent["run_id"] and same["status"] == "completed"
    assert same["losses"] == pytest.approx(parent["losses"][10:], rel=1e-6)
    # a new LR and clipping take effect at the fork step: the schedule is rebuilt there, the moments kept
    half = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 20, "trainer.fork_from": str(ckpt),
                                                    "trainer.lr": 1.5e-3, "trainer.min_lr": 1.5e-4}))
    lr = dict(lake(lake_root).execute("select run_id || ':' || step, lr from train_steps where step in (10, 19)").fetchall())
    for step in (10, 19):
        assert lr[f"{half['run_id']}:{step}"] == pytest.approx(lr[f"{parent['run_id']}:{step}"] / 2, rel=1e-6)
    assert half["losses"][0] == pytest.approx(parent["losses"][10], rel=1e-6)  # same weights at the fork
    assert half["losses"][-1] != pytest.approx(parent["losses"][-1], rel=1e-6)
    runs = dict(lake(lake_root).execute("select run_id, parent_run_id from runs").fetchall())
    assert runs == {parent["run_id"]: None, same["run_id"]: parent["run_id"], half["run_id"]: None}
    assert lake(lake_root).execute("select min(step), count(*) from train_steps where run_id = ?",
                                   [same["run_id"]]).fetchall() == [(10, 10)]


@pytest.mark.slow  # a real training run
def test_the_best_checkpoint_is_kept_whatever_keep_last_prunes(tmp_path, lake_root):
    # 64 examples, gpt2-tiny's own block and batch: memorized, validation best near step 40 of 100;
    # validated every 10 steps, checkpointed every 50: the best state falls between checkpoints
    s = train.train(tiny(tmp_path, lake_root, **{"trainer.max_steps": 100, "data.n_examples": 64,
                                                 "model.block_size": 64, "trainer.batch_size": 16,
                                                 "trainer.eval_batches": 4, "trainer.ckpt_interval": 50,
                                                 "trainer.keep_last": 1}))
    out = Path(s["out_dir"])
    assert [p.name for p in checkpoint.all_in(out)] == ["ckpt-0000100.pt"]
    val = dict(lake(lake_root).execute("select checkpoint_step, value from eval_results where metric = 'loss'").fetchall())
    best = min(val, key=val.get)
    assert 0 < best < 100 and best != 50, "the run was meant to overfit between its checkpoints"
    info = checkpoint.best_info(out)
    assert info["step"] == best and info["metrics"]["loss"] == pytest.approx(val[best])
    kept = checkpoint.load(out / "best.pt")
    assert kept["step"] == best and kept["run_id"] == s["run_id"]
    # it is the state that was validated: scoring it again gives the logged validation loss
    m = train.models.from_hf_config("gpt2", kept["hf_config"])
    m.load_state_dict(kept["model"])
    cfg = tiny(tmp_path, lake_root, **{"data.n_examples": 64, "model.block_size": 64})
    tok = data.build_tokenizer(cfg.data)
    _, val_ds = data.build(cfg.data, "lm", tok, 64)
    again = train.score(m, val_ds, "lm", 16, 4, "cpu", train.nullcontext())  # as validate() scored it
    assert again["loss"] == pytest.approx(val[best], rel=1e-5)


def test_the_loader_reads_ahead_the_same_batches_in_order():
    ds = data.lm_data(data.arithmetic_texts(400, 3, __import__("random").Random(0)), data.ByteTokenizer(), 16)
    sampler = data.Sampler(ds.n, 4, 2, seed=1)
    inline = data.Loader(ds, sampler, 3, 9, 2)
    ahead = data.Loader(ds, sampler, 3, 9, 2, depth=3)
    for step in range(3, 9):
        for micro in range(2):
            a, b = inline.batch(step, micro), ahead.batch(step, micro)
            assert all(torch.equal(a[k], b[k]) for k in a)
    ahead.close()

    class Broken:
        def batch(self, idx):
            raise OSError("the mount went away")
    bad = data.Loader(Broken(), sampler, 0, 4, 1, depth=2)
    with pytest.raises(OSError, match="the mount went away"):
        bad.batch(0, 0)
    skipping = data.Loader(ds, sampler, 0, 4, 1, depth=2)
    with pytest.raises(RuntimeError, match="loader out of order"):
        skipping.batch(1, 0)
    skipping.close()
