"""``mhw diagnose``: health diagnostics of training runs and of the serving/training fleet, as alerts.

    mhw diagnose                                  # DuckDB, only what changed since the last diagnose
    mhw diagnose --engine spark --fail-on critical
    mhw diagnose --full --no-notify

Rules are SQL, one file per rule under sql/diagnostics/ (the header declares the rule's scope, the
subject that identifies an alert, its sources and its parameters with their allowed ranges), with
parameters, severity, message and suggested action from conf/diagnostics.yaml. The same SQL runs on
DuckDB or Spark through pipelines.engines. Every rule returns one row per anomaly with the columns of
``CONTRACT``; this module turns rows into alerts:

- a stable ``alert_id``: a hash of the rule and its subject (a run for run rules; model × hardware ×
  the subject columns × the episode's first day for fleet rules), so re-running never duplicates;
- severity (the rule's, one level higher where its SQL escalates), a one-line message, a suggested action;
- the ``alerts`` lake table (pipelines/alerts.py), keeping ``detected_at`` and ``notified_at`` of
  alerts seen before; notifiers (pipelines/notify.py) get only alerts never notified.

One pass over raw rows: the run rules read ``run_steps`` (sql/diagnostics/shared/), every logged step
of the runs in scope with its place among the run's logs, computed once per diagnose and held by the
engine, instead of each reading and sorting raw train_steps; the runs in scope go in batches of whole
models within a budget of train_steps bytes (``run_batches``), so memory follows the budget, not the lake.

Incremental like ``mhw build``, on the same change log (pipelines/changes.py):
``<lake>/_diagnose/manifest.json`` keeps, per lake partition of train_steps, eval_results,
latency_samples and the serving tables, its files (name, size, mtime) and the training runs in each file. Run rules are
recomputed for the runs in new, changed or removed files, over every partition those runs have rows in
(a run's peers are read as they are: a run whose peers change but not its own rows keeps its verdict
until its own rows change or a full diagnose); fleet rules for the
model × hardware pairs with a changed partition, over all of that pair's days (their trailing baselines
need the history), and a rule declared ``fleet by model`` for every pair of those models. A change of
any rule SQL, shared model or of the configuration makes the diagnose full. Airflow calls
``diagnose()``. The lake is one handle (warehouse.writer.Lake), resolved once.

Rules of scope ``live`` (run_hung, run_lost: by the clock, ``now``) and ``hosts`` (straggler_host:
across jobs) are recomputed at every diagnose instead (pipelines/fleet.py).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import operator
import os
import re
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from pipelines import changes, fleet, lakefiles, models, notify, sketch
from pipelines.alerts import alert_key, read_alerts, stored, write_alerts
from pipelines.engines import ENGINES, open_engine
from pipelines.kept import KEPT, Kept, on_grid
from pipelines.models import SQL_DIR
from warehouse import audit, config
from warehouse.schemas import TABLES
from warehouse.sqltext import literal
from warehouse.writer import SLUG, Lake

DIAGNOSTICS_DIR = SQL_DIR / "diagnostics"
SHARED_DIR = DIAGNOSTICS_DIR / "shared"  # what rules read instead of raw rows, computed once per diagnose
DEFAULT_CONFIG = config.REPO_ROOT / "conf" / "diagnostics.yaml"
MANIFEST = "_diagnose/manifest.json"
MANIFEST_VERSION = 2  # 2: the runs of each file (1: of each partition)
SEVERITIES = notify.SEVERITIES
HEADER_KEYS = ("rule", "purpose", "grain", "scope", "subject", "sources", "params", "audits")
SCOPES = ("run", "fleet", *fleet.KINDS)
# tables whose partitions decide what is recomputed, and the column naming a partition's training runs
WATCHED = {"train_steps": "run_id", "eval_results": "train_run_id", "latency_samples": None, "rank_steps": "run_id",
           "serving_scrapes": None, "serving_requests": None}
# views for run rules that compare a run with the other runs of its model: view -> lake table
PEER_TABLES = {"peer_train_steps": "train_steps", "peer_eval_results": "eval_results", "runs": "runs"}
# peer_train_steps is run_steps (the runs in scope, already read) and the raw rows of the other runs
PEER_STEPS = "peer_train_steps"
# shared models whose rows are kept between diagnoses (pipelines/kept.py); each reads its kept rows as
# <name>_kept: underfitting's peers, and the per-run throughput of throughput_regression (whose raw rows
# are <name>_steps)
CELLS, THROUGHPUT = "model_cells", "run_throughput"
# what the engine layer is given besides lake tables
HELPER_TABLES = ("diagnose_runs", "diagnose_pairs", "metric_directions", "latency_slos", "eval_references",
                 "sketch_bounds", "diagnose_clock", "live_processes", "straggler_verdicts")

CONTRACT = pa.schema([
    ("model", pa.string()), ("hardware", pa.string()), ("precision", pa.string()), ("run_id", pa.string()),
    ("suite", pa.string()), ("metric", pa.string()), ("step_start", pa.int64()), ("step_end", pa.int64()),
    ("start_at", pa.timestamp("us", tz="UTC")), ("end_at", pa.timestamp("us", tz="UTC")),
    ("observed", pa.float64()), ("expected", pa.float64()), ("baseline", pa.string()),
    ("n_points", pa.int64()), ("escalate", pa.bool_()),
])
# what a rule may return after the CONTRACT's columns: the host and rank it names (stragglers, hung
# or lost processes); null for the rules that return only the CONTRACT's
NAMED = pa.schema([("host", pa.string()), ("rank", pa.int64())])
NAMING = pa.schema([*CONTRACT, *NAMED])


class ConfigError(ValueError):
    """conf/diagnostics.yaml (or a rule's SQL header) says something that cannot run."""


# --- rules: SQL files and their headers -------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | string | strings | enum
    bounds: tuple[tuple[str, float], ...] = ()  # (operator, value) pairs, e.g. ((">", 0), ("<", 1))
    choices: tuple[str, ...] = ()

    def check(self, value, where: str):
        """The validated value, or ConfigError saying what is wrong with it."""
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: must be a number, got {value!r}")
            if self.kind == "int" and not float(value).is_integer():
                raise ConfigError(f"{where}: must be a whole number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be finite, got {value!r}")
            value = int(value) if self.kind == "int" else float(value)
            for op, bound in self.bounds:
                if not _OPS[op](value, bound):
                    raise ConfigError(f"{where}: must be {op} {bound:g}, got {value!r}")
            return value
        if self.kind == "enum":
            if value not in self.choices:
                raise ConfigError(f"{where}: must be one of {list(self.choices)}, got {value!r}")
            return value
        values = value if self.kind == "strings" else [value]
        if self.kind == "strings" and (not isinstance(value, list) or not value):
            raise ConfigError(f"{where}: must be a non-empty list of names, got {value!r}")
        for v in values:
            if not isinstance(v, str) or not SLUG.match(v):
                raise ConfigError(f"{where}: {v!r} is not a plain name (letters, digits and . _ + -)")
        return list(value) if self.kind == "strings" else value

    def literal(self, value) -> str:
        """The SQL text that replaces ``{{ name }}``: numbers as numbers, names quoted (already
        validated as slugs, so no quote can appear inside)."""
        if self.kind == "int":
            return str(int(value))
        if self.kind == "float":
            return repr(float(value))
        if self.kind == "strings":
            return ", ".join(literal(v) for v in value)
        return literal(value)


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_PARAM = re.compile(r"^([a-z_][a-z0-9_]*)\s+(int|float|strings|string|enum\(([^)]*)\))\s*(.*)$")
_BOUND = re.compile(r"(>=|<=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)")


def parse_params(spec: str) -> dict[str, Param]:
    """``block_steps int >= 2; max_drop float > 0 < 1; suites strings; baseline enum(a|b)``."""
    params: dict[str, Param] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part or part.lower() in ("none", "-"):
            continue
        m = _PARAM.match(part)
        if not m:
            raise ConfigError(f"params: cannot read {part!r} (name type [op value]...)")
        name, kind, choices, rest = m.group(1), m.group(2), m.group(3), m.group(4)
        bounds = tuple((op, float(v)) for op, v in _BOUND.findall(rest))
        if kind.startswith("enum"):
            params[name] = Param(name, "enum", choices=tuple(c.strip() for c in choices.split("|")))
        else:
            params[name] = Param(name, kind, bounds)
    return params


@dataclass(frozen=True)
class Rule:
    name: str
    path: Path
    sql: str
    header: dict[str, str]
    scope: str
    subject: tuple[str, ...]
    sources: tuple[str, ...]
    params: dict[str, Param]
    by_model: bool = False  # a fleet rule whose pairs read the other hardware of their model (``fleet by model``)


def parse_header(text: str) -> dict[str, str]:
    return models.parse_header(text, HEADER_KEYS)


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split("(")[0].split(",") if v.strip())


