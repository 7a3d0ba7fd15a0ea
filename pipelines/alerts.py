"""The ``alerts`` lake table: reading it, replacing the alerts of one rule on one model × hardware pair,
and ``mhw alerts``, which lists them.

    mhw alerts                                   # every alert, newest first
    mhw alerts --since 7d --rule divergence --rule loss_spike
    mhw alerts --since 2026-11-20 --severity critical --format json

Alerts are written by ``mhw diagnose`` (pipelines/diagnose.py) with the lake writer, keyed by rule and
model × hardware pair (``<rule>-<hash>.parquet`` in each date partition): re-writing a key replaces
that rule's alerts on that pair, wherever their dates fell.

A lake with a long history holds thousands of small alert files (a 40 M-row simulated lake: 2,061
alerts in 1,757 files, ~1 ms a file to open: 1.4-2.3 s a read, every diagnose). Every write keeps a
checkpoint, ``<lake>/_checkpoints/alerts.parquet``: every alert row with the file it came from (its
path under the table, size and mtime). A read lists the files, keeps the checkpoint's rows of the
files that are there unchanged and reads only the others, so whatever wrote or restored a file (a
rolled-back transaction, a foreign writer, a copy of the lake) the rows are the files' own.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import sys
from dataclasses import dataclass
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
CHECKPOINT = "_checkpoints/alerts.parquet"  # under the lake root: the rows of every alert file, by file
FILE_COLUMNS = ("_file", "_size", "_mtime_ns")  # the checkpoint's: a row's file under alerts/, its size and mtime
SHOWN = ["start_at", "severity", "rule", "model", "hardware", "precision", "run_id", "step_start", "message"]


def alert_key(rule: str, model: str, hardware: str) -> str:
    """File key of one rule's alerts on one model × hardware pair (a slug, whatever the names)."""
    digest = hashlib.sha256(f"{model}\x1f{hardware}".encode()).hexdigest()[:12]
    return f"{rule}-{digest}"


def read_alerts(lake: Lake, rules: set[str] | None = None) -> list[dict]:
    """Every alert in the lake as dicts (partition columns included), or those of ``rules``. Read
    through the checkpoint: only files written since it was are opened."""
    return stored(lake).rows(rules)


@dataclass
class Stored:
    """The alerts table as one read found it: every row with FILE_COLUMNS (``table``), the files listed
    (``files``: path under the table -> lakefiles.FileEntry), and whether the checkpoint lacked any
    of them. A diagnose reads it once and writes from it (``write_alerts``)."""
    table: object  # pyarrow.Table
    files: dict
    stale: bool

    def rows(self, rules: set[str] | None = None) -> list[dict]:
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self.table.drop_columns(list(FILE_COLUMNS))
        if rules is not None:
            data = data.filter(pc.is_in(data["rule"], pa.array(sorted(rules), pa.string())))
        return data.to_pylist()


def _schema():
    import pyarrow as pa
    return pa.schema([*ALERTS.schema, ("_file", pa.string()), ("_size", pa.int64()), ("_mtime_ns", pa.int64())])


def checkpoint_covering(fs, root: str, files) -> str | None:
    """``<root>/_checkpoints/alerts.parquet`` where its rows are those of exactly ``files`` (the alert
    files listed under ``root``, lakefiles.FileEntry: path, size, mtime): one file that a reader of
    every alert (the build's cubes) reads instead of them all. None otherwise."""
    got = _read_checkpoint(fs, root, list(FILE_COLUMNS))
    if got is None:
        return None
    table_dir = f"{root}/{TABLE}"
    want = {(_rel(f.path, table_dir), f.size, f.mtime_ns) for f in files}
    return f"{root}/{CHECKPOINT}" if set(zip(*(got[c].to_pylist() for c in FILE_COLUMNS))) == want else None


def _read_checkpoint(fs, root: str, columns: list[str] | None = None):
    """The checkpoint under ``root`` (those ``columns``), or None: none yet, unreadable, or of
    another layout. Read with ParquetFile: pq.read_table imports pyarrow.dataset, and pandas with it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(f"{root}/{CHECKPOINT}") as f:
            found = pq.ParquetFile(f)
            if not found.schema_arrow.equals(_schema()):
                return None
            return found.read(columns=columns)
    except (OSError, ValueError, pa.ArrowException):
        return None


def _rel(path: str, table_dir: str) -> str:
    """A file's path under the alerts table, as the checkpoint keeps it."""
    return path[len(table_dir):].lstrip("/")


def stored(lake: Lake) -> Stored:
    """The alerts as they are now: the checkpoint's rows of files listed now with the same size and
    mtime, then the rows of every other file (read)."""
    import pyarrow as pa

    from pipelines import lakefiles

    table_dir = lake.table_dir(TABLE)
    listed = {_rel(f.path, table_dir): f for files in
              lakefiles.list_partitions(lake.fs, table_dir, ALERTS.partition_by).values() for f in files}
    kept = _read_checkpoint(lake.fs, lake.root)
    if kept is None:  # none yet, or of another version: read every file
        kept = _schema().empty_table()
    same = [listed.get(f) is not None and (listed[f].size, listed[f].mtime_ns) == (size, mtime)
            for f, size, mtime in zip(*(kept[c].to_pylist() for c in FILE_COLUMNS))]
    stale = not all(same)
    kept = kept.filter(pa.array(same, pa.bool_()))
    have = set(kept["_file"].to_pylist())
    missing = [f for rel, f in listed.items() if rel not in have]
    if not missing:
        return Stored(kept, listed, stale)
    return Stored(pa.concat_tables([kept, _read_files(lake, missing)]), listed, True)


