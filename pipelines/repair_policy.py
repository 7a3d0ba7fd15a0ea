"""Repair policies as data: conf/repair.yaml (with MHW_REPAIR or ``--policies`` laid over it), loaded
and validated, and a patch applied to a run's config. Pure: no lake, no torch, no clock, so every rule's
plan is tested without training anything (tests/pipelines/test_repair_policy.py).

A policy is an ordered list of patches for one training rule of conf/diagnostics.yaml. A patch names
the checkpoint the child starts from (``resume``) and the config keys it changes (``set``), each value a
literal or a small expression over the parent's config, the alert and the run's healthy peers; the
grammar is documented at the top of conf/repair.yaml. Errors name the file, the rule, the patch and
the key.
"""
from __future__ import annotations

import copy
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.notify import SEVERITIES
from warehouse import config

DEFAULT_POLICIES = config.REPO_ROOT / "conf" / "repair.yaml"
ACTIONS = ("retrain", "mark_best")
RESUMES = ("before_onset", "latest", "scratch")
SECTIONS = ("trainer", "data", "model")  # what a patch may change (telemetry is where a run writes, not what it does)
OPS = ("value", "of", "peers", "fallback", "times", "plus", "at_least", "at_most")
ALERT_FIELDS = ("alert.step_start",)
_KEY = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class PolicyError(ValueError):
    """conf/repair.yaml (or the file laid over it) says something that cannot run, or a patch cannot be
    applied to a run's config."""


@dataclass(frozen=True)
class Patch:
    name: str
    why: str
    action: str = "retrain"
    resume: str = "before_onset"
    set: dict = field(default_factory=dict)  # dotted key -> value spec
    always: bool = False


@dataclass(frozen=True)
class Policies:
    min_severity: str
    max_attempts: int
    budget_runs: float
    margin: float
    clear_severity: str
    min_peers: int
    window_frac: float
    priority: tuple[str, ...]
    rules: dict[str, tuple[Patch, ...]]  # rule -> its patches (rules without a policy are absent)
    path: str

    def primary(self, alerts: list[dict]) -> dict | None:
        """The alert a repair answers among a run's alerts: the first rule in ``priority`` (a rule not
        listed comes after those listed), then the worst severity, then the earliest step."""
        if not alerts:
            return None
        order = {r: i for i, r in enumerate(self.priority)}
        return min(alerts, key=lambda a: (order.get(a["rule"], len(order)), -SEVERITIES.index(a["severity"]),
                                          a.get("step_start") if a.get("step_start") is not None else -1,
                                          a["alert_id"]))


# --- loading --------------------------------------------------------------------------------------

def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read(path: Path) -> dict:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PolicyError(f"{path}: cannot read the repair policies: {e}") from e
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: must be a mapping of settings, got {type(raw).__name__}")
    return raw