def load_rule(path: Path) -> Rule:
    text = path.read_text()
    header = parse_header(text)
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ConfigError(f"{path}: header lacks {missing}")
    if header["rule"] != path.stem:
        raise ConfigError(f"{path}: header names rule {header['rule']!r}, file is {path.stem!r}")
    scope, *rest = header["scope"].split("(")[0].split()
    if scope not in SCOPES or rest not in ([], ["by", "model"]) or (rest and scope != "fleet"):
        raise ConfigError(f"{path}: scope must be one of {SCOPES} (or fleet by model), got {header['scope']!r}")
    params = parse_params(header["params"])
    used = set(re.findall(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}", text))
    if used != set(params):
        raise ConfigError(f"{path}: placeholders {sorted(used)} and declared params {sorted(params)} differ")
    subject = _names(header["subject"])
    unknown = set(subject) - set(NAMING.names)
    if unknown:
        raise ConfigError(f"{path}: subject columns {sorted(unknown)} are not output columns")
    return Rule(name=path.stem, path=path, sql=text, header=header, scope=scope, subject=subject,
                sources=_names(header["sources"]), params=params, by_model=bool(rest))


def load_rules(sql_dir: Path = DIAGNOSTICS_DIR) -> dict[str, Rule]:
    return {r.name: r for r in (load_rule(p) for p in sorted(Path(sql_dir).glob("*.sql")))}


def load_shared(sql_dir: Path = SHARED_DIR) -> dict[str, models.Model]:
    """The shared models rules read (sql/diagnostics/shared): each computed once per diagnose, for the
    runs in scope, before the rules that read it."""
    return {m.name: m for m in (models.load_model(p) for p in sorted(Path(sql_dir).glob("*.sql")))}


def render(rule: Rule, values: dict) -> str:
    """The rule's SQL with every ``{{ name }}`` replaced by its validated literal."""
    return re.sub(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}",
                  lambda m: rule.params[m.group(1)].literal(values[m.group(1)]), rule.sql)


# --- configuration ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleConfig:
    name: str
    enabled: bool
    severity: str
    params: dict
    message: str
    action: str


@dataclass
class DiagnosticsConfig:
    rules: dict[str, RuleConfig]
    notify: list[dict]
    fail_on: str | None
    metric_directions: pa.Table
    latency_slos: pa.Table
    eval_references: pa.Table
    raw: dict
    path: str


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _check_template(text, where: str, fields: set[str]) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: must be a non-empty line of text")
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name.split(".")[0].split("[")[0] not in fields:
            raise ConfigError(f"{where}: unknown field {{{name}}} (known: {', '.join(sorted(fields))})")
    return text


TEMPLATE_FIELDS = set(CONTRACT.names) | set(NAMED.names) | {"start_date", "end_date", "drop_pct", "rule", "severity"}


