"""One place that says where the lake and the serving file live: conf/mhw.yaml, with environment
overrides (MHW_CONFIG picks another file; MHW_LAKE and MHW_SERVING override single keys)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "mhw.yaml"


@dataclass(frozen=True)
class Settings:
    lake_root: str
    serving_path: str
    flush_rows: int
    flush_seconds: float
    raw: dict


def _resolve(path: str, base: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def load(config_path: str | os.PathLike | None = None) -> Settings:
    path = Path(config_path or os.environ.get("MHW_CONFIG") or DEFAULT_CONFIG)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    # Relative paths in the default config are relative to the repo; in a user's file, to that file.
    base = REPO_ROOT if path.resolve() == DEFAULT_CONFIG else path.resolve().parent
    lake = os.environ.get("MHW_LAKE") or raw.get("lake", {}).get("root", ".mhw/lake")
    serving = os.environ.get("MHW_SERVING") or raw.get("serving", {}).get("path", ".mhw/serving.duckdb")
    w = raw.get("writer", {})
    return Settings(
        lake_root=_resolve(lake, base) if not os.environ.get("MHW_LAKE") else _resolve(lake, Path.cwd()),
        serving_path=_resolve(serving, base) if not os.environ.get("MHW_SERVING") else _resolve(serving, Path.cwd()),
        flush_rows=int(w.get("flush_rows", 2000)),
        flush_seconds=float(w.get("flush_seconds", 30)),
        raw=raw,
    )
