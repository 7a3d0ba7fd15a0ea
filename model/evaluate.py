"""
Evaluate a checkpoint with the suites declared in configs/eval/*.yaml and write the results to the
lake: one ``eval_results`` row per (suite, metric), every timed request in ``latency_samples``, and a
``runs`` row (kind='eval') linked to the training run it came from.

    mhw eval --checkpoint out/<run_id>/ckpt-0000200.pt           # or the folder: its latest checkpoint
    mhw eval --run <train_run_id>                                 # latest checkpoint of a logged run
    mhw eval --checkpoint path/to/hf_dir --suite quality,latency  # a HF save_pretrained folder
    mhw eval --checkpoint ... --latency.iters=100 --latency.batch_sizes=[1,32]

Suites: quality (loss / perplexity / next-token accuracy for LMs, accuracy / F1 for classifiers on the
held-out split), robustness (the same under token dropout and adjacent-token swaps), latency
(p50/p95/p99 and throughput per batch size and sequence length, after warm-up), errors (exceptions,
NaN/inf outputs and timeouts on random valid inputs) and precision (fp32 vs bf16 vs fp16 vs int8
dynamic quantization on the same batches; a variant this machine cannot run is recorded as
unsupported, never faked).

Evaluating the same checkpoint with the same suites again rewrites its rows: the run id is a hash of
the checkpoint's path, step and suites, and every file key derives from it.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from model import checkpoint, data, models
from model.config import CONFIGS_DIR, CfgNode, add_override_arguments, load_yaml, overrides_from_args
from model.metrics import f1_score, forward_loss, score
from model.train import autocast_for, build_config as train_config
from warehouse import audit, config as mhw_config, hardware
from warehouse.telemetry import utcnow
from warehouse.writer import Lake, check_slug, slugify

SUITES = ("quality", "robustness", "latency", "errors", "precision")
DEFAULT_SUITES_FILE = CONFIGS_DIR / "eval" / "default.yaml"


def default_config() -> CfgNode:
    """The suites' defaults; configs/eval/default.yaml restates them with comments."""
    return CfgNode(
        quality=dict(enabled=True, batch_size=32, max_batches=16),
        robustness=dict(enabled=True, batch_size=32, max_batches=8, token_dropout=0.1, char_swap=0.05, seed=0),
        latency=dict(enabled=True, batch_sizes=[1, 8], seq_lens=[32, 64], warmup=3, iters=20, timeout_ms=1000),
        errors=dict(enabled=True, requests=32, timeout_ms=1000),
        precision=dict(enabled=True, variants=["fp32", "bf16", "fp16", "int8"], batch_size=32, max_batches=4),
    )


@dataclass
class Loaded:
    model: torch.nn.Module
    family: str
    task: str
    tok: object
    cfg: CfgNode  # the training config (data section rebuilds the same held-out split)
    step: int
    train_run_id: str | None
    slug: str
    path: str


def load(path: str, device: str, overrides: dict | None = None) -> Loaded:
    """A ckpt-*.pt of this project (or a folder of them: the latest), or a HF save_pretrained folder."""
    p = Path(path)
    if models.is_hf_dir(p):
        family = json.loads((p / "config.json").read_text()).get("model_type")
        if family not in models.FAMILIES:
            raise ValueError(f"{p}: model_type {family!r} is not one of {list(models.FAMILIES)}")
        cfg = train_config(None, {"model.family": family, "data.name": "arithmetic" if family == "gpt2" else "sentiment",
                                  **(overrides or {})})
        model = models.from_hf_dir(family, p)
        max_pos = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
        cfg.model.block_size = min(cfg.model.block_size, max_pos)
        state = p / "trainer_state.json"  # a HF Trainer checkpoint knows its step
        step = json.loads(state.read_text()).get("global_step", 0) if state.exists() else 0
        tok = data.build_tokenizer(cfg.data, str(p))
        return Loaded(model.to(device).eval(), family, models.task_of(family), tok, cfg, int(step), None,
                      slugify(p.resolve().name), str(p.resolve()))  # resolved: `mhw eval .` names its folder
    path = checkpoint.resolve(p)
    ck = checkpoint.load(path)
    cfg = CfgNode(**ck["config"])
    cfg.merge_from_overrides(overrides or {})
    model = models.from_hf_config(ck["family"], ck["hf_config"])
    model.load_state_dict(ck["model"])
    init = cfg.trainer.init_from
    tok = data.build_tokenizer(cfg.data, init if init and models.is_hf_dir(init) else None)
    return Loaded(model.to(device).eval(), ck["family"], models.task_of(ck["family"]), tok, cfg, int(ck["step"]),
                  ck["run_id"], ck["model_slug"], str(path.resolve()))