def load_config(path: str | os.PathLike | None = None, rules: dict[str, Rule] | None = None) -> DiagnosticsConfig:
    """conf/diagnostics.yaml, with ``path`` (or $MHW_DIAGNOSTICS) laid over it, validated against the
    rules' SQL headers: every parameter a rule's SQL uses has a value of the declared type and range."""
    rules = load_rules() if rules is None else rules
    with open(DEFAULT_CONFIG) as f:
        raw = yaml.safe_load(f) or {}
    path = path or os.environ.get("MHW_DIAGNOSTICS")
    if path and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        try:
            with open(path) as f:
                over = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the diagnostics config: {e}") from e
        if not isinstance(over, dict):
            raise ConfigError(f"{path}: must be a mapping of settings, got {type(over).__name__}")
        raw = _merge(raw, over)
    where = str(path or DEFAULT_CONFIG)
    unknown_rules = set(raw.get("rules") or {}) - set(rules)
    if unknown_rules:
        raise ConfigError(f"{where}: rules {sorted(unknown_rules)} have no SQL in {DIAGNOSTICS_DIR}")
    block = Param("block_steps", "int", ((">=", 2),)).check(raw.get("block_steps", 50), f"{where}: block_steps")
    configured: dict[str, RuleConfig] = {}
    for name, rule in rules.items():
        rc = (raw.get("rules") or {}).get(name)
        if rc is None:
            raise ConfigError(f"{where}: rules.{name} is missing (its SQL is {rule.path.name})")
        at = f"{where}: rules.{name}"
        given = dict(rc.get("params") or {})
        if "block_steps" in rule.params:
            given.setdefault("block_steps", block)
        extra = set(given) - set(rule.params)
        if extra:
            raise ConfigError(f"{at}.params: {sorted(extra)} are not parameters of {rule.path.name} "
                              f"(it takes {sorted(rule.params)})")
        missing = set(rule.params) - set(given)
        if missing:
            raise ConfigError(f"{at}.params: {sorted(missing)} have no value")
        params = {k: p.check(given[k], f"{at}.params.{k}") for k, p in rule.params.items()}
        severity = rc.get("severity", "warning")
        if severity not in SEVERITIES:
            raise ConfigError(f"{at}.severity: must be one of {SEVERITIES}, got {severity!r}")
        fields = TEMPLATE_FIELDS | set(params)
        configured[name] = RuleConfig(
            name=name, enabled=bool(rc.get("enabled", True)), severity=severity, params=params,
            message=_check_template(rc.get("message"), f"{at}.message", fields),
            action=_check_template(rc.get("action"), f"{at}.action", fields))
    fail_on = raw.get("fail_on")
    if fail_on is not None and fail_on not in SEVERITIES:
        raise ConfigError(f"{where}: fail_on must be null or one of {SEVERITIES}, got {fail_on!r}")
    return DiagnosticsConfig(
        rules=configured, notify=list(raw.get("notify") or []), fail_on=fail_on,
        metric_directions=_directions(raw.get("metric_directions") or {}, where),
        latency_slos=_slos(raw.get("latency_slos") or [], where),
        eval_references=_references(raw.get("eval_references") or [], where), raw=raw, path=where)


def _directions(spec: dict, where: str) -> pa.Table:
    rows = {}
    for key, sign in (("higher_is_better", 1), ("lower_is_better", -1)):
        for m in spec.get(key) or []:
            Param("metric", "string").check(m, f"{where}: metric_directions.{key}")
            if rows.get(m, sign) != sign:
                raise ConfigError(f"{where}: metric_directions: {m!r} is both higher and lower is better")
            rows[m] = sign
    return pa.table({"metric": pa.array(list(rows), pa.string()), "direction": pa.array(list(rows.values()), pa.int32())})


def _pattern(v, where: str) -> str:
    v = "*" if v is None else v
    return v if v == "*" else Param("name", "string").check(v, where)


def _slos(items: list, where: str) -> pa.Table:
    cols = {k: [] for k in ("model", "hardware", "precision", "metric", "slo_ms")}
    for i, s in enumerate(items):
        at = f"{where}: latency_slos[{i}]"
        for k in ("model", "hardware", "precision"):
            cols[k].append(_pattern(s.get(k), f"{at}.{k}"))
        metric = s.get("metric")
        if metric not in ("p95_ms", "p99_ms"):
            raise ConfigError(f"{at}.metric: must be p95_ms or p99_ms, got {metric!r}")
        cols["metric"].append(metric)
        cols["slo_ms"].append(Param("slo_ms", "float", ((">", 0),)).check(s.get("slo_ms"), f"{at}.slo_ms"))
    return pa.table({k: pa.array(v, pa.float64() if k == "slo_ms" else pa.string()) for k, v in cols.items()})


def _references(items: list, where: str) -> pa.Table:
    cols = {k: [] for k in ("model", "hardware", "precision", "suite", "metric", "value")}
    for i, r in enumerate(items):
        at = f"{where}: eval_references[{i}]"
        for k in ("model", "suite", "metric"):
            cols[k].append(Param(k, "string").check(r.get(k), f"{at}.{k}"))
        for k in ("hardware", "precision"):
            cols[k].append(_pattern(r.get(k), f"{at}.{k}"))
        cols["value"].append(Param("value", "float").check(r.get("value"), f"{at}.value"))
    return pa.table({k: pa.array(v, pa.float64() if k == "value" else pa.string()) for k, v in cols.items()})


def definition_hash(rules: dict[str, Rule], cfg: DiagnosticsConfig) -> str:
    """Changes whenever a rule's SQL, parameters, severity or texts, or the shared tables change."""
    h = hashlib.sha256()
    for name in sorted(rules):
        rc = cfg.rules[name]
        h.update(json.dumps([name, rules[name].sql, rc.enabled, rc.severity, rc.params, rc.message, rc.action],
                            sort_keys=True).encode())
    for t in (cfg.metric_directions, cfg.latency_slos, cfg.eval_references):
        h.update(json.dumps(t.to_pylist(), sort_keys=True).encode())
    for name, m in sorted(load_shared().items()):
        h.update(json.dumps([name, m.sql]).encode())
    h.update(f"sketch:{sketch.GROWTH}:{sketch.B_MIN}:{sketch.B_MAX}".encode())
    return h.hexdigest()[:16]


# --- scope: what changed since the last diagnose ----------------------------------------------------

@dataclass
class Scope:
    full: bool
    runs: set[str]
    pairs: set[tuple[str, str]]
    run_files: dict[str, list[str]]  # table -> files holding rows of the runs in scope
    pair_files: dict[str, list[str]]  # table -> files of the pairs in scope
    manifest: dict  # to save once the alerts are written
    peer_files: dict[str, list[str]] = field(default_factory=dict)  # PEER_TABLES -> files of the runs' models
    step_files: dict[str, tuple[str, int, list[str]]] = field(default_factory=dict)  # train_steps file -> model, bytes, runs
    model_pairs: set[tuple[str, str]] = field(default_factory=set)  # every pair of a model with a pair in scope
    model_pair_files: dict[str, list[str]] = field(default_factory=dict)  # table -> files of those pairs
    data_root: str = ""  # where the listed files lie: the lake's snapshot (``<data_root>/<table>/…``)
    kept: dict[str, Kept] = field(default_factory=dict)  # KEPT's name -> rows kept between diagnoses


