"""Metric names shared by the formats that log free-form scalar names (TensorBoard tags, MLflow
metric keys): which name is which ``train_steps`` column, and which names are evaluations.

One table for both, so ``train/loss`` means the same whether it came from an event file or an
``mlruns/`` folder. Names are compared lower-case. A name that is neither a column nor an eval goes
to ``step_metrics`` under its own name: kept and queryable, never dropped.
"""
from __future__ import annotations

# name (lower-case) -> (train_steps column, factor applied to the value)
TRAIN_ALIASES: dict[str, tuple[str, float]] = {
    **{t: ("loss", 1.0) for t in ("loss", "train/loss", "train_loss", "training/loss", "loss/train",
                                  "training_loss", "epoch_loss")},  # epoch_loss: Keras' TensorBoard callback
    **{t: ("lr", 1.0) for t in ("lr", "learning_rate", "train/lr", "train/learning_rate", "optimizer/lr",
                                "epoch_lr", "epoch_learning_rate")},
    **{t: ("grad_norm", 1.0) for t in ("grad_norm", "train/grad_norm", "gradient_norm", "train/gradient_norm")},
    **{t: ("epoch", 1.0) for t in ("epoch", "train/epoch")},
    **{t: ("tokens_per_s", 1.0) for t in ("tokens_per_s", "tokens_per_sec", "tokens_per_second",
                                          "train/tokens_per_s", "train/tokens_per_second",
                                          "throughput/tokens_per_sec", "perf/tokens_per_sec")},
    **{t: ("samples_per_s", 1.0) for t in ("samples_per_s", "samples_per_sec", "samples_per_second",
                                           "train/samples_per_s", "train/samples_per_second",
                                           "throughput", "throughput/samples_per_sec", "perf/samples_per_sec")},
    **{t: ("step_time_ms", 1.0) for t in ("step_time_ms", "train/step_time_ms", "perf/step_time_ms")},
    **{t: ("step_time_ms", 1000.0) for t in ("step_time", "step_time_s", "train/step_time", "perf/step_time")},
    **{t: ("data_time_ms", 1.0) for t in ("data_time_ms", "train/data_time_ms")},
    **{t: ("loss_scale", 1.0) for t in ("loss_scale", "train/loss_scale", "amp/loss_scale")},
    **{t: ("mfu", 1.0) for t in ("mfu", "train/mfu", "perf/mfu")},
    **{t: ("gpu_mem_gb", 1.0) for t in ("gpu_mem_gb", "train/gpu_mem_gb", "memory/gpu_gb")},
}

# Prefixes of validation-set evaluations (a checkpoint's held-out loss, accuracy ...).
EVAL_PREFIXES = ("eval/", "eval_", "val/", "val_", "validation/", "validation_", "valid/", "valid_")
# Prefixes of test-set evaluations: another data set, so another suite where a format can tell them apart.
TEST_PREFIXES = ("test/", "test_")


def train_column(name: str) -> tuple[str, float] | None:
    return TRAIN_ALIASES.get(name.lower())


def eval_split(name: str) -> tuple[str, str] | None:
    """``('eval' | 'test', metric)`` for an evaluation name (``val_loss`` -> ``('eval', 'loss')``),
    else None."""
    low = name.lower()
    for kind, prefixes in (("eval", EVAL_PREFIXES), ("test", TEST_PREFIXES)):
        p = next((p for p in prefixes if low.startswith(p) and len(low) > len(p)), None)
        if p:
            return kind, name[len(p):]
    return None