def latest_checkpoint_of_run(run_id: str, lake_root: str) -> Path:
    """The newest checkpoint in the out_dir a logged training run recorded in its config."""
    from warehouse.query import connect
    row = connect(lake_root=lake_root, serving_path="").execute(
        "select config_json from runs where run_id = ? and kind = 'train'", [run_id]).fetchone()
    if row is None:
        raise LookupError(f"no training run {run_id!r} in the lake at {lake_root}")
    out_dir = json.loads(row[0])["trainer"]["out_dir"]
    found = checkpoint.latest(out_dir)
    if found is None:
        raise FileNotFoundError(f"run {run_id}: no checkpoint in {out_dir}")
    return found


def eval_run_id(checkpoint_path: str, step: int, suites: list[str]) -> str:
    h = hashlib.sha256(f"{checkpoint_path}|{step}|{','.join(sorted(suites))}".encode()).hexdigest()[:16]
    return f"eval-{h}"


# -----------------------------------------------------------------------------
# perturbations for the robustness suite (inputs change, targets do not)


def _content_mask(batch: dict, tok) -> torch.Tensor:
    """Positions holding real content: not padding, not the classifier's leading [CLS]."""
    m = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool().clone()
    if "attention_mask" in batch:
        m[:, 0] = False
    return m


def token_dropout(p: float, tok, seed: int):
    g = torch.Generator().manual_seed(seed)

    def apply(batch: dict) -> dict:
        ids = batch["input_ids"].clone()
        drop = (torch.rand(ids.shape, generator=g) < p) & _content_mask(batch, tok)
        ids[drop] = tok.pad_id
        return {**batch, "input_ids": ids}

    return apply


def char_swap(p: float, tok, seed: int):
    g = torch.Generator().manual_seed(seed)

    def apply(batch: dict) -> dict:
        ids = batch["input_ids"].clone()
        content = _content_mask(batch, tok)
        swap = (torch.rand(ids.shape, generator=g) < p) & content & torch.roll(content, -1, dims=1)
        swap[:, -1] = False
        first = torch.zeros_like(swap[:, :1])
        swap &= ~torch.cat([first, swap[:, :-1]], dim=1)  # no two swaps share a token: pairs stay disjoint
        rows, cols = swap.nonzero(as_tuple=True)
        left, right = ids[rows, cols].clone(), ids[rows, cols + 1].clone()
        ids[rows, cols], ids[rows, cols + 1] = right, left
        return {**batch, "input_ids": ids}

    return apply


# -----------------------------------------------------------------------------
# precision variants


def gpt2_conv1d_to_linear(model: torch.nn.Module) -> int:
    """GPT-2's projections are transformers' Conv1D (x @ W + b, W stored in x out), which dynamic
    quantization does not know; rewrite each as the equivalent nn.Linear (W transposed)."""
    from transformers.pytorch_utils import Conv1D
    n = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data.copy_(child.weight.data.t())
                lin.bias.data.copy_(child.bias.data)
                setattr(module, child_name, lin)
                n += 1
    return n


def int8_dynamic(model: torch.nn.Module) -> torch.nn.Module | None:
    """Linear layers with int8 weights and dynamically quantized activations (CPU kernels), or None
    where this torch build has no dynamic quantization."""
    q = getattr(torch.ao, "quantization", None)
    if q is None or not hasattr(q, "quantize_dynamic") or not torch.backends.quantized.supported_engines:
        return None
    m = copy.deepcopy(model).cpu().float().eval()
    gpt2_conv1d_to_linear(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.10+ deprecates torch.ao.quantization for torchao
        return q.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)