def _run_ids(fs, files: list[str], column: str) -> dict[str, list[str]]:
    """The training runs in each of ``files`` (path -> sorted run ids): the column read dictionary-encoded,
    so a file's runs are its dictionary, never a string per row."""
    out = {}
    for path in files:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f, read_dictionary=[column])
            if column not in pf.schema_arrow.names:
                out[path] = []
                continue
            col = pf.read(columns=[column]).column(column)
        ids = set()
        for chunk in col.chunks:
            # the values the chunk's indices use (a dictionary may hold more than its chunk's rows)
            values = chunk.dictionary.take(pc.unique(chunk.indices)) if pa.types.is_dictionary(chunk.type) \
                else pc.unique(chunk)
            ids.update(v for v in values.to_pylist() if v is not None)
        out[path] = sorted(ids)
    return out


def find_scope(lake: Lake | str, definition: str, full: bool, data_root: str | None = None) -> Scope:
    """What changed since the last diagnose (pipelines/changes.py); the files are listed under
    ``data_root`` (a snapshot of the lake, ``Lake.snapshot``; default the lake itself)."""
    lake = Lake.of(lake)
    old = lakefiles.read_json(lake.fs, f"{lake.root}/{MANIFEST}") or {}
    root = data_root or lake.root
    full = bool(full or old.get("definition") != definition or old.get("version") != MANIFEST_VERSION)
    old_sources = {} if full else old.get("sources", {})
    listing = changes.Listing(lake, root, [*WATCHED, *PEER_TABLES.values()])
    listings = listing.partitions
    sources, runs, pairs = {}, set(), set()
    for table, column in WATCHED.items():
        cols = TABLES[table].partition_by
        table_dir = listing.table_dir(table)
        before = old_sources.get(table, {})
        changed = listing.changed_files(table, {kd: v["files"] for kd, v in before.items()})
        # the run ids of new and changed files only (one read); a changed partition's other files keep theirs
        fresh = _run_ids(lake.fs, [f.path for new, _ in changed.values() for f in new], column) if column else {}
        now: dict[str, dict] = {}  # partition -> its files, and the training runs in each file
        for key, files in listings[table].items():
            kd = lakefiles.key_dir(cols, key)
            if key not in changed:
                now[kd] = before[kd]
                continue
            kept = before.get(kd, {}).get("runs", {})
            now[kd] = {"files": listing.record(table)[kd],
                       "runs": {rel: fresh[f.path] if f.path in fresh else kept.get(rel, [])
                                for f in files for rel in [f.path[len(table_dir):].lstrip("/")]}}
        for key, (new, gone) in changed.items():  # what is new, changed or gone is recomputed
            kd = lakefiles.key_dir(cols, key)
            pairs.add(key[:2])
            runs.update(*(fresh.get(f.path, []) for f in new), *(before.get(kd, {}).get("runs", {}).get(rel, [])
                                                               for rel in gone))
        sources[table] = now

    def runs_in(table: str, key) -> set[str]:
        return {r for ids in sources[table][lakefiles.key_dir(TABLES[table].partition_by, key)]["runs"].values()
                for r in ids}

    run_files = {table: sorted(f.path for key, files in listings[table].items()
                               if column and runs.intersection(runs_in(table, key)) for f in files)
                 for table, column in WATCHED.items()}
    pair_files = {table: sorted(f.path for key, files in listings[table].items() if key[:2] in pairs for f in files)
                  for table in WATCHED}
    # Fleet rules by model (throughput_regression) compare a pair with its model on other hardware: every
    # pair of a model with a changed pair is recomputed, over all of their files.
    changed_models = {p[0] for p in pairs}
    model_pairs = {key[:2] for table in WATCHED for key in listings[table] if key[0] in changed_models}
    model_pair_files = {table: sorted(f.path for key, files in listings[table].items() if key[:2] in model_pairs
                                      for f in files) for table in WATCHED}
    # Run rules that compare a run with its peers (underfitting) read every run of the same models,
    # on any hardware and day: the train_steps and runs partitions of those models.
    models = {key[0] for key in listings["train_steps"] if runs.intersection(runs_in("train_steps", key))}
    peer_files = {
        view: sorted(f.path for key, files in listings[table].items() if key[0] in models
                     # the rows of runs in scope are read once, into run_steps: only partitions with other runs
                     if view != PEER_STEPS or not runs.issuperset(runs_in(table, key))
                     for f in files)
        for view, table in PEER_TABLES.items()}
    steps_dir = listing.table_dir("train_steps")
    step_files = {f.path: (key[0], f.size, sources["train_steps"][lakefiles.key_dir(TABLES["train_steps"].partition_by, key)]
                           ["runs"].get(f.path[len(steps_dir):].lstrip("/"), []))
                  for key, files in listings["train_steps"].items() for f in files}
    return Scope(full=full, runs=runs, pairs=pairs, run_files=run_files, pair_files=pair_files, step_files=step_files,
                 peer_files=peer_files, manifest={"version": MANIFEST_VERSION, "definition": definition, "sources": sources},
                 model_pairs=model_pairs | pairs, model_pair_files=model_pair_files,
                 data_root=root, kept={name: Kept(lake, name, {} if full else old.get("kept", {}).get(name))
                                       for name in KEPT})


# --- running the rules ------------------------------------------------------------------------------

# Parquet bytes of train_steps per batch of the run rules: ~5 M rows of a simulated fleet, which the
# engine holds as ~1.5 GB (run_steps); a 40 M-row lake in one batch took 20 GB (bench/RESULTS.md)
BATCH_BYTES = 320 << 20
# the raw train_steps columns run_steps carries (peer_train_steps has them)
_SHARED_STEP_COLUMNS = ("model", "hardware", "precision", "run_id", "step", "ts", "loss", "lr", "grad_norm",
                        "tokens_per_s", "step_time_ms", "data_time_ms", "gpu_util", "gpu_mem_gb", "gpu_mem_total_gb")

