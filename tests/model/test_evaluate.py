"""The evaluation job on real tiny checkpoints: every suite writes every metric, rows link back to the
training run, a second evaluation replaces rather than duplicates, and broken models are caught."""
import math
from pathlib import Path

import pytest
import torch

from model import checkpoint, evaluate, train
from warehouse import audit, cli
from warehouse.query import connect

SMALL = {  # suites shrunk to test size
    "quality.max_batches": 2, "quality.batch_size": 8,
    "robustness.max_batches": 2, "robustness.batch_size": 8,
    "latency.batch_sizes": [1, 2], "latency.seq_lens": [8, 16], "latency.warmup": 1, "latency.iters": 3,
    "errors.requests": 6, "precision.max_batches": 1, "precision.batch_size": 8,
}


def small_cfg():
    cfg = evaluate.default_config()
    cfg.merge_from_overrides(SMALL)
    return cfg


def lake(root):
    return connect(lake_root=root, serving_path="")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT-2 and a tiny BERT, trained for a few steps into their own lake."""
    tmp = tmp_path_factory.mktemp("trained")
    common = {"trainer.eval_interval": 0, "trainer.log_interval": 0, "telemetry.system_interval_s": 0,
              "telemetry.lake": str(tmp / "lake"), "trainer.out_dir": str(tmp / "out" / "{run_id}")}
    gpt = train.train(train.build_config("configs/gpt2-tiny.yaml", {
        **common, "trainer.max_steps": 30, "trainer.batch_size": 8, "model.block_size": 32, "data.n_examples": 2000}))
    bert = train.train(train.build_config("configs/bert-tiny-cls.yaml", {
        **common, "trainer.max_steps": 10, "trainer.batch_size": 8, "data.n_examples": 400}))
    return {"gpt": gpt, "bert": bert, "lake": str(tmp / "lake"), "tmp": tmp}


def test_every_suite_writes_every_metric_linked_to_its_training_run(trained, lake_root):
    gpt = trained["gpt"]
    out = evaluate.evaluate(gpt["checkpoint"], cfg=small_cfg(), lake_root=lake_root)
    r = out["results"]
    assert set(r) == set(evaluate.SUITES)
    assert {"loss", "perplexity", "accuracy"} <= set(r["quality"])
    assert r["quality"]["perplexity"] == pytest.approx(math.exp(r["quality"]["loss"]))
    assert {"loss_token_dropout", "loss_char_swap", "loss_token_dropout_delta", "loss_char_swap_delta"} <= set(r["robustness"])
    for bs in (1, 2):
        for seq in (8, 16):
            tag = f"bs{bs}_seq{seq}"
            lat = [r["latency"][f"p{q}_ms_{tag}"] for q in (50, 95, 99)]
            assert 0 < lat[0] <= lat[1] <= lat[2] and r["latency"][f"tokens_per_s_{tag}"] > 0
    assert r["errors"] == {"exception_rate": 0.0, "nonfinite_rate": 0.0, "timeout_rate": 0.0, "error_rate": 0.0}
    p = r["precision"]
    assert p["fp32/supported"] == p["bf16/supported"] == p["int8/supported"] == 1.0
    if not torch.cuda.is_available():
        assert p["fp16/supported"] == 0.0 and "fp16/loss" not in p  # recorded as unsupported, not faked
    assert p["fp32/max_abs_logit_diff_vs_fp32"] == 0.0
    assert p["int8/top1_agreement_vs_fp32"] > 0.9 and abs(p["int8/loss"] - p["fp32/loss"]) < 0.1
    assert abs(p["bf16/loss"] - p["fp32/loss"]) < 0.1

    con = lake(lake_root)
    n_metrics = sum(len(v) for v in r.values())
    assert con.execute("select count(*), count(distinct train_run_id), any_value(train_run_id), "
                       "min(checkpoint_step), max(checkpoint_step) from eval_results").fetchone() == \
        (n_metrics, 1, gpt["run_id"], 30, 30)
    assert con.execute("select count(*) from eval_results where precision = 'int8'").fetchone()[0] > 0
    assert con.execute("select count(*), count(distinct (batch_size, seq_len)), bool_and(ok), min(latency_ms) > 0 "
                       "from latency_samples").fetchone() == (12, 4, True, True)
    assert con.execute("select kind, status, parent_run_id, steps, model from runs").fetchone() == \
        ("eval", "completed", gpt["run_id"], 30, "gpt2-tiny")
    files = [str(f.relative_to(lake_root)) for f in Path(lake_root, "eval_results").rglob("*.parquet")]
    assert all(f.startswith(f"eval_results/model=gpt2-tiny/hardware={out['hardware']}/date=") for f in files)

    # the same checkpoint and suites again: same run id, rows replaced, not added
    again = evaluate.evaluate(gpt["checkpoint"], cfg=small_cfg(), lake_root=lake_root)
    assert again["run_id"] == out["run_id"]
    assert con.execute("select count(*) from eval_results").fetchone()[0] == n_metrics
    assert lake(lake_root).execute("select count(*) from latency_samples").fetchone()[0] == 12
    assert lake(lake_root).execute("select count(*) from runs").fetchone()[0] == 1
    entries = audit.read(lake_root)  # one audit entry per evaluation, with the rows it wrote
    assert [(e["command"], e["status"], e["rows_in"]) for e in entries] == [("eval", "ok", n_metrics + 12)] * 2


def test_classifier_gets_accuracy_f1_and_int8(trained, lake_root):
    out = evaluate.evaluate(trained["bert"]["checkpoint"], ["quality", "precision"], small_cfg(), lake_root)
    q, p = out["results"]["quality"], out["results"]["precision"]
    assert set(q) == {"loss", "accuracy", "f1"} and 0 <= q["accuracy"] <= 1 and 0 <= q["f1"] <= 1
    assert p["int8/supported"] == 1.0 and "int8/f1" in p


def test_cli_eval_by_training_run_id(trained, lake_root):
    rc = cli.main(["eval", "--run", trained["gpt"]["run_id"], "--lake", trained["lake"], "--suite", "quality,errors",
                   "--quality.max_batches=1", "--errors.requests=3"])
    assert rc == 0
    con = lake(trained["lake"])
    assert con.execute("select count(distinct suite) from eval_results where run_id like 'eval-%'").fetchone()[0] == 2
    assert con.execute("select count(*) from runs where kind = 'eval' and parent_run_id = ?",
                       [trained["gpt"]["run_id"]]).fetchone()[0] == 1


def test_errors_and_latency_flag_a_model_that_outputs_nan(trained, lake_root, tmp_path):
    ck = checkpoint.load(trained["gpt"]["checkpoint"])
    ck["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")  # one poisoned weight is enough
    bad = checkpoint.save(tmp_path / "ckpt-0000030.pt", ck)
    out = evaluate.evaluate(str(bad), ["errors", "latency"], small_cfg(), lake_root)
    assert out["results"]["errors"]["nonfinite_rate"] == 1.0 and out["results"]["errors"]["error_rate"] == 1.0
    assert lake(lake_root).execute("select bool_or(ok) from latency_samples").fetchone()[0] is False


def test_perturbations_change_inputs_only():
    from model.data import ByteTokenizer
    tok = ByteTokenizer()
    ids = torch.arange(10, 42).view(2, 16)
    batch = {"input_ids": ids, "labels": ids + 1}
    dropped = evaluate.token_dropout(1.0, tok, 0)(batch)
    assert (dropped["input_ids"] == tok.pad_id).all() and torch.equal(dropped["labels"], batch["labels"])
    swapped = evaluate.char_swap(0.3, tok, 0)(batch)["input_ids"]
    assert not torch.equal(swapped, ids)
    assert torch.equal(swapped.sort(dim=1).values, ids)  # the same tokens, reordered
    cls = {"input_ids": torch.tensor([[tok.cls_id, 5, 6, tok.pad_id]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    assert evaluate.token_dropout(1.0, tok, 0)(cls)["input_ids"].tolist() == [[tok.cls_id] + [tok.pad_id] * 3]


def test_conv1d_to_linear_is_exact_and_int8_stays_close():
    """Parity: GPT-2 with its Conv1D rewritten as nn.Linear gives the same logits (allclose), and
    int8 dynamic quantization stays near them."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)).eval()
    x = torch.randint(0, 64, (2, 16))
    ref = m(input_ids=x).logits
    lin = __import__("copy").deepcopy(m)
    assert evaluate.gpt2_conv1d_to_linear(lin) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block
    torch.testing.assert_close(lin(input_ids=x).logits, ref, rtol=1e-5, atol=1e-5)
    q = evaluate.int8_dynamic(m)
    assert (q(input_ids=x).logits - ref).abs().max() < 0.1 * ref.abs().max()


def test_a_hf_save_pretrained_folder_evaluates_too(tmp_path, lake_root):
    from transformers import GPT2Config, GPT2LMHeadModel
    from model.data import ByteTokenizer
    tok = ByteTokenizer()
    hf_dir = tmp_path / "my-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)).save_pretrained(hf_dir)
    out = evaluate.evaluate(str(hf_dir), ["quality"], small_cfg(), lake_root)
    assert (out["model"], out["checkpoint_step"], out["train_run_id"]) == ("my-gpt2", 0, None)
    assert out["results"]["quality"]["loss"] == pytest.approx(math.log(tok.vocab_size), rel=0.1)  # untrained
