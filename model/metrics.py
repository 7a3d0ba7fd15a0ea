"""The loss a model trains on and the quality metrics it is judged by, shared by the trainer's
periodic validation and the evaluation suites so both report the same numbers."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def forward_loss(model, batch: dict, task: str):
    """(mean loss, logits). The LM data is already shifted (labels = next tokens), so the loss is
    computed here rather than by HF's ``labels=`` path, which would shift a second time."""
    if task == "lm":
        logits = model(input_ids=batch["input_ids"]).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), batch["labels"].reshape(-1))
        return loss, logits
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(out.logits.float(), batch["labels"]), out.logits


def f1_score(pred: torch.Tensor, gold: torch.Tensor, num_labels: int) -> float:
    """Binary F1 of class 1 for two classes, macro F1 otherwise."""
    classes = [1] if num_labels == 2 else list(range(num_labels))
    scores = []
    for c in classes:
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


@torch.no_grad()
def score(model, ds, task: str, batch_size: int, max_batches: int | None = None, device="cpu",
          autocast=None, transform=None) -> dict:
    """Quality over the first ``max_batches * batch_size`` examples of ``ds`` (always the same ones,
    so numbers are comparable across steps and checkpoints). ``transform(batch)`` perturbs inputs
    for the robustness suite. LM: loss, perplexity, next-token accuracy. Classifier: loss, accuracy, f1."""
    was_training = model.training
    model.eval()
    n_batches = math.ceil(ds.n / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    loss_sum, correct, count = 0.0, 0, 0
    preds, golds = [], []
    try:
        for i in range(n_batches):
            idx = torch.arange(i * batch_size, min((i + 1) * batch_size, ds.n))
            batch = ds.batch(idx)
            if transform is not None:
                batch = transform(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast or nullcontext():
                loss, logits = forward_loss(model, batch, task)
            weight = batch["labels"].numel()
            loss_sum += float(loss) * weight
            pred = logits.argmax(-1)
            correct += int((pred == batch["labels"]).sum())
            count += weight
            if task == "cls":
                preds.append(pred.cpu())
                golds.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    loss = loss_sum / max(count, 1)
    out = {"loss": loss, "accuracy": correct / max(count, 1)}
    if task == "lm":
        out["perplexity"] = math.exp(loss) if loss < 700 else math.inf
    else:
        num_labels = model.config.num_labels
        out["f1"] = f1_score(torch.cat(preds), torch.cat(golds), num_labels)
    out["n"] = count if task == "cls" else min(ds.n, n_batches * batch_size)
    return out
