"""One place that says where the lake and the serving file live: conf/mhw.yaml, with environment
overrides (MHW_CONFIG picks another file; MHW_LAKE and MHW_SERVING override single keys)."""
from __future__ import annotations

import copy
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
    checkpoints_root: str
    raw: dict
    base: str = str(REPO_ROOT)  # what a relative path in the file is relative to

    def section(self, name: str) -> dict:
        return self.raw.get(name) or {}

    def path(self, section: str, key: str, default: str) -> str:
        """A path setting, resolved as the file's own paths are (relative to the repo or the file)."""
        return _resolve(self.section(section).get(key) or default, Path(self.base))


def is_remote(location: str | os.PathLike) -> bool:
    """Whether a lake root (or any location) is an object-store URI (``s3://bucket/lake``, ``file:///…``)
    rather than a local path: the one place that says so (warehouse.writer.Lake keeps the answer)."""
    return "://" in str(location)


def _resolve(path: str, base: Path) -> str:
    if is_remote(path) or os.path.isabs(path):
        return path
    return str((base / path).resolve())


_PARSED: dict[tuple, dict] = {}  # (path, mtime, size) -> the file's parse: a command loads it more than once


def _parse(path: Path) -> dict:
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        with open(path) as f:  # libyaml's loader where the wheel has it: a tenth of the pure-Python one
            _PARSED[key] = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return copy.deepcopy(_PARSED[key])


def load(config_path: str | os.PathLike | None = None) -> Settings:
    path = Path(config_path or os.environ.get("MHW_CONFIG") or DEFAULT_CONFIG)
    raw = _parse(path)
    # Relative paths in the default config are relative to the repo; in a user's file, to that file;
    # in an environment variable, to the current directory.
    base = REPO_ROOT if path.resolve() == DEFAULT_CONFIG else path.resolve().parent

    def location(env: str, section: str, key: str, default: str) -> str:
        if os.environ.get(env):
            return _resolve(os.environ[env], Path.cwd())
        return _resolve((raw.get(section) or {}).get(key, default), base)

    w = raw.get("writer") or {}
    return Settings(
        lake_root=location("MHW_LAKE", "lake", "root", ".mhw/lake"),
        serving_path=location("MHW_SERVING", "serving", "path", ".mhw/serving.duckdb"),
        flush_rows=int(w.get("flush_rows", 2000)),
        flush_seconds=float(w.get("flush_seconds", 30)),
        checkpoints_root=location("MHW_CHECKPOINTS", "checkpoints", "root", ".mhw/checkpoints"),
        raw=raw,
        base=str(base),
    )