def _pairs_table(pairs) -> pa.Table:
    pairs = sorted(pairs)
    return pa.table({"model": pa.array([p[0] for p in pairs], pa.string()),
                     "hardware": pa.array([p[1] for p in pairs], pa.string())})


def _runs_table(runs) -> pa.Table:
    return pa.table({"run_id": pa.array(sorted(runs), pa.string())})


def _helper_tables(scope: Scope, cfg: DiagnosticsConfig) -> dict[str, pa.Table]:
    return {
        "diagnose_runs": _runs_table(scope.runs),
        "diagnose_pairs": _pairs_table(scope.pairs),
        "metric_directions": cfg.metric_directions,
        "latency_slos": cfg.latency_slos,
        "eval_references": cfg.eval_references,
        "sketch_bounds": sketch.bounds_table(),
    }


def run_batches(scope: Scope, budget: int = BATCH_BYTES) -> list[set[str]]:
    """The runs in scope in batches for the run rules: whole models together (a model's runs are each
    other's peers, read once), each batch's train_steps files within ``budget`` bytes where a model
    allows; a model over it is cut by run (its other runs are then read raw as peers). The engine holds
    one batch's steps at a time: memory follows the budget, not the lake."""
    weight: dict[str, float] = {}
    model_of: dict[str, str] = {}
    for model, size, runs in scope.step_files.values():
        for r in runs:
            if r in scope.runs:
                weight[r] = weight.get(r, 0.0) + size / len(runs)  # a file's bytes shared by its runs
                model_of.setdefault(r, model)
    by_model: dict[str, list[str]] = {}
    for r in sorted(weight):
        by_model.setdefault(model_of[r], []).append(r)
    batches: list[set[str]] = []
    current, used = set(scope.runs) - set(weight), 0.0  # runs with evals only ride with the first batch
    for model in sorted(by_model, key=lambda m: (-sum(weight[r] for r in by_model[m]), m)):
        if current and used + sum(weight[r] for r in by_model[model]) > budget:  # no room for the model
            batches.append(current)
            current, used = set(), 0.0
        for r in by_model[model]:
            if used > 0 and used + weight[r] > budget:  # a model over the budget alone is cut by run
                batches.append(current)
                current, used = set(), 0.0
            current.add(r)
            used += weight[r]
    if current or not batches:
        batches.append(current)
    return batches


def run_rules(eng, lake: Lake | str, rules: dict[str, Rule], cfg: DiagnosticsConfig, scope: Scope,
              log=None, budget: int | None = None) -> tuple[dict[str, pa.Table], dict[str, float]]:
    """Each enabled rule's rows (CONTRACT columns) on ``eng``, and seconds per rule (and per shared
    model). Run rules run per batch of runs (``run_batches``, within ``budget`` bytes of train_steps)."""
    say = log or (lambda *_: None)
    root = scope.data_root or Lake.of(lake).root
    for name, table in _helper_tables(scope, cfg).items():
        eng.register_arrow(name, table)
    parts: dict[str, list[pa.Table]] = {}
    seconds: dict[str, float] = {}

    def run(rule: Rule) -> None:
        t = time.perf_counter()
        result = eng.query(render(rule, cfg.rules[rule.name].params))
        parts.setdefault(rule.name, []).append(named(rule, result))
        seconds[rule.name] = seconds.get(rule.name, 0.0) + time.perf_counter() - t

    def register(table: str, files: list[str], name: str | None = None) -> None:
        eng.register_files(name or table, files, TABLES[table].schema, TABLES[table].partition_by, f"{root}/{table}")

    shared_models = load_shared()
    chosen = [r for r in rules.values() if r.scope == "run" and cfg.rules[r.name].enabled]
    if chosen and scope.runs:
        shared = [(n, m) for n, m in shared_models.items() if any(n in r.sources for r in chosen)]
        batches = run_batches(scope, budget or BATCH_BYTES)
        for i, batch in enumerate(batches):
            _run_batch(scope, batch, register, eng, shared, seconds)
            for rule in chosen:
                run(rule)
            say(f"run rules: batch {i + 1} of {len(batches)}, {len(batch)} run(s)")
        eng.register_arrow("diagnose_runs", _runs_table(scope.runs))
    for by_model, files in ((False, scope.pair_files), (True, scope.model_pair_files)):
        chosen = [r for r in rules.values() if r.scope == "fleet" and r.by_model == by_model and cfg.rules[r.name].enabled]
        if not chosen or not scope.pairs:
            continue
        eng.register_arrow("diagnose_pairs", _pairs_table(scope.model_pairs if by_model else scope.pairs))
        for table in WATCHED:
            if any(table in r.sources for r in chosen):  # (thousands of files: registering them costs)
                register(table, files[table])
        if any(THROUGHPUT in r.sources for r in chosen):  # per run, kept between diagnoses
            steps, found = _throughput_inputs(scope)
            register("train_steps", steps, f"{THROUGHPUT}_steps")
            _materialize_kept(eng, scope.kept[THROUGHPUT], found, shared_models[THROUGHPUT].sql,
                              {m for m, _ in scope.model_pairs}, seconds)
        for rule in chosen:
            run(rule)
    out = {name: pa.concat_tables(tables) for name, tables in parts.items()}
    for name, table in out.items():
        say(f"{name}: {table.num_rows} alert(s) ({seconds[name]:.2f}s)")
    for rows in scope.kept.values():
        if rows.said():
            say(rows.said())
    return out, seconds


def _run_batch(scope: Scope, batch: set[str], register, eng, shared, seconds: dict[str, float]) -> None:
    """Views of one batch of runs: their rows (train_steps, eval_results), the peer tables of their models,
    and the shared models computed over them."""
    eng.register_arrow("diagnose_runs", _runs_table(batch))
    steps = [p for p, (_, _, runs) in scope.step_files.items() if batch.intersection(runs)]
    # the batch's steps; of the other watched tables the files of every run in scope (small, and the
    # rules keep only the rows of diagnose_runs)
    for table in WATCHED:
        register(table, steps if table == "train_steps" else scope.run_files[table])
    models = {scope.step_files[p][0] for p in steps}
    for view, table in PEER_TABLES.items():
        if view != PEER_STEPS:
            register(table, scope.peer_files.get(view, []), view)
    # one pass over raw rows, for every rule; then the peers, which read it
    for name, m in shared:
        if name != CELLS:
            _materialize(eng, name, m.sql, seconds)
    cells_model = dict(shared).get(CELLS)
    raw, cells = _kept_cells(scope, batch, models, eng) if cells_model else (models, [])
    # the other runs of the models without kept cells, raw: the batch's own are in run_steps
    register("train_steps", [p for p, (model, _, runs) in scope.step_files.items()
                             if model in raw and not batch.issuperset(runs)], f"__{PEER_STEPS}_others")
    cols = ", ".join(_SHARED_STEP_COLUMNS)
    eng.register_view(PEER_STEPS, f"select {cols} from run_steps union all select {cols} "
                                  f"from __{PEER_STEPS}_others where run_id not in (select run_id from diagnose_runs)")
    if cells_model:
        _materialize_kept(eng, scope.kept[CELLS], cells, cells_model.sql, models, seconds)


