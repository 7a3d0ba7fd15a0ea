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

from model import checkpoint, data, hardware, train
from model.config import CfgNode
from warehouse import cli
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


def test_resume_from_mid_run_checkpoint_continues_the_same_curve_without_duplicate_rows(tmp_path, lake_root):
    whole = train.train(tiny(tmp_path / "a", str(tmp_path / "lake_a")))

    # the same run crashes at step 25: its runs row says failed, its rows up to the crash are kept
    cfg = tiny(tmp_path / "b", lake_root, **{"trainer.inject_error_at_step": 25})
    with pytest.raises(RuntimeError, match="injected failure"):
        train.train(cfg)
    run_id = lake(lake_root).execute("select run_id from runs").fetchone()[0]
    assert lake(lake_root).execute("select status from runs").fetchone()[0] == "failed"
    assert lake(lake_root).execute("select max(step) from train_steps").fetchone()[0] == 24

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


@pytest.mark.parametrize("name, mem, count, want", [
    ("NVIDIA H100 80GB HBM3", 79.6, 8, "h100-sxm-80gb-x8"),  # memory in GiB, as the driver counts it
    ("NVIDIA A100-SXM4-80GB", 79.2, 8, "a100-sxm-80gb-x8"),
    ("NVIDIA H100 PCIe", 79.6, 1, "h100-pcie-80gb-x1"),
    ("Tesla T4", 14.7, 4, "t4-15gb-x4"),
])
def test_hardware_fingerprint_is_a_readable_slug(name, mem, count, want):
    assert hardware._gpu_slug(name, mem, count) == want
    assert hardware.fingerprint().startswith("cpu-" if not torch.cuda.is_available() else "")
    assert hardware.peak_flops(name) and hardware.peak_flops(None) is None