def _number(value, where: str, low: float | None = None, high: float | None = None, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{where}: must be a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise PolicyError(f"{where}: must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise PolicyError(f"{where}: must be between {low:g} and {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def _severity(value, where: str) -> str:
    if value not in SEVERITIES:
        raise PolicyError(f"{where}: must be one of {list(SEVERITIES)}, got {value!r}")
    return value


def check_spec(spec, where: str) -> None:
    """A value expression's shape (conf/repair.yaml's grammar); its numbers are checked here, the
    keys it names against the parent's config when it is applied."""
    if not isinstance(spec, dict):
        if isinstance(spec, float) and not math.isfinite(spec):
            raise PolicyError(f"{where}: must be finite, got {spec!r}")
        if spec is not None and not isinstance(spec, (bool, int, float, str)):
            raise PolicyError(f"{where}: must be a number, a string, true/false, null or an expression, got {spec!r}")
        return
    unknown = set(spec) - set(OPS)
    if unknown:
        raise PolicyError(f"{where}: unknown operation(s) {sorted(unknown)} (known: {', '.join(OPS)})")
    bases = [k for k in ("value", "of", "peers") if k in spec]
    if len(bases) > 1:
        raise PolicyError(f"{where}: at most one of value / of / peers, got {bases}")
    if "of" in spec and (not isinstance(spec["of"], str) or not _KEY.match(spec["of"])
                         or (spec["of"].startswith("alert.") and spec["of"] not in ALERT_FIELDS)):
        raise PolicyError(f"{where}.of: must be a dotted config key (trainer.lr) or one of {list(ALERT_FIELDS)}, "
                          f"got {spec['of']!r}")
    if "peers" in spec and spec["peers"] != "median":
        raise PolicyError(f"{where}.peers: must be median, got {spec['peers']!r}")
    if "fallback" in spec:
        if "peers" not in spec:
            raise PolicyError(f"{where}.fallback: only a peers: value has a fallback")
        check_spec(spec["fallback"], f"{where}.fallback")
    for op in ("times", "plus", "at_least", "at_most"):
        if op in spec:
            if isinstance(spec[op], dict):
                check_spec(spec[op], f"{where}.{op}")
            else:
                _number(spec[op], f"{where}.{op}")
    if "value" in spec:
        check_spec(spec["value"], f"{where}.value")


def _patch(raw, where: str) -> Patch:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a mapping (name, why, resume, set), got {raw!r}")
    unknown = set(raw) - {"name", "why", "action", "resume", "set", "always"}
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {sorted(unknown)} (name, why, action, resume, set, always)")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"{where}.name: must be a slug (lowercase letters, digits, - and _), got {name!r}")
    where = f"{where} ({name})"
    why = raw.get("why")
    if not isinstance(why, str) or not why.strip():
        raise PolicyError(f"{where}.why: must be one line saying why this patch fixes this fault")
    action = raw.get("action", "retrain")
    if action not in ACTIONS:
        raise PolicyError(f"{where}.action: must be one of {list(ACTIONS)}, got {action!r}")
    resume = raw.get("resume", "before_onset" if action == "retrain" else None)
    if action == "retrain" and resume not in RESUMES:
        raise PolicyError(f"{where}.resume: must be one of {list(RESUMES)}, got {resume!r}")
    changes = raw.get("set") or {}
    if not isinstance(changes, dict):
        raise PolicyError(f"{where}.set: must be a mapping of dotted config keys to values, got {changes!r}")
    if action == "retrain" and not changes and not raw.get("always"):
        raise PolicyError(f"{where}.set: a retrain patch must change at least one key (or say always: true)")
    if action == "mark_best" and changes:
        raise PolicyError(f"{where}.set: mark_best trains nothing, so it changes no key")
    for key, spec in changes.items():
        if not isinstance(key, str) or not _KEY.match(key) or key.split(".")[0] not in SECTIONS:
            raise PolicyError(f"{where}.set: {key!r} is not a dotted key of {', '.join(SECTIONS)} (e.g. trainer.lr)")
        check_spec(spec, f"{where}.set.{key}")
    return Patch(name=name, why=why.strip(), action=action, resume=resume or "scratch", set=dict(changes),
                 always=bool(raw.get("always", False)))


def load_policies(path: str | os.PathLike | None = None, rules: dict | None = None) -> Policies:
    """conf/repair.yaml with ``path`` (or $MHW_REPAIR) laid over it, validated. ``rules``: the rules of
    sql/diagnostics (name -> scope), default read from there; a policy must name a run rule."""
    if rules is None:
        from pipelines.diagnose import load_rules

        rules = {name: r.scope for name, r in load_rules().items()}
    raw = _read(DEFAULT_POLICIES)
    path = path or os.environ.get("MHW_REPAIR")
    if path and Path(path).resolve() != DEFAULT_POLICIES.resolve():
        raw = _merge(raw, _read(Path(path)))
    where = str(path or DEFAULT_POLICIES)
    known = {"min_severity", "limits", "verdict", "priority", "policies"}
    if set(raw) - known:
        raise PolicyError(f"{where}: unknown setting(s) {sorted(set(raw) - known)} ({', '.join(sorted(known))})")
    limits, verdict = raw.get("limits") or {}, raw.get("verdict") or {}
    for name, section, keys in (("limits", limits, {"max_attempts", "budget_runs"}),
                                ("verdict", verdict, {"margin", "clear_severity", "min_peers", "window_frac"})):
        if not isinstance(section, dict) or set(section) - keys:
            raise PolicyError(f"{where}: {name} takes {sorted(keys)}, got {section!r}")
    run_rules = sorted(r for r, scope in rules.items() if scope == "run")
    priority = raw.get("priority") or []
    if not isinstance(priority, list) or not all(isinstance(r, str) for r in priority):
        raise PolicyError(f"{where}: priority must be a list of rule names, got {priority!r}")
    bad = [r for r in priority if r not in run_rules]
    if bad:
        raise PolicyError(f"{where}: priority: {bad} are not training-run rules of sql/diagnostics ({', '.join(run_rules)})")
    policies = raw.get("policies") or {}
    if not isinstance(policies, dict):
        raise PolicyError(f"{where}: policies must map rule names to lists of patches, got {policies!r}")
    out: dict[str, tuple[Patch, ...]] = {}
    for rule, patches in policies.items():
        at = f"{where}: policies.{rule}"
        if rule not in rules:
            raise PolicyError(f"{at}: no such rule in sql/diagnostics")
        if rules[rule] != "run":
            raise PolicyError(f"{at}: {rule} is a fleet rule; policies repair training runs")
        if patches is None:  # removed by an overlay: the rule escalates
            continue
        if not isinstance(patches, list) or not patches:
            raise PolicyError(f"{at}: must be a non-empty list of patches (or null for none)")
        parsed = tuple(_patch(p, f"{at}[{i}]") for i, p in enumerate(patches))
        names = [p.name for p in parsed]
        if len(set(names)) != len(names):
            raise PolicyError(f"{at}: patch names repeat: {names}")
        out[rule] = parsed
    return Policies(
        min_severity=_severity(raw.get("min_severity", "critical"), f"{where}: min_severity"),
        max_attempts=_number(limits.get("max_attempts", 3), f"{where}: limits.max_attempts", 1, 100, integer=True),
        budget_runs=_number(limits.get("budget_runs", 3.0), f"{where}: limits.budget_runs", 0.0, 1000.0),
        margin=_number(verdict.get("margin", 0.15), f"{where}: verdict.margin", 0.0, 10.0),
        clear_severity=_severity(verdict.get("clear_severity", "warning"), f"{where}: verdict.clear_severity"),
        min_peers=_number(verdict.get("min_peers", 2), f"{where}: verdict.min_peers", 1, 1000, integer=True),
        window_frac=_number(verdict.get("window_frac", 0.1), f"{where}: verdict.window_frac", 0.01, 1.0),
        priority=tuple(priority), rules=out, path=where)


# --- applying a patch -----------------------------------------------------------------------------

def get_key(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def set_key(cfg: dict, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[leaf] = value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Context:
    """What a value expression may read: the child's config as patched so far, the alert, and the
    configs of the run's healthy peers."""
    config: dict
    alert: dict
    peers: list[dict]
    min_peers: int
    notes: list[str] = field(default_factory=list)


def evaluate(spec, key: str, current, ctx: Context, where: str):
    """The value ``spec`` gives the config key ``key``, whose parent value is ``current``."""
    if not isinstance(spec, dict):
        return spec
    if "value" in spec:
        base = evaluate(spec["value"], key, current, ctx, f"{where}.value")
    elif "of" in spec:
        name = spec["of"]
        if name in ALERT_FIELDS:
            base = ctx.alert.get(name.split(".", 1)[1])
            if base is None:
                raise PolicyError(f"{where}: the alert has no {name}")
        else:
            try:
                base = get_key(ctx.config, name)
            except KeyError:
                raise PolicyError(f"{where}.of: {name!r} is not a key of the run's config") from None
    elif "peers" in spec:
        values = [v for v in (_peer_value(p, key) for p in ctx.peers) if _is_number(v)]
        if len(values) >= ctx.min_peers:
            base = statistics.median(values)
            ctx.notes.append(f"{key}: median of {len(values)} healthy peers")
        elif "fallback" in spec:
            return evaluate(spec["fallback"], key, current, ctx, f"{where}.fallback")
        else:
            raise PolicyError(f"{where}: {len(values)} healthy peer(s) with {key}, {ctx.min_peers} needed, and no fallback")
    else:
        base = current
    ops = [op for op in ("times", "plus", "at_least", "at_most") if op in spec]
    if ops and not _is_number(base):
        raise PolicyError(f"{where}: {ops[0]} needs a number, the value is {base!r}")
    value = base
    for op in ops:
        operand = evaluate(spec[op], key, current, ctx, f"{where}.{op}") if isinstance(spec[op], dict) else spec[op]
        if not _is_number(operand):
            raise PolicyError(f"{where}.{op}: needs a number, got {operand!r}")
        value = {"times": lambda v, o: v * o, "plus": lambda v, o: v + o,
                 "at_least": max, "at_most": min}[op](value, operand)
    if isinstance(current, int) and not isinstance(current, bool) and _is_number(value):
        value = int(round(value))  # steps, batch sizes, workers stay whole
    elif ops and isinstance(value, float):
        value = float(f"{value:.12g}")  # 0.3 * 3 is 0.9, not 0.8999999999999999
    return value


def _peer_value(peer: dict, key: str):
    try:
        return get_key(peer, key)
    except KeyError:
        return None


def apply_patch(patch: Patch, parent_config: dict, alert: dict, peers: list[dict], min_peers: int,
                where: str = "") -> tuple[dict, dict[str, list], list[str]]:
    """The child's config: the parent's with ``patch`` applied, key by key in the order written (a
    key may read one set before it). Returns (config, {key: [before, after]} for the keys that
    changed, notes on where values came from)."""
    cfg = copy.deepcopy(parent_config)
    ctx = Context(config=cfg, alert=alert, peers=peers, min_peers=min_peers)
    changes: dict[str, list] = {}
    for key, spec in patch.set.items():
        at = f"{where}{patch.name}.set.{key}"
        try:
            before = get_key(cfg, key)
        except KeyError:
            raise PolicyError(f"{at}: {key!r} is not a key of the run's config") from None
        after = evaluate(spec, key, before, ctx, at)
        if after != before:
            set_key(cfg, key, after)
            changes[key] = [before, after]
    return cfg, changes, ctx.notes