def _materialize(eng, name: str, sql: str, seconds: dict[str, float]) -> None:
    t = time.perf_counter()
    eng.materialize(name, sql)
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t


def _materialize_kept(eng, rows: Kept, found: list[pa.Table], sql: str, models: set[str],
                      seconds: dict[str, float]) -> None:
    """A shared model whose rows are kept (pipelines/kept.py): its kept rows (``found``) registered as
    ``<name>_kept``, the model computed over them and the rows read raw, and its rows for ``models``
    taken back to keep."""
    eng.register_arrow(f"{rows.name}_kept", pa.concat_tables(found) if found else rows.empty())
    _materialize(eng, rows.name, sql, seconds)
    got = eng.query(f"select * from {rows.name}").cast(rows.schema)
    for model in models:
        rows.update(model, got.filter(pc.equal(got["model"], model)))


def _kept_cells(scope: Scope, batch: set[str], models: set[str], eng) -> tuple[set[str], list[pa.Table]]:
    """(the batch's models whose other runs are read raw, the kept cells of the others'): kept where
    pipelines/kept.py says they hold (every other run out of scope and kept, on the same grid)."""
    cells = scope.kept[CELLS]
    if not cells.tokens:
        cells.read_models |= models
        return set(models), []
    last = {r["model"]: r["last"] for r in eng.query(
        "select model, max(last_loss_step) as last from run_steps group by model").to_pylist()}
    raw, found = set(), []
    runs_of = _runs_of(scope, models)
    for model in sorted(models):
        others = runs_of[model] - batch
        table = None if others & scope.runs else cells.runs(model, others)
        if table is None or not on_grid(table, last.get(model)):
            raw.add(model)
        else:
            found.append(table)
    cells.read_models |= raw
    cells.kept_models |= set(models) - raw
    return raw, found


def _runs_of(scope: Scope, models: set[str]) -> dict[str, set[str]]:
    """The training runs of each of ``models`` with rows in train_steps (the manifest's runs per file)."""
    out: dict[str, set[str]] = {m: set() for m in models}
    for model, _, runs in scope.step_files.values():
        if model in out:
            out[model].update(runs)
    return out


def _throughput_inputs(scope: Scope) -> tuple[list[str], list[pa.Table]]:
    """(train_steps files to read, kept rows) for ``run_throughput`` over the models of the pairs in
    scope: a model's runs out of scope come from their kept rows where all of them have some, and only
    the files of its runs in scope are read (with every file of each run those files hold: a run is
    summarized from all of its rows or not at all); every file of the model otherwise."""
    rows = scope.kept[THROUGHPUT]
    models = {m for m, _ in scope.model_pairs}
    runs_of = _runs_of(scope, models)
    files_of: dict[str, list[str]] = {}
    for path, (model, _, runs) in scope.step_files.items():
        if model in models:
            for r in runs:
                files_of.setdefault(r, []).append(path)
    read, found = [], []
    for model in sorted(models):
        fresh, todo, files = set(), set(runs_of[model] & scope.runs), set()
        while todo:  # the runs in scope, and every run sharing a file with one
            r = todo.pop()
            fresh.add(r)
            for path in files_of.get(r, []):
                if path not in files:
                    files.add(path)
                    todo.update(set(scope.step_files[path][2]) - fresh)
        table = rows.runs(model, runs_of[model] - fresh) if rows.tokens else None
        if table is None:
            rows.read_models.add(model)
            read += [p for p, (m, _, _) in scope.step_files.items() if m == model]
        else:
            rows.kept_models.add(model)
            read += sorted(files)
            found.append(table)
    return sorted(set(read)), found


def named(rule: Rule, result: pa.Table) -> pa.Table:
    """A rule's rows with the CONTRACT's columns and NAMED's (null where the rule names no host or rank)."""
    if result.column_names == CONTRACT.names:
        result = result.cast(CONTRACT)
        for f in NAMED:
            result = result.append_column(f, pa.nulls(result.num_rows, f.type))
        return result
    if result.column_names != NAMING.names:
        raise RuntimeError(f"{rule.path}: returns {result.column_names}, expected {CONTRACT.names} "
                           f"(and optionally {NAMED.names})")
    return result.cast(NAMING)


class _Fields(string.Formatter):
    """str.format for message templates: None prints as n/a, a spec that does not fit the value
    (a number format on a string) falls back to str()."""

    def format_field(self, value, format_spec):
        if value is None:
            return "n/a"
        try:
            return format(value, format_spec)
        except (TypeError, ValueError):
            return str(value)


def alert_id(rule: Rule, row: dict) -> str:
    parts = [rule.name, row["model"], row["hardware"], *[str(row[c]) for c in rule.subject]]
    if rule.scope == "fleet":  # one alert per episode: its first day is part of the subject
        parts.append(row["start_at"].date().isoformat())
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def escalated(severity: str) -> str:
    """One level up (info -> warning -> critical): a rule escalates the alerts whose impact its SQL
    measured (a loss spike the run did not recover from, a regression past its critical_* bound)."""
    return SEVERITIES[min(SEVERITIES.index(severity) + 1, len(SEVERITIES) - 1)]


