"""``mhw audit-log``: the audit trail of the lake (warehouse/audit.py), newest first.

    mhw audit-log                              # the last 50 entries
    mhw audit-log --since 7d --command ingest
    mhw audit-log --status failed --format json
    mhw audit-log --status killed              # started and never ended, its process gone

An entry still ``started`` is shown as ``running`` while its process lives (same host, same pid,
started before the entry), else ``killed`` (``unfinished``: it ran on another host). (``mhw audit``,
a different command, checks the served cubes against the raw lake.)
"""
from __future__ import annotations

import argparse
import json
import sys

from pipelines.alerts import parse_since
from warehouse import audit, config
from warehouse.output import write_rows

STATUSES = ("ok", "failed", "started", "running", "killed", "unfinished")
COLUMNS = ("started_at", "command", "status", "user", "via", "duration_s", "counts", "error", "entry_id")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_since, help="7d, 24h, 90m, YYYY-MM-DD or an ISO time (UTC)")
    p.add_argument("--command", dest="commands", action="append", help="only this command (repeatable)")
    p.add_argument("--status", choices=STATUSES,
                   help="only entries that ended so (started: running, killed or unfinished)")
    p.add_argument("--user", help="only entries of this user")
    p.add_argument("--limit", type=int, default=50, help="newest entries shown (0: all)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--lake", help="lake root (default from config)")


def select(entries: list[dict], since=None, commands=None, status=None, user=None) -> list[dict]:
    """The entries that pass the filters, newest first, each with its ``outcome`` (audit.outcome)."""
    out = []
    for e in entries:
        e = {**e, "outcome": audit.outcome(e)}
        if since is not None and e["started_at"] < since:
            continue
        if commands and e["command"] not in commands:
            continue
        if status and status != e["outcome"] and not (status == "started" and e["status"] == "started"):
            continue
        if user and e["user"] != user:
            continue
        out.append(e)
    return sorted(out, key=lambda e: (e["started_at"], e["entry_id"]), reverse=True)


def _counts_text(e: dict) -> str:
    try:
        counts = json.loads(e["counts"]) if e["counts"] else {}
    except ValueError:
        return e["counts"]
    return ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def run(args: argparse.Namespace) -> int:
    lake_root = args.lake or config.load(getattr(args, "config", None)).lake_root
    chosen = select(audit.read(lake_root), args.since, args.commands, args.status, args.user)
    if args.limit:
        chosen = chosen[:args.limit]
    if args.format == "json":
        cols = [*audit_columns(), "outcome"]
        write_rows(cols, [[e.get(c) for c in cols] for e in chosen], "json", sys.stdout)
        return 0
    rows = [[e["started_at"].isoformat(timespec="seconds"), e["command"], e["outcome"], e["user"], e["via"],
             "" if e["duration_s"] is None else f"{e['duration_s']:.2f}", _counts_text(e), e["error"] or "",
             e["entry_id"]] for e in chosen]
    write_rows(list(COLUMNS), rows, args.format, sys.stdout, max_rows=max(args.limit, 1) if args.limit else len(rows))
    return 0


def audit_columns() -> list[str]:
    from warehouse.schemas import TABLES

    return [c.name for c in TABLES[audit.TABLE].columns]
