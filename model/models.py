"""Models built from transformers configs (no weights are ever downloaded): a GPT-2-style causal LM
and a BERT-style sequence classifier, from tiny to GPT-2 124M, or loaded from a local folder."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from model.config import CfgNode

FAMILIES = {
    # family: (task, config class, model class)
    "gpt2": ("lm", GPT2Config, GPT2LMHeadModel),
    "bert": ("cls", BertConfig, BertForSequenceClassification),
}


def default_config() -> CfgNode:
    return CfgNode(
        family="gpt2",        # gpt2 (causal LM) | bert (sequence classifier)
        slug="gpt2-tiny",     # the `model` partition key in the lake
        n_layer=2,            # transformer blocks
        n_head=4,             # attention heads
        n_embd=64,            # hidden size
        intermediate_size=None,  # MLP width; null = 4 * n_embd
        block_size=64,        # context length in tokens
        vocab_size=None,      # null = the tokenizer's (258 for bytes); GPT-2 124M pads to 50304
        dropout=0.0,          # 0 for pretraining-style runs; try 0.1 for fine-tuning
        num_labels=2,         # classifier outputs (bert)
    )


def task_of(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model.family {family!r} ({' | '.join(FAMILIES)})")
    return FAMILIES[family][0]


def hf_config(cfg: CfgNode, tok) -> dict:
    """The transformers config dict for ``cfg``; it is what a checkpoint stores to rebuild the model."""
    vocab = cfg.vocab_size or tok.vocab_size
    if vocab < tok.vocab_size:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size}")
    inner = cfg.intermediate_size or 4 * cfg.n_embd
    if cfg.family == "gpt2":
        c = GPT2Config(vocab_size=vocab, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_inner=inner, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                       attn_pdrop=cfg.dropout, bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
        # no pad_token_id: LM windows are never padded, and <eot> doubles as pad in the tokenizer
    elif cfg.family == "bert":
        c = BertConfig(vocab_size=vocab, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, intermediate_size=inner,
                       max_position_embeddings=cfg.block_size, hidden_dropout_prob=cfg.dropout,
                       attention_probs_dropout_prob=cfg.dropout, num_labels=cfg.num_labels,
                       pad_token_id=tok.pad_id)
    else:
        task_of(cfg.family)
    return c.to_dict()


def from_hf_config(family: str, config: dict) -> torch.nn.Module:
    _, config_cls, model_cls = FAMILIES[family]
    return model_cls(config_cls.from_dict(config))


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def from_hf_dir(family: str, path: str | Path, num_labels: int | None = None) -> torch.nn.Module:
    """A model saved with ``save_pretrained`` (local files only: this never reaches a hub)."""
    _, _, model_cls = FAMILIES[family]
    kwargs = {"num_labels": num_labels} if family == "bert" and num_labels else {}
    return model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_flops_per_token(model: torch.nn.Module, family: str, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B (as nanoGPT's estimate_mfu): 6N for the weights'
    forward and backward, plus 12*L*H*Q*T for attention. N leaves out position embeddings, which are
    looked up, not multiplied."""
    c = model.config
    n = n_params(model)
    if family == "gpt2":
        n -= model.transformer.wpe.weight.numel()
        L, H, Q = c.n_layer, c.n_head, c.n_embd // c.n_head
    else:
        n -= model.bert.embeddings.position_embeddings.weight.numel()
        L, H, Q = c.num_hidden_layers, c.num_attention_heads, c.hidden_size // c.num_attention_heads
    return 6 * n + 12 * L * H * Q * seq_len