def to_alerts(rule: Rule, rc: RuleConfig, result: pa.Table) -> list[dict]:
    fmt = _Fields()
    alerts = []
    for row in result.to_pylist():
        severity = escalated(rc.severity) if row["escalate"] else rc.severity
        obs, exp = row["observed"], row["expected"]
        drop = (abs(obs - exp) / abs(exp) * 100 if obs is not None and exp not in (None, 0)
                and math.isfinite(obs) and math.isfinite(exp) else None)
        fields = {**rc.params, **row, "rule": rule.name, "severity": severity, "drop_pct": drop,
                  "start_date": row["start_at"].date().isoformat() if row["start_at"] else None,
                  "end_date": row["end_at"].date().isoformat() if row["end_at"] else None}
        alerts.append({
            "alert_id": alert_id(rule, row), "rule": rule.name, "severity": severity, "scope": rule.scope,
            **{c: row[c] for c in ("run_id", "precision", "suite", "metric", "step_start", "step_end",
                                   "start_at", "end_at", "observed", "expected", "baseline", "n_points")},
            **{c: row.get(c) for c in NAMED.names},
            "message": fmt.format(rc.message, **fields), "action": fmt.format(rc.action, **fields),
            "detected_at": None, "notified_at": None, "model": row["model"], "hardware": row["hardware"],
            "date": row["start_at"].date() if row["start_at"] else None,
        })
    return alerts


# --- the job ----------------------------------------------------------------------------------------

def at_or_above(alerts: list[dict], level: str | None) -> list[dict]:
    """The alerts at or above ``level`` (None: none), worst first. Given the alerts table, these are
    all still open: the table keeps only the alerts the latest computation of each subject (run, or
    model × hardware pair) still produces, so one goes once its cause is gone."""
    if level is None:
        return []
    chosen = [a for a in alerts if notify.rank(a["severity"]) >= notify.rank(level)]
    return sorted(chosen, key=lambda a: (-notify.rank(a["severity"]), a["start_at"], a["alert_id"]))


def describe(alerts: list[dict], limit: int = 10) -> str:
    """``<id> <rule> <run or model/hardware>`` of each alert, for a failure message."""
    parts = [f"{a['alert_id']} {a['rule']} {a.get('run_id') or a['model'] + '/' + a['hardware']}"
             for a in alerts[:limit]]
    return "; ".join(parts) + (f"; … and {len(alerts) - limit} more" if len(alerts) > limit else "")


@dataclass
class DiagnoseResult:
    engine: str
    full: bool
    runs_in_scope: int
    pairs_in_scope: int
    alerts: list[dict] = field(default_factory=list)  # computed this run (new or seen before)
    new: list[dict] = field(default_factory=list)  # of those, the ones never seen before
    notified: int = 0  # alerts handed to the notifiers this run
    notify_errors: list[str] = field(default_factory=list)
    total: int = 0  # alerts in the table afterwards
    current: list[dict] = field(default_factory=list)  # those alerts: every one still open
    marked_lost: list[str] = field(default_factory=list)  # runs rows this run marked lost (run_lost)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def by_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.alerts:
            out[a["rule"]] = out.get(a["rule"], 0) + 1
        return dict(sorted(out.items()))

    def worst(self) -> str | None:
        """The highest severity of the open alerts (this run's and those kept from earlier runs)."""
        return max((a["severity"] for a in self.current), key=notify.rank, default=None)

    def failing(self, level: str | None) -> list[dict]:
        """The open alerts at or above ``level``, found by this run or kept from an earlier one: a re-run
        that recomputes nothing (an Airflow retry) fails as long as the alert is open."""
        return at_or_above(self.current, level)

    def fails(self, level: str | None) -> bool:
        """True while an alert at or above ``level`` is open (None: never)."""
        return bool(self.failing(level))


def _counts(r: DiagnoseResult) -> dict:
    return {"alerts_new": len(r.new), "alerts": len(r.alerts), "notified": r.notified, "alerts_total": r.total,
            "runs_in_scope": r.runs_in_scope, "pairs_in_scope": r.pairs_in_scope, "full": r.full}


@audit.audited("diagnose", counts=_counts)
def diagnose(lake_root: Lake | str | None = None, engine="duckdb", *, config_path: str | None = None,
             full: bool = False, notify_alerts: bool = True, master: str | None = None,
             conf: dict[str, str] | None = None, notifiers: list | None = None,
             now: dt.datetime | None = None, log=None) -> DiagnoseResult:
    """Compute the alerts of what changed in the lake since the last diagnose, store them, notify the
    new ones. Returns what was found; ``result.fails("critical")`` tells a caller to fail.

    ``engine``: "duckdb", "spark", or an engine already open (pipelines.engines; left open)."""
    say = log or (lambda *_: None)
    t0 = time.perf_counter()
    if now is None:  # to the millisecond (whole seconds put the clock up to a second behind: with
        # heartbeats every second, run_lost and run_hung judged a second late)
        now = dt.datetime.now(dt.timezone.utc)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    rules = load_rules()
    cfg = load_config(config_path, rules)
    lake = Lake.of(lake_root or config.load().lake_root)  # the one handle, passed everywhere from here
    # The rules read a snapshot (hard links taken under the lake lock): an ingest committing while
    # they run cannot take files from them.
    reading = contextlib.ExitStack()
    try:
        data_root = reading.enter_context(lake.snapshot(sorted({*WATCHED, *PEER_TABLES.values(), *fleet.TABLES_READ})))
        return _diagnose(lake, rules, cfg, data_root, engine, full, notify_alerts, master, conf,
                         notifiers, now, say, t0, reading)
    finally:
        reading.close()


