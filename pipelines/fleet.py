"""Fleet reliability in the diagnose: the rules that watch processes and hosts rather than what changed.

The other rules are recomputed for the runs and model × hardware pairs whose lake partitions changed
(pipelines/diagnose.py). Two kinds cannot be:

- ``live`` rules (run_hung, run_lost) depend on the clock: a hung or lost run is one whose heartbeats,
  or their absence, say so *now*, and a run whose host died writes nothing at all. They are recomputed
  at every diagnose for the runs with heartbeats in the last ``LIVE_DAYS`` days (a live process rewrites
  its heartbeat into today's partition; a dead one's stays on its last day), by the diagnose's clock
  (``diagnose(now=...)``), reading ``live_processes`` (sql/diagnostics/shared), computed once for both.
- ``hosts`` rules (straggler_host) judge a host across every job it ran, of any model: they read the
  straggler rule's verdicts (the alerts of this diagnose, and those kept for runs it did not recompute)
  and the hosts of the jobs of the last ``window_days`` (rank_steps), at every diagnose.

Their alerts are replaced whole when recomputed (``recomputed``). Runs that run_lost finds are marked
``lost`` in ``runs`` (``mark_lost``), so a killed run stops reading ``running`` forever.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines import lakefiles, models
from pipelines.models import SQL_DIR
from warehouse.schemas import RUNS, TABLES
from warehouse.writer import Lake

KINDS = ("live", "hosts")
LIVE_DAYS = 3  # heartbeat partitions (days) read by the live rules: a live process beats into today's
LIVE_PROCESSES = SQL_DIR / "diagnostics" / "shared" / "live_processes.sql"
TABLES_READ = ("heartbeats", "runs", "rank_steps")  # what the snapshot must hold for these rules
VERDICT_RULE = "straggler"  # the run rule whose alerts the hosts rules read
_TS = pa.timestamp("us", tz="UTC")
VERDICTS = pa.schema([("model", pa.string()), ("hardware", pa.string()), ("run_id", pa.string()),
                      ("host", pa.string()), ("rank", pa.int64()), ("observed", pa.float64()),
                      ("expected", pa.float64()), ("start_at", _TS), ("end_at", _TS)])


@dataclass
class FleetScope:
    now: dt.datetime
    live_runs: set[str] = field(default_factory=set)
    files: dict[str, list[str]] = field(default_factory=dict)  # table -> files the live / hosts rules read
    hosts_days: int = 0
    runs_seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # runs file (relative) -> (size, mtime)


def _recent(listing: dict, now: dt.datetime, days: int) -> dict:
    since = (now - dt.timedelta(days=days)).date().isoformat()
    return {k: v for k, v in listing.items() if k[-1] >= since}


def find_scope(lake: Lake, data_root: str, rules: dict, cfg, now: dt.datetime) -> FleetScope:
    """The files the live and hosts rules read, from the snapshot at ``data_root``."""
    scope = FleetScope(now=now)
    chosen = {r.scope for r in rules.values() if r.scope in KINDS and cfg.rules[r.name].enabled}
    if "live" in chosen:
        hb = _recent(lakefiles.list_partitions(lake.fs, f"{data_root}/heartbeats", TABLES["heartbeats"].partition_by),
                     now, LIVE_DAYS)
        scope.files["heartbeats"] = sorted(f.path for files in hb.values() for f in files)
        if scope.files["heartbeats"]:
            ids = ds.dataset(scope.files["heartbeats"], filesystem=lake.fs, format="parquet").to_table(columns=["run_id"])
            scope.live_runs = set(pc.unique(ids.column("run_id")).to_pylist()) - {None}
        pairs = {k[:2] for k in hb}
        runs = lakefiles.list_partitions(lake.fs, f"{data_root}/runs", RUNS.partition_by)
        scope.files["runs"] = sorted(f.path for k, files in runs.items() if k[:2] in pairs for f in files)
        scope.runs_seen = {f.path[len(data_root):]: (f.size, f.mtime_ns) for k, files in runs.items()
                           if k[:2] in pairs for f in files}
    if "hosts" in chosen:
        scope.hosts_days = max(int(cfg.rules[r.name].params.get("window_days", 1)) for r in rules.values()
                               if r.scope == "hosts" and cfg.rules[r.name].enabled)
        ranks = _recent(lakefiles.list_partitions(lake.fs, f"{data_root}/rank_steps", TABLES["rank_steps"].partition_by),
                        now, scope.hosts_days)
        scope.files["rank_steps"] = sorted(f.path for files in ranks.values() for f in files)
    return scope


def verdicts(run_rows: pa.Table | None, existing: list[dict], recomputed_runs: set[str], full: bool) -> pa.Table:
    """The straggler verdicts the hosts rules read: this diagnose's rows, and the stored alerts of the
    runs it did not recompute."""
    rows = []
    if run_rows is not None and run_rows.num_rows:
        rows += run_rows.select(VERDICTS.names).to_pylist()
    if not full:
        rows += [{k: a.get(k) for k in VERDICTS.names} for a in existing
                 if a["rule"] == VERDICT_RULE and a.get("run_id") not in recomputed_runs]
    return pa.Table.from_pylist(rows, schema=VERDICTS)


def run_rules(eng, rules: dict, cfg, scope: FleetScope, data_root: str, verdict_rows: pa.Table, render,
              log=None) -> tuple[dict[str, pa.Table], dict[str, float]]:
    """Each enabled live and hosts rule's rows on ``eng`` (as its SQL returns them: the diagnose
    checks their columns)."""
    say = log or (lambda *_: None)
    out, seconds = {}, {}
    chosen = [r for r in rules.values() if r.scope in KINDS and cfg.rules[r.name].enabled]
    if not chosen:
        return out, seconds
    eng.register_arrow("diagnose_clock", pa.table({"now": pa.array([scope.now], _TS)}))
    eng.register_arrow("straggler_verdicts", verdict_rows)
    for table in TABLES_READ:
        eng.register_files(table, scope.files.get(table, []), TABLES[table].schema, TABLES[table].partition_by,
                           f"{data_root}/{table}")
    if any(r.scope == "live" for r in chosen):
        t = time.perf_counter()
        eng.register_arrow("live_processes", eng.query(models.load_model(LIVE_PROCESSES).sql))
        seconds["live_processes"] = time.perf_counter() - t
    for rule in chosen:
        t = time.perf_counter()
        result = eng.query(render(rule, cfg.rules[rule.name].params))
        out[rule.name] = result
        seconds[rule.name] = time.perf_counter() - t
        say(f"{rule.name}: {result.num_rows} alert(s) ({seconds[rule.name]:.2f}s)")
    return out, seconds


def recomputed(rule, alert: dict, scope: FleetScope) -> bool:
    """Whether this diagnose recomputed (and so replaces) ``alert`` of a live or hosts rule."""
    if rule.scope == "hosts":
        return True
    return alert.get("run_id") in scope.live_runs


def mark_lost(lake: Lake, alerts: list[dict], scope: FleetScope, proven: set[str]) -> list[str]:
    """Rewrite the ``runs`` row of each run that run_lost proved lost (``proven``: the runs its SQL
    escalated, exited or silent past max_silent_beats; overdue heartbeats are not proof, whatever
    severity a team gives them) as ``lost`` (ended at its last
    heartbeat, steps up to its last step): a row still running, or failed (its other ranks' end when
    the lost one broke their collective), unless the row changed since the diagnose listed it (a
    resume that just started). Returns the run ids marked. Call inside the lake
    transaction that stores the alerts."""
    lost = {a["run_id"]: a for a in alerts if a["rule"] == "run_lost" and a.get("run_id") in proven}
    if not lost:
        return []
    marked = []
    for key, files in lakefiles.list_partitions(lake.fs, lake.table_dir("runs"), RUNS.partition_by).items():
        for f in files:
            run_id = f.path.rsplit("/", 1)[-1][: -len(".parquet")]
            a = lost.get(run_id)
            if a is None or scope.runs_seen.get(f.path[len(lake.root):]) != (f.size, f.mtime_ns):
                continue  # not lost, or rewritten since it was read: its process is back
            part = ds.dataset([f.path], filesystem=lake.fs, format="parquet").to_table()
            rows = [r for r in part.to_pylist() if r.get("run_id") == run_id]
            if len(rows) != 1 or rows[0].get("status") not in (None, "running", "failed"):
                continue  # ended otherwise (failed: the other ranks, when a collective broke with it)
            row = {**rows[0], **dict(zip(RUNS.partition_by[:2], key[:2])), "status": "lost",
                   "ended_at": a["start_at"] or scope.now}
            if a.get("step_end") is not None:
                row["steps"] = max(row.get("steps") or 0, a["step_end"] + 1)
            row.pop("date", None)
            lake.merge("runs", pa.Table.from_pylist([row]), run_id)
            marked.append(run_id)
    return sorted(marked)