def _read_files(lake: Lake, files: list):
    """The rows of alert ``files`` (lakefiles.FileEntry) with FILE_COLUMNS."""
    import pyarrow as pa
    import pyarrow.dataset as ds  # (and pandas with it: 0.26 s) only where files are read

    table_dir = lake.table_dir(TABLE)
    part = ds.partitioning(pa.schema([(k, ALERTS.schema.field(k).type) for k in ALERTS.partition_by]),
                           flavor="hive")
    read = ds.dataset([f.path for f in files], filesystem=lake.fs, format="parquet", partitioning=part,
                      partition_base_dir=table_dir, schema=ALERTS.schema
                      ).to_table(columns=[*ALERTS.schema.names, "__filename"])
    by_path = {f.path: f for f in files}
    names = read["__filename"].to_pylist()
    read = read.drop_columns(["__filename"]).append_column(
        "_file", pa.array([_rel(n, table_dir) for n in names], pa.string())
    ).append_column("_size", pa.array([by_path[n].size for n in names], pa.int64())
    ).append_column("_mtime_ns", pa.array([by_path[n].mtime_ns for n in names], pa.int64()))
    return read.cast(_schema())


def _put_checkpoint(lake: Lake, table) -> None:
    from warehouse.writer import parquet_bytes

    lake.put_file(f"{lake.root}/{CHECKPOINT}", parquet_bytes(table), ".parquet")


def read_rows(lake: Lake, table: Table) -> list[dict]:
    """Every row of a small derived table (repairs) as dicts, partition columns included."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = [p for paths in lake.list_files(table.name).values() for p in paths]
    if not files:
        return []
    part = ds.partitioning(pa.schema([(k, table.schema.field(k).type) for k in table.partition_by]),
                           flavor="hive")
    data = ds.dataset(files, filesystem=lake.fs, format="parquet", partitioning=part,
                      partition_base_dir=lake.table_dir(table.name), schema=table.schema)
    return data.to_table().to_pylist()


def write_alerts(lake: Lake, alerts: list[dict], keys: set[str], found: Stored | None = None) -> int:
    """Replace the alerts of each key in ``keys`` with those of ``alerts`` that carry it (none: the
    key's files are removed). A key whose files hold those very rows already is left as it is (a
    diagnose recomputes far more than changes: rewriting it would make every reader of the alerts,
    the build's cubes, recompute too). ``found``: the table as the caller read it (``stored``), in
    the same transaction; read here otherwise. The checkpoint is brought up to date from it and the
    files written. Returns the rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import fs as pafs

    found = stored(lake) if found is None else found
    listing: dict[str, list[str]] = {}  # file name -> paths, as Lake.drop_stale takes it
    for f in found.files.values():
        listing.setdefault(f.path.rsplit("/", 1)[-1], []).append(f.path)
    by_key: dict[str, list[dict]] = {k: [] for k in keys}
    for a in alerts:
        k = alert_key(a["rule"], a["model"], a["hardware"])
        if k in by_key:
            by_key[k].append(a)
    schema = pa.schema([f for f in ALERTS.schema if f.name != "date"])
    held: dict[str, list[dict]] = {}  # what each key's files hold now
    for row in found.table.select([*schema.names, "_file"]).to_pylist():
        held.setdefault(row.pop("_file").rsplit("/", 1)[-1][: -len(".parquet")], []).append(row)
    rows, changed, written = 0, set(), []
    for key in sorted(by_key):
        group = sorted(by_key[key], key=lambda a: (a["start_at"], a["alert_id"]))
        files: list[str] = []
        if group:
            data = pa.Table.from_pylist([{k: a.get(k) for k in schema.names} for a in group], schema=schema)
            if _same_rows(data.to_pylist(), held.get(key, [])):
                continue
            res = lake.write(TABLE, data, key)
            files, rows = res.files, rows + res.rows
        changed.update(files, lake.drop_stale(TABLE, files, key=key, listing=listing))
        written += files
    if changed or found.stale:  # the checkpoint: what was found, less the files replaced, plus those written
        table_dir = lake.table_dir(TABLE)
        gone = pa.array(sorted(_rel(p, table_dir) for p in changed), pa.string())
        kept = found.table.filter(pc.invert(pc.is_in(found.table["_file"], gone)))
        from pipelines.lakefiles import FileEntry
        infos = lake.fs.get_file_info(written) if written else []
        new = [FileEntry(i.path, int(i.size), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File]
        _put_checkpoint(lake, pa.concat_tables([kept, _read_files(lake, new)]) if new else kept)
    return rows


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """The same rows in any order (NaN equal to NaN: compared by repr)."""
    def canon(r):
        return [(k, repr(r[k])) for k in sorted(r)]
    return len(a) == len(b) and sorted(map(canon, a)) == sorted(map(canon, b))


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
        from warehouse.nopandas import arrow_without_pandas
        from warehouse.writer import Lake

        with arrow_without_pandas():  # half of this command's time was pandas, which it never uses
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