def precision_runners(model, variants: list[str], device: str) -> dict:
    """variant -> (model, autocast context factory, device), or a reason string if unsupported."""
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    out = {}
    for v in variants:
        if v == "fp32":
            out[v] = (model, nullcontext, device)
        elif v == "bf16":
            ok = dev_type == "cpu" or torch.cuda.is_bf16_supported()
            out[v] = (model, lambda: autocast_for("bf16", dev_type), device) if ok else "no bf16 on this GPU"
        elif v == "fp16":
            out[v] = (model, lambda: autocast_for("fp16", dev_type), device) if dev_type == "cuda" \
                else "fp16 autocast needs a GPU"
        elif v == "int8":
            q = int8_dynamic(model)
            out[v] = (q, nullcontext, "cpu") if q is not None else "torch has no dynamic quantization here"
        else:
            out[v] = f"unknown variant {v!r}"
    return out


# -----------------------------------------------------------------------------
# the suites: each returns [(metric, value, n)] (and latency also its samples)


def suite_quality(m: Loaded, val, sc: CfgNode, device: str):
    res = score(m.model, val, m.task, sc.batch_size, sc.max_batches, device)
    n = res.pop("n")
    return [(k, v, n) for k, v in res.items()]


def suite_robustness(m: Loaded, val, sc: CfgNode, device: str):
    clean = score(m.model, val, m.task, sc.batch_size, sc.max_batches, device)
    n = clean.pop("n")
    rows = []
    primary = "loss" if m.task == "lm" else "accuracy"
    for name, p, make in (("token_dropout", sc.token_dropout, token_dropout), ("char_swap", sc.char_swap, char_swap)):
        if not p:
            continue
        res = score(m.model, val, m.task, sc.batch_size, sc.max_batches, device, transform=make(p, m.tok, sc.seed))
        res.pop("n")
        rows += [(f"{k}_{name}", v, n) for k, v in res.items()]
        rows.append((f"{primary}_{name}_delta", res[primary] - clean[primary], n))
    return rows


def _request(m: Loaded, batch: dict, device: str) -> torch.Tensor:
    with torch.no_grad():
        if m.task == "lm":
            out = m.model(input_ids=batch["input_ids"]).logits
        else:
            out = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # a request is done when its result is, not when its kernels are queued
    return out


def suite_latency(m: Loaded, val, sc: CfgNode, device: str):
    rows, samples = [], []
    block = m.cfg.model.block_size
    for bs in sc.batch_sizes:
        idx = torch.arange(bs) % val.n
        full = {k: v.to(device) for k, v in val.batch(idx).items()}
        for seq in sorted({min(s, block) for s in sc.seq_lens}):
            batch = {k: v[:, :seq] for k, v in full.items() if k != "labels"}
            for _ in range(sc.warmup):  # allocator, caches and lazy init are not the model's latency
                _request(m, batch, device)
            lat = []
            for _ in range(sc.iters):
                t0 = time.perf_counter()
                try:
                    out = _request(m, batch, device)
                    ok = bool(torch.isfinite(out).all())
                except Exception:
                    ok = False
                ms = (time.perf_counter() - t0) * 1e3
                ok = ok and ms <= sc.timeout_ms
                lat.append(ms)
                samples.append({"ts": utcnow(), "batch_size": bs, "seq_len": seq, "latency_ms": ms, "ok": ok})
            t = torch.tensor(lat, dtype=torch.float64)
            tag = f"bs{bs}_seq{seq}"
            rows += [(f"p50_ms_{tag}", float(t.quantile(0.50)), sc.iters),
                     (f"p95_ms_{tag}", float(t.quantile(0.95)), sc.iters),
                     (f"p99_ms_{tag}", float(t.quantile(0.99)), sc.iters),
                     (f"mean_ms_{tag}", float(t.mean()), sc.iters),
                     (f"samples_per_s_{tag}", bs * sc.iters / (float(t.sum()) / 1e3), sc.iters),
                     (f"tokens_per_s_{tag}", bs * seq * sc.iters / (float(t.sum()) / 1e3), sc.iters)]
    return rows, samples


