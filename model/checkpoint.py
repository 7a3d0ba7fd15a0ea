"""Checkpoints for exact resume: model, optimizer, scheduler, GradScaler, step, every RNG state, the
resolved config and the run's identity. Files are ``<out_dir>/ckpt-<step>.pt``, written aside and
renamed, so a run killed mid-save never leaves a truncated checkpoint behind.

The best checkpoint (lowest validation loss) is also kept as ``<out_dir>/best.pt``, a hard link that
``keep_last`` never prunes, with ``best.json`` beside it (its step and validation metrics) so that a
process without torch (mhw repair, an Airflow worker) can read which one it is."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
BEST, BEST_INFO = "best.pt", "best.json"


def path_for(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"ckpt-{step:07d}.pt"


def all_in(out_dir: str | Path) -> list[Path]:
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def latest(out_dir: str | Path) -> Path | None:
    found = all_in(out_dir)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint in a folder."""
    p = Path(path)
    if p.is_dir():
        found = latest(p)
        if found is None:
            raise FileNotFoundError(f"no ckpt-*.pt in {p}")
        return found
    if not p.exists():
        raise FileNotFoundError(p)
    return p


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, state: dict, keep_last: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if keep_last:
        for old in all_in(path.parent)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    # weights_only=False: the file holds RNG states and the config as Python objects. Load only
    # checkpoints this project wrote (a checkpoint is code, as any pickle is).
    return torch.load(resolve(path), map_location=map_location, weights_only=False)


def mark_best(path: str | Path, step: int, metrics: dict) -> Path:
    """Keep the checkpoint at ``path`` as ``best.pt`` beside it (a hard link: no copy, and pruning
    ``ckpt-*.pt`` leaves it), and its step and validation metrics in ``best.json``. Both replaced
    atomically; the checkpoint first, so ``best.json`` never names a state that is not ``best.pt``."""
    path = Path(path)
    best, tmp = path.parent / BEST, path.parent / f".{BEST}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links
        import shutil
        shutil.copy2(path, tmp)
    os.replace(tmp, best)
    return _best_info(best, step, metrics, path)


def save_best(out_dir: str | Path, step: int, state: dict, metrics: dict) -> Path:
    """``best.pt`` saved on its own, for a validation step between scheduled checkpoints (the best
    state must not wait for the next checkpoint, which is past it), and ``best.json``."""
    best = save(Path(out_dir) / BEST, state)
    return _best_info(best, step, metrics, best)


def _best_info(best: Path, step: int, metrics: dict, source: Path) -> Path:
    info = {"step": int(step), "checkpoint": str(source), "best": str(best),
            "metrics": {k: float(v) for k, v in metrics.items()}}
    tmp_info = best.parent / f".{BEST_INFO}.tmp"
    tmp_info.write_text(json.dumps(info, sort_keys=True))
    os.replace(tmp_info, best.parent / BEST_INFO)
    return best


def best_info(out_dir: str | Path) -> dict | None:
    """``best.json`` of a run's checkpoint folder (step, metrics, paths), or None if it has none."""
    p = Path(out_dir) / BEST_INFO
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return info if (Path(out_dir) / BEST).exists() else None
