"""Lake maintenance: compaction of small files and retention of step-level rows.

Compaction rewrites a partition's many small files (one per training block, per ingest…) as one file,
and swaps the whole partition folder for the new one with ``renameat2(RENAME_EXCHANGE)``: a single
atomic step, so a listing sees either all the old files or the one new file, never both (duplicates)
or neither (a gap). The old folder goes to ``<root>/_trash/`` and is deleted by a later run. Each
partition is compacted (and each expired one moved aside) holding the lake lock exclusively
(warehouse/commit.py): ``mhw query`` and ``mhw audit`` hold it shared for their whole read, builds and
diagnoses read hard-linked snapshots, so no reader loses files it listed.

Only partitions whose files are all older than ``min_age_s`` are compacted, so the blocks of a run
still being written (and retried) are left alone: a retry must find its own key's file to replace.
The compacted file is named ``compacted-<hash of the file names>``, so compacting the same set twice
is a no-op.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field

import pyarrow.parquet as pq
import pyarrow as pa

from warehouse import audit
from warehouse.schemas import FACT_TABLES, TABLES
from warehouse.writer import Lake, parquet_options

_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def exchange(a: str, b: str) -> None:
    """Atomically swap two paths (Linux renameat2 with RENAME_EXCHANGE)."""
    if _libc.renameat2(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2({a!r}, {b!r}, RENAME_EXCHANGE): {os.strerror(err)}")


@dataclass
class MaintenanceResult:
    compacted_partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    deleted_partitions: list[str] = field(default_factory=list)
    trash_emptied: int = 0


def _partitions(table_dir: str):
    """Leaf partition folders of a table (those that hold .parquet files)."""
    for parent, dirs, files in os.walk(table_dir):
        dirs[:] = [d for d in dirs if "=" in d]
        parquet = [f for f in files if f.endswith(".parquet")]
        if parquet:
            yield parent, sorted(parquet)


def compact(lake: Lake, tables=FACT_TABLES, min_files: int = 4, min_age_s: float = 3600,
            now: float | None = None) -> MaintenanceResult:
    """Rewrite each partition holding ``min_files`` or more files, all older than ``min_age_s``, as
    one file, swapped in atomically."""
    if not lake.local:
        raise NotImplementedError("compaction of object-store lakes: run it where the lake is local "
                                  "(object stores have no atomic folder swap)")
    res = MaintenanceResult()
    now = time.time() if now is None else now
    trash = os.path.join(lake.root, "_trash")
    for name in tables:
        table = TABLES[name]
        for part, files in list(_partitions(lake.table_dir(name))):
            if len(files) < min_files:
                continue
            with lake.transaction():  # a writer may have changed the partition since it was listed
                n = _compact_one(table, lake.root, part, min_files, min_age_s, now, trash)
            if n:
                res.compacted_partitions += 1
                res.files_before += n
                res.files_after += 1
    return res


def _compact_one(table, root: str, part: str, min_files: int, min_age_s: float, now: float, trash: str) -> int:
    """Compact one partition (the caller holds the lake lock); returns the files folded, 0 if none."""
    if not os.path.isdir(part):
        return 0
    files = sorted(f for f in os.listdir(part) if f.endswith(".parquet"))
    paths = [os.path.join(part, f) for f in files]
    if len(files) < min_files or any(now - os.path.getmtime(p) < min_age_s for p in paths):
        return 0
    data = pa.concat_tables([pq.read_table(p, schema=table.file_schema) for p in paths])
    digest = hashlib.sha1("\0".join(files).encode()).hexdigest()[:16]
    staged = os.path.join(root, "_tmp", f"compact-{uuid.uuid4().hex}")
    os.makedirs(staged)
    with open(os.path.join(staged, f"compacted-{digest}.parquet"), "wb") as f:
        pq.write_table(data, f, **parquet_options(data.schema))
        f.flush()
        os.fsync(f.fileno())
    exchange(staged, part)  # staged now holds the old files
    os.makedirs(trash, exist_ok=True)
    os.rename(staged, os.path.join(trash, f"{table.name}-{uuid.uuid4().hex}"))
    return len(files)


def apply_retention(lake: Lake, retention_days: dict[str, int], today: dt.date | None = None) -> list[str]:
    """Delete whole date partitions of the named tables older than their retention. Cubes are not
    lake tables and are never touched. Returns the deleted partition folders."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    deleted = []
    trash = os.path.join(lake.root, "_trash")
    for name, days in retention_days.items():
        if name not in FACT_TABLES:
            raise ValueError(f"retention applies to fact tables only, not {name!r}")
        cutoff = today - dt.timedelta(days=int(days))
        for part, files in list(_partitions(lake.table_dir(name))):
            date = dt.date.fromisoformat(os.path.basename(part).split("=", 1)[1])
            if date < cutoff:
                with lake.transaction():
                    os.makedirs(trash, exist_ok=True)
                    os.rename(part, os.path.join(trash, f"{name}-{uuid.uuid4().hex}"))  # atomic: gone at once
                deleted.append(part)
                audit.record(files_deleted=len(files), retention_files_deleted=len(files))
    return deleted


def empty_trash(lake: Lake, older_than_s: float = 600) -> int:
    """Delete what earlier runs moved aside, once no query can still be reading it."""
    return lake.remove_old("_trash", older_than_s)


def _counts(r: MaintenanceResult) -> dict:
    return {"partitions": r.compacted_partitions + len(r.deleted_partitions),
            "files_deleted": r.files_before - r.files_after,  # retention's add up in apply_retention
            "compacted_partitions": r.compacted_partitions, "compacted_files": r.files_before,
            "retention_partitions": len(r.deleted_partitions), "trash_emptied": r.trash_emptied}


@audit.audited("maintenance", counts=_counts)
def run_maintenance(lake_root: str, settings: dict, min_age_s: float = 3600) -> MaintenanceResult:
    lake = Lake(lake_root)
    res = MaintenanceResult()
    res.trash_emptied = empty_trash(lake)
    res.deleted_partitions = apply_retention(lake, settings.get("retention_days") or {})
    c = compact(lake, min_files=int(settings.get("compact_min_files", 4)), min_age_s=min_age_s)
    res.compacted_partitions, res.files_before, res.files_after = c.compacted_partitions, c.files_before, c.files_after
    lake.recover()
    return res
