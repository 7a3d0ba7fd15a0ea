"""``mhw audit``: prove the served cubes still equal the raw lake, partition by partition.

Each file in sql/audits/ is a query that returns the rows that are wrong (sqlmesh style): a
partition (``model=…/hardware=…/date=…``) or an aggregation level, the measure, the lake's value
and the cube's. The audit runs them all with DuckDB over the lake views and the serving file that
``mhw query`` opens, prints every bad row and exits 1 when there is one.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.models import SQL_DIR
from warehouse import config, query
from warehouse.writer import Lake

AUDIT_DIR = SQL_DIR / "audits"


@dataclass(frozen=True)
class Finding:
    audit: str
    partition: str
    measure: str
    lake_value: float | None
    cube_value: float | None

    def __str__(self) -> str:
        return (f"{self.audit}: {self.partition}: {self.measure} lake={self.lake_value!r} "
                f"cube={self.cube_value!r}")


def audit(lake_root: str | None = None, serving_path: str | None = None,
          audit_dir: Path = AUDIT_DIR) -> list[Finding]:
    settings = config.load()
    serving_path = serving_path or settings.serving_path
    with Lake(lake_root or settings.lake_root).read_lock():  # no ingest commits mid-audit
        return _audit(lake_root, serving_path, audit_dir)


def _audit(lake_root: str | None, serving_path: str, audit_dir: Path) -> list[Finding]:
    con = query.connect(lake_root, serving_path)  # sets disabled_optimizers (see query.py), then locks
    findings: list[Finding] = []
    try:
        for path in sorted(audit_dir.glob("*.sql")):
            try:
                rows = con.execute(path.read_text()).fetchall()
            except duckdb.CatalogException as e:  # a cube missing from the serving file
                findings.append(Finding(path.stem, "-", "cube missing", None, None))
                print(f"mhw audit: {path.stem}: {e}", file=sys.stderr)
                continue
            findings += [Finding(*r) for r in rows]
    finally:
        con.close()
    return findings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--serving", help="serving DuckDB file (default from config)")
    p.add_argument("--max-rows", type=int, default=50, help="bad rows printed")


def run(args: argparse.Namespace) -> int:
    findings = audit(args.lake, args.serving)
    for f in findings[: args.max_rows]:
        print(f)
    if len(findings) > args.max_rows:
        print(f"… and {len(findings) - args.max_rows} more")
    if findings:
        parts = sorted({f.partition for f in findings if not f.partition.startswith("level=")})
        levels = sorted({f.partition for f in findings if f.partition.startswith("level=")})
        named = ", ".join(parts[:5]) + (f" (+{len(parts) - 5} more)" if len(parts) > 5 else "")
        print(f"mhw audit: FAILED: {len(findings)} difference(s); partitions: {named or 'none'}; "
              f"levels: {', '.join(levels) or 'none'}", file=sys.stderr)
        return 1
    print(f"mhw audit: ok: every partition and level of the served cubes equals the lake "
          f"({len(list(AUDIT_DIR.glob('*.sql')))} audits)")
    return 0