def suite_errors(m: Loaded, val, sc: CfgNode, device: str):
    g = torch.Generator().manual_seed(0)
    vocab, block = m.model.config.vocab_size, m.cfg.model.block_size
    exceptions = nonfinite = timeouts = 0
    for i in range(sc.requests):
        # random valid inputs across the whole range: length 1..block, any token id, the last at full length
        n = block if i == sc.requests - 1 else int(torch.randint(1, block + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (1, n), generator=g)
        batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        t0 = time.perf_counter()
        try:
            out = _request(m, batch, device)
            nonfinite += not bool(torch.isfinite(out).all())
        except Exception:
            exceptions += 1
        timeouts += (time.perf_counter() - t0) * 1e3 > sc.timeout_ms
    n = sc.requests
    return [("exception_rate", exceptions / n, n), ("nonfinite_rate", nonfinite / n, n),
            ("timeout_rate", timeouts / n, n), ("error_rate", min(1.0, (exceptions + nonfinite + timeouts) / n), n)]


@torch.no_grad()
def suite_precision(m: Loaded, val, sc: CfgNode, device: str):
    """Every variant on the same batches: its own quality, and how far its logits are from fp32's."""
    runners = precision_runners(m.model, list(sc.variants), device)
    rows = []  # (precision, metric, value, n)
    for v, r in runners.items():
        if isinstance(r, str):
            rows.append((v, "supported", 0.0, 0))
    live = {v: r for v, r in runners.items() if not isinstance(r, str)}
    acc = {v: {"loss": 0.0, "correct": 0, "count": 0, "maxdiff": 0.0, "agree": 0, "preds": [], "ms": 0.0}
           for v in live}
    golds, n_examples = [], 0
    n_batches = min(math.ceil(val.n / sc.batch_size), sc.max_batches)
    for i in range(n_batches):
        batch = val.batch(torch.arange(i * sc.batch_size, min((i + 1) * sc.batch_size, val.n)))
        n_examples += len(batch["input_ids"])
        _, ref = forward_loss(m.model, {k: t.to(device) for k, t in batch.items()}, m.task)
        ref = ref.float().cpu()  # the fp32 reference every variant is compared with
        golds.append(batch["labels"])
        for v, (model, ctx, dev) in live.items():
            b = {k: t.to(dev) for k, t in batch.items()}
            t0 = time.perf_counter()
            with ctx():
                loss, logits = forward_loss(model, b, m.task)
            logits = logits.float().cpu()
            a = acc[v]
            a["ms"] += (time.perf_counter() - t0) * 1e3
            w = batch["labels"].numel()
            a["loss"] += float(loss) * w
            pred = logits.argmax(-1)
            a["correct"] += int((pred == batch["labels"]).sum())
            a["count"] += w
            a["maxdiff"] = max(a["maxdiff"], float((logits - ref).abs().max()))
            a["agree"] += int((pred == ref.argmax(-1)).sum())
            a["preds"].append(pred)
    for v, a in acc.items():
        loss = a["loss"] / a["count"]
        rows += [(v, "supported", 1.0, n_examples), (v, "loss", loss, n_examples),
                 (v, "accuracy", a["correct"] / a["count"], n_examples),
                 (v, "max_abs_logit_diff_vs_fp32", a["maxdiff"], n_examples),
                 (v, "top1_agreement_vs_fp32", a["agree"] / a["count"], n_examples),
                 (v, "mean_batch_ms", a["ms"] / n_batches, n_batches)]
        if m.task == "lm":
            rows.append((v, "perplexity", math.exp(loss) if loss < 700 else math.inf, n_examples))
        else:
            rows.append((v, "f1", f1_score(torch.cat(a["preds"]), torch.cat(golds), m.model.config.num_labels),
                         n_examples))
    return rows


# -----------------------------------------------------------------------------
# the job


def _counts(out: dict) -> dict:
    metrics = sum(len(v) for v in out["results"].values())
    return {"rows_in": metrics + out["latency_samples"], "metrics": metrics, "latency_samples": out["latency_samples"],
            "run_id": out["run_id"], "checkpoint_step": out["checkpoint_step"]}


@audit.audited("eval", counts=_counts)
def evaluate(checkpoint_path: str, suites: list[str] | None = None, cfg: CfgNode | None = None,
             lake_root: str | None = None, hardware_key: str | None = None, device: str = "auto",
             data_overrides: dict | None = None) -> dict:
    """Run ``suites`` on a checkpoint and write the results. Returns {run_id, results: {suite: {metric:
    value}}, latency_samples, train_run_id, checkpoint_step}."""
    cfg = cfg or default_config()
    suites = suites or [s for s in SUITES if cfg.get(f"{s}.enabled")]
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)} ({', '.join(SUITES)})")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    lake = Lake(lake_root or mhw_config.load().lake_root)
    m = load(checkpoint_path, device, data_overrides)
    _, val = data.build(m.cfg.data, m.task, m.tok, m.cfg.model.block_size)
    run_id = eval_run_id(m.path, m.step, suites)
    hw = hardware.fingerprint(hardware_key)
    slug = check_slug("model", m.slug)
    const = {"run_id": run_id, "model": slug, "hardware": hw, "checkpoint_step": m.step}
    use_cuda = device.startswith("cuda")
    run_row = {**{k: const[k] for k in ("run_id", "model", "hardware")}, "kind": "eval", "model_family": m.family,
               "n_params": models.n_params(m.model), "gpu_name": hardware.gpu_name() if use_cuda else None,
               "gpu_count": 1 if use_cuda else 0, "precision": "fp32",
               "dataset": m.cfg.data.path or m.cfg.data.name, "config_hash": cfg.hash(),
               "code_version": hardware.code_version(), "started_at": utcnow(), "status": "running",
               "source": "trainer", "steps": m.step, "parent_run_id": m.train_run_id,
               "config_json": json.dumps({"checkpoint": m.path, "suites": suites, **cfg.to_dict()}, default=str)}
    lake.write("runs", pa.Table.from_pylist([run_row]), key=run_id)
    results, n_samples = {}, 0
    try:
        for suite in suites:
            sc = cfg.get(suite)
            samples = []
            if suite == "quality":
                rows = [("fp32", *r) for r in suite_quality(m, val, sc, device)]
            elif suite == "robustness":
                rows = [("fp32", *r) for r in suite_robustness(m, val, sc, device)]
            elif suite == "latency":
                lat, samples = suite_latency(m, val, sc, device)
                rows = [("fp32", *r) for r in lat]
            elif suite == "errors":
                rows = [("fp32", *r) for r in suite_errors(m, val, sc, device)]
            else:
                rows = suite_precision(m, val, sc, device)
            ts = utcnow()
            lake.write("eval_results", pa.Table.from_pylist([
                {**const, "train_run_id": m.train_run_id, "checkpoint": m.path, "ts": ts, "suite": suite,
                 "precision": prec, "metric": metric, "value": float(value), "n": int(n)}
                for prec, metric, value, n in rows]), key=f"{run_id}-{suite}")
            if samples:
                lake.write("latency_samples", pa.Table.from_pylist(
                    [{**const, "precision": "fp32", **s} for s in samples]), key=f"{run_id}-latency")
                n_samples += len(samples)
            results[suite] = {(f"{prec}/{metric}" if suite == "precision" else metric): value
                              for prec, metric, value, _ in rows}
            print(f"{suite}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[suite].items()))
        run_row["status"] = "completed"
    finally:
        run_row["ended_at"] = utcnow()
        if run_row["status"] == "running":
            run_row["status"] = "failed"
        lake.write("runs", pa.Table.from_pylist([run_row]), key=run_id)
    return {"run_id": run_id, "results": results, "latency_samples": n_samples, "train_run_id": m.train_run_id,
            "checkpoint_step": m.step, "checkpoint": m.path, "model": slug, "hardware": hw}


# -----------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a ckpt-*.pt, a folder of them (the latest), or a HF save_pretrained folder")
    src.add_argument("--run", help="a training run id: evaluates the latest checkpoint it wrote")
    parser.add_argument("--suite", help=f"comma-separated subset of {','.join(SUITES)} (default: every enabled suite)")
    parser.add_argument("--suites-file", default=str(DEFAULT_SUITES_FILE),
                        help="suites YAML (default: configs/eval/default.yaml)")
    parser.add_argument("--lake", help="lake root (default: conf/mhw.yaml or $MHW_LAKE)")
    parser.add_argument("--hardware", help="hardware partition key (default: this machine's fingerprint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    add_override_arguments(parser, default_config())


def run(args) -> int:
    cfg = default_config()
    cfg.merge_from_dict(load_yaml(args.suites_file))
    cfg.merge_from_overrides(overrides_from_args(args))
    lake_root = args.lake or mhw_config.load(getattr(args, "config", None)).lake_root
    path = args.checkpoint or str(latest_checkpoint_of_run(args.run, lake_root))
    suites = [s.strip() for s in args.suite.split(",")] if args.suite else None
    out = evaluate(path, suites, cfg, lake_root, args.hardware, args.device)
    print(f"eval {out['run_id']}: {out['checkpoint']} (step {out['checkpoint_step']}, "
          f"train run {out['train_run_id']}) -> {sum(len(v) for v in out['results'].values())} metrics, "
          f"{out['latency_samples']} latency samples")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
