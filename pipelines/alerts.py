"""The ``alerts`` lake table: reading it, replacing the alerts of one rule on one model × hardware pair,
and ``mhw alerts``, which lists them.

    mhw alerts                                   # every alert, newest first
    mhw alerts --since 7d --rule divergence --rule loss_spike
    mhw alerts --since 2026-11-20 --severity critical --format json

Alerts are written by ``mhw diagnose`` (pipelines/diagnose.py) with the lake writer, keyed by rule and
model × hardware pair (``<rule>-<hash>.parquet`` in each date partition): re-writing a key replaces
that rule's alerts on that pair, wherever their dates fell.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import sys
from typing import TYPE_CHECKING

from pipelines.notify import SEVERITIES, jsonable, rank
from warehouse import config
from warehouse.output import write_rows
from warehouse.schemas import ALERTS, Table

# pyarrow, and the pandas that pyarrow.dataset imports (~2.5 s of start-up, bench/bench_startup.py), are
# imported where alerts are read or written: `mhw alerts` on a lake without alerts never pays for them.
if TYPE_CHECKING:
    from warehouse.writer import Lake

TABLE = ALERTS.name
SHOWN = ["start_at", "severity", "rule", "model", "hardware", "precision", "run_id", "step_start", "message"]


def alert_key(rule: str, model: str, hardware: str) -> str:
    """File key of one rule's alerts on one model × hardware pair (a slug, whatever the names)."""
    digest = hashlib.sha256(f"{model}\x1f{hardware}".encode()).hexdigest()[:12]
    return f"{rule}-{digest}"


def read_alerts(lake: Lake, rules: set[str] | None = None) -> list[dict]:
    """Every alert in the lake as dicts (partition columns included), or those of ``rules``: only
    their files are read (a file per rule, model × hardware pair and day: ``alert_key``). Small:
    alerts, not telemetry, but many files."""
    keep = None if rules is None else (lambda name: name[: -len(".parquet")].rsplit("-", 1)[0] in rules)
    return read_rows(lake, ALERTS, keep)


def read_rows(lake: Lake, table: Table, keep=None) -> list[dict]:
    """Every row of a small derived table (alerts, repairs) as dicts, partition columns included;
    ``keep(file name)``: only the files it keeps."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = [p for name, paths in lake.list_files(table.name).items() if keep is None or keep(name) for p in paths]
    if not files:
        return []
    part = ds.partitioning(pa.schema([(k, table.schema.field(k).type) for k in table.partition_by]),
                           flavor="hive")
    data = ds.dataset(files, filesystem=lake.fs, format="parquet", partitioning=part,
                      partition_base_dir=lake.table_dir(table.name), schema=table.schema)
    return data.to_table().to_pylist()


def write_alerts(lake: Lake, alerts: list[dict], keys: set[str], listing: dict | None = None) -> int:
    """Replace the alerts of each key in ``keys`` with those of ``alerts`` that carry it (none: the
    key's files are removed). Returns the rows written."""
    import pyarrow as pa

    listing = lake.list_files(TABLE) if listing is None else listing
    by_key: dict[str, list[dict]] = {k: [] for k in keys}
    for a in alerts:
        k = alert_key(a["rule"], a["model"], a["hardware"])
        if k in by_key:
            by_key[k].append(a)
    rows = 0
    names = set(ALERTS.schema.names)
    for key in sorted(by_key):
        group = sorted(by_key[key], key=lambda a: (a["start_at"], a["alert_id"]))
        written: list[str] = []
        if group:
            data = pa.Table.from_pylist([{k: v for k, v in a.items() if k in names and k != "date"} for a in group],
                                        schema=pa.schema([f for f in ALERTS.schema if f.name != "date"]))
            res = lake.write(TABLE, data, key)
            written, rows = res.files, rows + res.rows
        lake.drop_stale(TABLE, written, key=key, listing=listing)
    return rows


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``7d``, ``24h``, ``90m``, an ISO date or an ISO date-time (UTC unless it says otherwise)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    m = re.fullmatch(r"(\d+)\s*([dhm])", text.strip())
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return now - dt.timedelta(**{unit: int(m.group(1))})
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since: expected 7d, 24h, 90m, YYYY-MM-DD or an ISO time, got {text!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def select(alerts: list[dict], since: dt.datetime | None = None, rules: list[str] | None = None,
           severity: str | None = None, model: str | None = None, hardware: str | None = None,
           run_id: str | None = None) -> list[dict]:
    """Alerts whose anomaly was still going at or after ``since`` (end_at, else start_at), of the
    given rules, at or above ``severity``, newest first."""
    out = []
    for a in alerts:
        last = a.get("end_at") or a.get("start_at")
        if since is not None and (last is None or last < since):
            continue
        if rules and a["rule"] not in rules:
            continue
        if severity and rank(a["severity"]) < rank(severity):
            continue
        if (model and a["model"] != model) or (hardware and a["hardware"] != hardware) \
                or (run_id and a.get("run_id") != run_id):
            continue
        out.append(a)
    return sorted(out, key=lambda a: (a["start_at"], a["alert_id"]), reverse=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_since, help="7d, 24h, 90m, YYYY-MM-DD or an ISO time (UTC)")
    p.add_argument("--rule", action="append", help="only this rule (repeatable)")
    p.add_argument("--severity", choices=SEVERITIES, help="only alerts at or above this severity")
    p.add_argument("--model")
    p.add_argument("--hardware")
    p.add_argument("--run", dest="run_id", help="only alerts of this training run")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--max-rows", type=int, default=200, help="rows printed in table format")


def run(args: argparse.Namespace) -> int:
    root = args.lake or config.load().lake_root
    if config.is_remote(root) or os.path.isdir(os.path.join(root, TABLE)):
        from warehouse.writer import Lake

        alerts = read_alerts(Lake(root))
    else:  # no alerts folder, no alerts (Lake.list_files would find none): no pyarrow to read nothing
        alerts = []
    chosen = select(alerts, since=args.since, rules=args.rule, severity=args.severity,
                    model=args.model, hardware=args.hardware, run_id=args.run_id)
    if args.format == "json":
        cols = [c.name for c in ALERTS.columns]
        rows = [[jsonable(a.get(c)) for c in cols] for a in chosen]
    else:
        cols = SHOWN if args.format == "table" else [c.name for c in ALERTS.columns]
        rows = [[a.get(c) for c in cols] for a in chosen]
    write_rows(cols, rows, args.format, sys.stdout, args.max_rows)
    return 0