def _diagnose(lake, rules, cfg, data_root, engine, full, notify_alerts, master, conf, notifiers, now,
              say, t0, reading) -> DiagnoseResult:
    scope = find_scope(lake, definition_hash(rules, cfg), full, data_root)
    result = DiagnoseResult(engine=getattr(engine, "name", engine), full=scope.full, runs_in_scope=len(scope.runs),
                            pairs_in_scope=len(scope.pairs))
    result.seconds["scope"] = time.perf_counter() - t0
    say(f"scope: {'full' if scope.full else 'incremental'}, {len(scope.runs)} run(s), "
        f"{len(scope.pairs)} model x hardware pair(s)")

    rows: dict[str, pa.Table] = {}
    live = fleet.find_scope(lake, data_root, rules, cfg, now)
    if scope.runs or scope.pairs or live.files:
        own = isinstance(engine, str)
        eng = open_engine(engine, master=master, conf=conf, filesystem=lake.engine_filesystem) \
            if own else engine
        try:
            rows, per_rule = run_rules(eng, lake, rules, cfg, scope, log=say)
            # live and hosts rules: by the clock, and across jobs (the straggler verdicts just computed)
            verdicts = fleet.verdicts(rows.get(fleet.VERDICT_RULE), read_alerts(lake, {fleet.VERDICT_RULE}),
                                      scope.runs, scope.full)
            more, more_s = fleet.run_rules(eng, rules, cfg, live, data_root, verdicts, render, log=say)
            rows.update({k: named(rules[k], v) for k, v in more.items()})
            per_rule.update(more_s)
        finally:
            if own:
                eng.close()
        result.seconds.update(per_rule)
    reading.close()  # nothing reads the snapshot from here on

    # Merge with the alerts already stored: what was recomputed is replaced, the rest is kept.
    t = time.perf_counter()
    with lake.transaction():  # read, merge and rewrite the alerts as one commit
        _store_alerts(lake, rules, cfg, scope, rows, result, notify_alerts, notifiers, now, live)
        lost = rows.get("run_lost")  # proven lost: the rows its SQL escalated (not its severity, a team's choice)
        proven = set() if lost is None else set(lost.filter(pc.fill_null(lost["escalate"], False))["run_id"].to_pylist())
        result.marked_lost = fleet.mark_lost(lake, result.alerts, live, proven)
    result.seconds["alerts"] = time.perf_counter() - t
    # the kept rows first: the manifest names their files' tokens
    scope.manifest["kept"] = {name: rows.save() for name, rows in scope.kept.items()}
    lake.put_bytes(f"{lake.root}/{MANIFEST}", json.dumps(scope.manifest).encode())
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _store_alerts(lake, rules, cfg, scope, rows, result, notify_alerts, notifiers, now, live) -> None:
    found = stored(lake)  # read once: merged here, written from by write_alerts
    existing = found.rows()
    before = {a["alert_id"]: a for a in existing}

    def recomputed(a: dict) -> bool:
        rule = rules.get(a["rule"])
        if rule is not None and rule.scope in fleet.KINDS and cfg.rules[rule.name].enabled:
            return fleet.recomputed(rule, a, live)  # by the clock: even a full diagnose sees only recent runs
        if scope.full:
            return True
        if rule is None or not cfg.rules[rule.name].enabled:
            return False
        if rule.scope == "run":
            return a.get("run_id") in scope.runs
        return (a["model"], a["hardware"]) in (scope.model_pairs if rule.by_model else scope.pairs)

    fresh: dict[str, dict] = {}
    for name, table in rows.items():
        for a in to_alerts(rules[name], cfg.rules[name], table):
            old = before.get(a["alert_id"])
            a["detected_at"] = old["detected_at"] if old else now
            a["notified_at"] = old["notified_at"] if old else None
            fresh[a["alert_id"]] = a
    kept = [a for a in existing if not recomputed(a) and a["alert_id"] not in fresh]
    final = kept + list(fresh.values())
    result.alerts = sorted(fresh.values(), key=lambda a: (a["start_at"], a["alert_id"]))
    result.new = [a for a in result.alerts if a["alert_id"] not in before]

    # Notify what was never notified (new alerts, and those a notifier failed on last time).
    pending = [a for a in final if a["notified_at"] is None]
    touched = {alert_key(a["rule"], a["model"], a["hardware"]) for a in existing if recomputed(a)}
    touched |= {alert_key(a["rule"], a["model"], a["hardware"]) for a in fresh.values()}
    if pending and notify_alerts:
        chosen = notify.build_notifiers(cfg.notify) if notifiers is None else notifiers
        result.notify_errors = notify.send_all(chosen, pending)
        if not result.notify_errors:
            for a in pending:
                a["notified_at"] = now
            result.notified = len(pending)
            touched |= {alert_key(a["rule"], a["model"], a["hardware"]) for a in pending}

    if scope.full:  # every key is rewritten; files of keys that no longer exist go
        touched |= {f.path.rsplit("/", 1)[-1][: -len(".parquet")] for f in found.files.values()}
    write_alerts(lake, final, touched, found)
    result.total = len(final)
    result.current = final


# --- command line -----------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="duckdb", help="engine that runs the rules' SQL")
    p.add_argument("--fail-on", choices=SEVERITIES, help="exit 1 while an alert at or above this severity is "
                                                           "open (default: fail_on in the rules config)")
    p.add_argument("--full", action="store_true", help="recompute every run and pair")
    p.add_argument("--no-notify", action="store_true", help="store alerts, notify nobody (they stay pending)")
    p.add_argument("--rules-config", help="diagnostics config laid over conf/diagnostics.yaml "
                                          "(default $MHW_DIAGNOSTICS)")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--master", help="Spark master URL (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        cfg = load_config(args.rules_config)
    except ConfigError as e:
        print(f"mhw diagnose: {e}", file=sys.stderr)
        return 2
    r = diagnose(args.lake, engine=args.engine, config_path=args.rules_config, full=args.full,
                 notify_alerts=not args.no_notify, master=args.master,
                 conf=dict(kv.split("=", 1) for kv in args.conf), log=log)
    kind = "full" if r.full else "incremental"
    counts = ", ".join(f"{k} {v}" for k, v in r.by_rule.items()) or "none"
    print(f"mhw diagnose: {kind} on {r.engine} in {r.seconds['total']:.2f}s; {r.runs_in_scope} run(s) and "
          f"{r.pairs_in_scope} model x hardware pair(s) checked; {len(r.alerts)} alert(s) ({counts}), "
          f"{len(r.new)} new, {r.notified} notified; {r.total} in the alerts table")
    for a in r.new[:50]:
        print(f"  [{a['severity']}] {a['rule']} {a['run_id'] or ''} {a['model']}/{a['hardware']}: {a['message']}")
    if r.notify_errors:
        print(f"mhw diagnose: notification failed, alerts stay pending: {'; '.join(r.notify_errors)}",
              file=sys.stderr)
    level = args.fail_on or cfg.fail_on
    failing = r.failing(level)
    if failing:
        print(f"mhw diagnose: failing: {len(failing)} open alert(s) at or above {level}: {describe(failing)} "
              f"(`mhw alerts --severity {level}`)", file=sys.stderr)
        return 1
    return 0
