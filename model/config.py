"""Job configs in minGPT's form: each component owns a default config, a YAML file overrides some of
it, and the command line overrides single keys with dotted names (``--trainer.batch_size=32``).
Every override is checked against the keys the defaults declare, so a typo fails loudly instead of
training with the default it meant to replace.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"


class CfgNode:
    """A nested namespace: ``cfg.trainer.lr``. Built from and dumped to plain dicts."""

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, CfgNode(**v) if isinstance(v, dict) else v)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.__dict__.items()}

    def keys(self, prefix: str = "") -> list[str]:
        """Every leaf key, dotted: ``['trainer.lr', 'trainer.batch_size', ...]``."""
        out = []
        for k, v in self.__dict__.items():
            out += v.keys(f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"]
        return out

    def get(self, dotted: str):
        node = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def set(self, dotted: str, value) -> None:
        """Set an existing leaf; unknown keys are an error (they are almost always typos)."""
        *path, leaf = dotted.split(".")
        node = self
        for part in path:
            if not isinstance(getattr(node, part, None), CfgNode):
                raise KeyError(f"unknown config key {dotted!r}")
            node = getattr(node, part)
        if leaf not in node.__dict__ or isinstance(node.__dict__[leaf], CfgNode):
            raise KeyError(f"unknown config key {dotted!r}")
        node.__dict__[leaf] = value

    def merge_from_dict(self, d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(getattr(self, k, None), CfgNode):
                getattr(self, k).merge_from_dict(v, f"{prefix}{k}.")
            elif isinstance(getattr(self, k, None), CfgNode):
                raise KeyError(f"config key {prefix}{k!r} is a section, not a value")
            else:
                self.set(k, v) if k in self.__dict__ else _unknown(f"{prefix}{k}")

    def merge_from_overrides(self, overrides: dict[str, str]) -> None:
        """``{'trainer.batch_size': '32'}``: values are parsed as YAML scalars (32, 3e-4, true, null)."""
        for k, v in overrides.items():
            self.set(k, parse_value(v) if isinstance(v, str) else v)

    def hash(self, exclude: tuple[str, ...] = ()) -> str:
        d = self.to_dict()
        for dotted in exclude:
            *path, leaf = dotted.split(".")
            node = d
            for p in path:
                node = node.get(p, {})
            node.pop(leaf, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _unknown(key: str):
    raise KeyError(f"unknown config key {key!r}")


def parse_value(s: str):
    """YAML scalar parsing, so ``3e-4`` is a float (plain YAML 1.1 would read it as a string)."""
    v = yaml.safe_load(s)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (CONFIGS_DIR / p).exists():
        p = CONFIGS_DIR / p  # `--config gpt2-tiny.yaml` finds configs/gpt2-tiny.yaml
    if not p.exists() and (CONFIGS_DIR / f"{path}.yaml").exists():
        p = CONFIGS_DIR / f"{path}.yaml"  # ...and so does `--config gpt2-tiny`
    with open(p) as f:
        return yaml.safe_load(f) or {}


def add_override_arguments(parser, defaults: CfgNode) -> None:
    """One ``--section.key`` option per known key, so argparse itself rejects unknown keys and
    ``--help`` lists them all."""
    group = parser.add_argument_group("config overrides (dotted keys, e.g. --trainer.batch_size=32)")
    for key in defaults.keys():
        group.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar="V",
                           help=f"default: {defaults.get(key)!r}".replace("%", "%%"))


def overrides_from_args(args) -> dict[str, str]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
