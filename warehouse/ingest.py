"""``mhw ingest``: load JSONL, Hugging Face Trainer, TensorBoard, MLPerf, lm-eval and MLflow logs.

    mhw ingest steps.jsonl --table train_steps --model gpt2-small --hardware a100-40gb-x1
    mhw ingest out/trainer_state.json --model distilbert/lora-imdb --hardware t4-x1 --precision fp16
    mhw ingest out/checkpoint-*/trainer_state.json --model m --hardware h   # one run, one row per step
    mhw ingest runs/ --format tensorboard --model my-model --hardware cpu
    mhw ingest mlruns/ --hardware a100-40gb-x1    # an MLflow file store: one source per run folder
    mhw ingest bert_mlperf.log                    # model/hardware from submission_benchmark/_platform

The importers in ``warehouse/importers/`` turn each file into candidate rows; this module is the one
place that checks them against ``warehouse.schemas`` and writes them, the same way for every format:

- a row that does not fit its table (wrong type, missing required column, unparseable timestamp,
  unknown field, a model/hardware that is not a slug, a line that is not a JSON object or not JSON at
  all) goes to the ``quarantine`` table with file, line, field, reason and the raw row. Nothing is
  silently dropped. NaN and +-inf are data and are kept. Quarantine rows are keyed per source file:
  ingesting the file again replaces its own.
- One row per fact, whatever files a run arrives in. A table with a ``key`` in
  ``warehouse.schemas`` (runs: run; train_steps: run, step; step_metrics: run, step, metric;
  eval_results: run, checkpoint step, suite, metric, precision; system_samples: run, device, ts)
  holds one row per key. A run's rows are written under one key per run (``run_key``), rebuilt
  from all of the run's files each time one of them is ingested. ``latency_samples`` has no key (two
  requests may look alike): its rows stay keyed per source file, as given.

How a run is rebuilt (the design). Each source's validated rows are kept in a small per-source
ingest record under ``<lake>/_ingest/`` (``_Store``; no reader or cube build lists it): the rows,
the file's path, format, derived clock if any, and for each run it touches a rank. A per-run index
lists the files of the run. To rebuild a run, its files are ranked (furthest step first, then a run
that ended, then one whose timing is known, then more rows; the path breaks ties, so no order of
ingest matters) and for each key
the row of the best-ranked file that has it is kept; the ``runs`` row is the best file's, with
descriptive columns another file gives filling what it leaves empty. Where timestamps are derived
(a trainer state has none), every derived row of the run is re-stamped with the best file's clock,
so a series read from five checkpoint copies has one clock. The result is a function of the set of
files, not of their order: A then B equals B then A, re-ingesting a file changes nothing, and
re-ingesting an edited file replaces exactly its own contribution (its record is replaced, and the
runs it no longer names are rebuilt without it). Why a record of each file rather than a source
column on every row: rows a better file overrides are not in the lake, yet must come back if that
file is edited or re-ingested under another run id; and the lake's schemas (the JSONL contract,
the cubes) stay as they are. The cost is a second copy of imported rows, which are small.

Compaction (``pipelines/maintenance.py``) folds a run's files into ``compacted-*`` files its key no
longer names; rebuilding the run also takes its keys out of those (local lakes), so a checkpoint
that arrives after a compaction does not duplicate the steps before it (on object-store lakes, which
are never compacted here, that step is skipped).

One ``mhw ingest`` call is one lake transaction (warehouse/commit.py): it holds the lake lock, so
two ingests of one lake take turns (the records are read, then written), readers see all of the call
or none of it, and a call killed midway is rolled back by the next process that takes the lock. A
source is known by its identity (``Ingester.identify``), not the path it was named by: symlinks, hard
links and copies of an ingested file are that file again. Pipes and FIFOs are read once, streamed to
a temp file, before the lock is taken. A JSON-lines file is read once too: hashed as it is parsed,
its identity settled when its rows are staged (a copy of a source ingested before is then read again
as that source, which is rare).

Exit status: 0 when rows were written (even with rejects), 1 when nothing was, 2 when a file could
not be read or parsed at all (the other files are still ingested).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse.importers import FORMATS, Parsed, Record, RunMeta, SourceError, StepClock, json_type, parse, sources
from warehouse.importers.jsonl import record as jsonl_record
from warehouse import audit, jsonl_columns
from warehouse.nopandas import arrow_without_pandas
from warehouse.schemas import DERIVED_TABLES, MAX_FIELDS, NAME_CHARS, TABLES, TS, Table
from warehouse.writer import Lake, PartitionError, WriteResult, check_slug, conform, parquet_bytes, slugify

LOADABLE = tuple(n for n in TABLES if n != "quarantine" and n not in DERIVED_TABLES)  # quarantine: ingest writes it
SHOWN_REJECTS = 10  # reject lines printed before the count by reason

# Strings accepted for float columns besides JSON numbers and the NaN/Infinity tokens.
_NONFINITE = {s: float(s.lstrip("+").replace("infinity", "inf")) for s in
              ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")}


# --- validation -------------------------------------------------------------------------------------

DETAIL_CHARS = 1024  # a problem's detail; a reason names what is wrong, it never repeats a huge value
SHOWN_PROBLEMS = 16  # problems kept per row (the rest counted), so a quarantine reason stays bounded


@dataclass(frozen=True)
class Problem:
    field: str | None
    kind: str  # short and stable: the CLI counts rejects by it
    detail: str = ""

    def __post_init__(self):  # bounded whatever an importer or a row put in them (a 1 MB field name)
        if self.field is not None and len(self.field) > NAME_CHARS:
            object.__setattr__(self, "field", self.field[:NAME_CHARS - 3] + "...")
        if len(self.detail) > DETAIL_CHARS:
            object.__setattr__(self, "detail", self.detail[:DETAIL_CHARS - 3] + "...")

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


class _Bad(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


def _show(v) -> str:
    if isinstance(v, str) and len(v) > 60:
        v = v[:60]  # cut before repr: a 200 MB value is never copied whole into a message
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _wrong(expected: str, v) -> _Bad:
    return _Bad("wrong type", f"expected {expected}, got {json_type(v)} {_show(v)}")


def _to_str(v, max_chars: int | None = None):
    if not isinstance(v, str):
        raise _wrong("a string", v)
    if max_chars is not None and len(v) > max_chars:
        raise _Bad("too long", f"{len(v):,} characters; the limit is {max_chars:,} (starts {_show(v)})")
    return v


def _to_int(v, bits: int):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _wrong("an integer", v)
    if isinstance(v, float):
        if not v.is_integer():
            raise _wrong("an integer", v)
        v = int(v)
    if not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
        raise _Bad("out of range", f"{v} does not fit in int{bits}")
    return v


def _to_float(v):
    if isinstance(v, str) and v.strip().lower() in _NONFINITE:
        return _NONFINITE[v.strip().lower()]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _wrong("a number", v)
    try:
        return float(v)
    except OverflowError:  # an integer literal beyond float range (1e400 written out)
        raise _Bad("out of range", f"{_show(v)} does not fit in a float64") from None


def _to_bool(v):
    if not isinstance(v, bool):
        raise _wrong("true or false", v)
    return v


def to_timestamp(v) -> datetime:
    """An aware UTC datetime from an ISO-8601 string (``Z``, an offset, or naive = UTC), epoch
    seconds, or a datetime. Raises ``_Bad`` otherwise."""
    if isinstance(v, datetime):
        d = v
    elif isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.strip())
        except ValueError:
            raise _Bad("bad timestamp", f"{_show(v)} is not ISO-8601 (e.g. 2024-05-01T12:00:00Z)") from None
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise _Bad("bad timestamp", f"{v} is not a time")
        if abs(v) >= 1e11:
            raise _Bad("bad timestamp", f"{v} is not epoch seconds (milliseconds? divide by 1000)")
        try:
            return datetime.fromtimestamp(v, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise _Bad("bad timestamp", f"{v} is out of the datetime range") from None
    else:
        raise _wrong("an ISO-8601 string or epoch seconds", v)
    try:
        return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)
    except OverflowError:
        raise _Bad("bad timestamp", f"{_show(v)} is out of the datetime range") from None


def _converter(t: pa.DataType, max_chars: int | None = None):
    if pa.types.is_string(t):
        return lambda v: _to_str(v, max_chars)
    if pa.types.is_integer(t):
        return lambda v: _to_int(v, t.bit_width)
    if pa.types.is_floating(t):
        return _to_float
    if pa.types.is_boolean(t):
        return _to_bool
    if t == TS:
        return to_timestamp
    raise TypeError(f"no JSON converter for {t}")


def validate(table: Table, values) -> tuple[dict | None, list[Problem]]:
    """Check one candidate row against ``table``'s schema. Returns (typed row, []) or (None, problems)."""
    if not isinstance(values, dict):
        return None, [Problem(None, "not a JSON object", f"got a JSON {json_type(values)}")]
    names = table.schema.names
    if len(values) > MAX_FIELDS:  # not one problem per field: a 1 MiB line holds 100,000s of them
        return None, [Problem(None, "too many fields", f"{len(values):,} fields; the limit is {MAX_FIELDS} "
                                                       f"({table.name} has {len(names)} columns)")]
    row, problems = {}, []
    for k, v in values.items():
        if k in table.partition_by and k == "date":
            problems.append(Problem(k, "derived field", f"'date' is derived from {table.time_column}; leave it out"))
        elif k not in names:
            close = difflib.get_close_matches(str(k), names, n=1) if len(str(k)) <= NAME_CHARS else []
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(Problem(str(k), "unknown field", f"{table.name} has no column {_show(str(k))}{hint}"))
        elif v is not None:
            try:
                row[k] = _converter(table.schema.field(k).type, table.max_chars(k))(v)
            except _Bad as b:
                problems.append(Problem(k, b.kind, b.detail))
    bad_fields = {p.field for p in problems}
    for k in table.required:
        if k not in bad_fields and (row.get(k) is None or row.get(k) == ""):
            problems.append(Problem(k, "missing required field", f"{table.name} rows need '{k}'"))
    for k in table.partition_by:
        if k != "date" and isinstance(row.get(k), str) and row[k]:
            try:
                check_slug(k, row[k])
            except PartitionError as e:
                problems.append(Problem(k, "not a slug", str(e)))
    if len(problems) > SHOWN_PROBLEMS:
        more = len(problems) - SHOWN_PROBLEMS + 1
        problems = problems[:SHOWN_PROBLEMS - 1] + [Problem(None, "more problems", f"{more} more not listed")]
    return (None, problems) if problems else (row, [])


# --- writing ----------------------------------------------------------------------------------------

@dataclass
class Reject:
    source: str  # as the user named it
    line: int | None
    target_table: str | None
    problems: list[Problem]
    raw: str | None
    file: str | None = None  # the file inside a folder source the row came from

    @property
    def reason(self) -> str:
        first, rest = self.problems[0], self.problems[1:]
        more = "; ".join(f"field '{p.field}': {p.reason}" if p.field else p.reason for p in rest)
        return first.reason + (f" (also {more})" if more else "")

    def describe(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        f = self.problems[0].field
        return f"{where}: {'field ' + repr(f) + ': ' if f else ''}{self.reason}"


@dataclass
class SourceResult:
    source: str
    format: str
    rows: dict[str, int] = field(default_factory=dict)  # validated rows this source gave, per table
    files: dict[str, list[str]] = field(default_factory=dict)  # files written for this source itself
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale files of an earlier ingest of this source


@dataclass
class RunResult:
    """What the lake holds for one run after its files were merged."""
    run_id: str
    model: str | None
    sources: list[str]  # every file of the run ingested so far, the most advanced first
    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_key(identity: str, table: str) -> str:
    """The Lake.write key of one source's rows in one table: stable across runs, so a re-ingest
    replaces them. Used for tables without a natural key (latency_samples) and for quarantine.
    ``identity`` is the source's (``Ingester.identify``)."""
    digest = hashlib.sha1(f"{identity}\0{table}".encode()).hexdigest()[:16]
    return f"ingest-{digest}"


def content_digest(path: str) -> str:
    """sha1 of a file's bytes, or of a folder's files (relative paths and contents, in order)."""
    h = hashlib.sha1()
    if os.path.isdir(path):
        for parent, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(parent, name)
                h.update(os.path.relpath(full, path).encode() + b"\0")
                with open(full, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha1").digest())
    else:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha1").digest())
    return h.hexdigest()


def run_key(run_id: str) -> str:
    """The Lake.write key of one run's rows in a keyed table: all files of a run share it."""
    return f"ingest-run-{_digest(run_id)}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _input_schema(table: Table) -> pa.Schema:
    return pa.schema([f for f in table.schema if f.name != "date"])  # conform() derives the date


KEYED = tuple(n for n in LOADABLE if TABLES[n].key)  # one row per key: merged per run
UNKEYED = tuple(n for n in LOADABLE if not TABLES[n].key)  # raw samples: kept per source file
ENDED = ("completed", "failed", "diverged", "killed")
STAMPED_BY = {"train_steps": "step", "step_metrics": "step", "eval_results": "checkpoint_step"}
STAGE_ROWS = 1 << 18  # rows of one table gathered before they are staged as one part
WRITERS = 2  # partitions of a run's rows encoded as Parquet at once


class _Moved(Exception):
    """The source read is one known by another identity (its bytes were ingested before as that)."""

    def __init__(self, identity: str, digest: str):
        super().__init__(identity)
        self.identity, self.digest = identity, digest


class _Listing:
    """Files already in the lake, by table and file name, listed once per ingest and kept up to
    date by this module's own writes and deletes."""

    def __init__(self, lake: Lake):
        self.lake, self._by_table = lake, {}

    def of(self, table: str) -> dict[str, list[str]]:
        if table not in self._by_table:
            self._by_table[table] = self.lake.list_files(table)
        return self._by_table[table]

    def replace(self, table: str, key: str, written: list[str]) -> list[str]:
        """Record that ``key``'s files in ``table`` are now exactly ``written``: delete the others
        (those an earlier write left in partitions the new rows no longer touch). Returns them."""
        name = f"{key}.parquet"
        keep = {os.path.normpath(p) for p in written}
        stale = [p for p in self.of(table).get(name, []) if os.path.normpath(p) not in keep]
        removed = [p for p in stale if self.lake.delete(p)]  # Lake.write may have removed some
        if written:
            self.of(table)[name] = list(written)
        else:
            self.of(table).pop(name, None)
        return removed


class _Store:
    """``<lake>/_ingest/``: what each source file gave, kept so that a run's rows can be rebuilt from
    all of its files in any order (see the module docstring). No reader lists this folder.

        sources/<source digest>/record.json         the file's path, format, clock and runs: each run's
                                                    rank and, per table, where its rows lie, how many
                                                    there are and whether they come in partition order
        sources/<source digest>/<table>-<g>-<n>.arrow  its validated rows, all runs, in parts (Arrow IPC,
                                                    lz4): one record batch per run and part, file order
        sources/<source digest>/<table>.parquet     the same as an earlier version kept it (one file, one
                                                    row per key), still read
        runs/<run digest>.json                      the run id and the digests of every file of the run
        content/<sha1 of the bytes>.json            the identity of the first source with these bytes
        paths/<real path digest>.json               the identity a path was ingested as, when not the path

    A source's digest is that of its identity (``Ingester.identify``): its real path, or the name
    given with ``--source-name``, or the source whose bytes it repeats. Rows are kept as Arrow, not
    Python objects, and read back one run's record batches at a time: a 2 M-row log is not 12 times
    its size in memory.
    """

    def __init__(self, lake: Lake):
        self.lake, self.root = lake, f"{lake.root}/_ingest"
        self._records: dict[str, dict | None] = {}
        self._old: dict[tuple[str, str], pa.Table] = {}  # records of an earlier version: read once

    # files
    def _read(self, path: str) -> bytes | None:
        try:
            with self.lake.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write(self, path: str, data: bytes) -> None:
        self.lake.put_bytes(path, data)

    def _delete(self, path: str) -> None:
        self.lake.delete(path)

    def _json(self, path: str):
        data = self._read(path)
        return json.loads(data) if data is not None else None

    # sources
    def record(self, skey: str) -> dict | None:
        if skey not in self._records:
            self._records[skey] = self._json(f"{self.root}/sources/{skey}/record.json")
        return self._records[skey]

    def part_path(self, skey: str, table: str, gen: int, n: int) -> str:
        return f"{self.root}/sources/{skey}/{table}-{gen}-{n:05d}.arrow"

    def put_part(self, path: str, batches: list[pa.RecordBatch]) -> None:
        def write(f):  # streamed to the file: a part in memory whole costs its pages twice
            with pa.ipc.new_file(f, batches[0].schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
                for b in batches:
                    w.write_batch(b)

        self.lake.put_file(path, write, ".arrow")

    def commit(self, skey: str, record: dict, parts: dict[str, int]) -> None:
        """Record what the source gave (its parts are written) and delete what an earlier ingest of it
        staged that this one does not name."""
        old = self.record(skey) or {}
        base = f"{self.root}/sources/{skey}"
        keep = {self.part_path(skey, t, record["gen"], n) for t, k in parts.items() for n in range(k)}
        for t in old.get("tables", []):
            if "gen" not in old:
                self._delete(f"{base}/{t}.parquet")
            for n in range(old.get("parts", {}).get(t, 0)):
                if (p := self.part_path(skey, t, old["gen"], n)) not in keep:
                    self._delete(p)
        record = {**record, "tables": sorted(parts), "parts": dict(sorted(parts.items()))}
        self._write(f"{base}/record.json", json.dumps(record, sort_keys=True, indent=1).encode())
        self._records[skey] = record

    def rows(self, skey: str, table: str, run_id: str, rec: dict | None = None) -> Iterator[pa.Table]:
        """The source's rows of ``run_id`` in ``table`` (ingest's input schema), a record batch at a
        time, in file order; ``rec``: a record not committed yet."""
        rec = rec if rec is not None else self.record(skey) or {}
        if "gen" not in rec:  # kept by an earlier version: one Parquet file of the source's rows
            if table not in rec.get("tables", []):
                return
            if (skey, table) not in self._old:
                path = f"{self.root}/sources/{skey}/{table}.parquet"
                self._old[(skey, table)] = pq.read_table(path, filesystem=self.lake.fs,
                                                         schema=_input_schema(TABLES[table]))
            data = self._old[(skey, table)]
            yield data.filter(pc.equal(data.column("run_id"), run_id))
            return
        where = rec["runs"].get(_digest(run_id), {}).get("tables", {}).get(table, {}).get("batches", [])
        files: dict[int, pa.ipc.RecordBatchFileReader] = {}
        for part, batch in where:
            if part not in files:
                files[part] = pa.ipc.open_file(self.lake.fs.open_input_file(self.part_path(skey, table, rec["gen"], part)))
            yield pa.Table.from_batches([files[part].get_batch(batch)])

    # aliases: the source a file's bytes (content/<sha1>) or a real path (paths/<digest>) belong to
    def alias(self, kind: str, digest: str) -> str | None:
        found = self._json(f"{self.root}/{kind}/{digest}.json")
        return found["identity"] if found else None

    def set_alias(self, kind: str, digest: str, identity: str, replace: bool = True) -> None:
        now = self.alias(kind, digest)
        if now != identity and (replace or now is None):
            self._write(f"{self.root}/{kind}/{digest}.json", json.dumps({"identity": identity}).encode())

    # runs
    def run_index(self, rkey: str) -> dict | None:
        return self._json(f"{self.root}/runs/{rkey}.json")

    def link(self, rkey: str, run_id: str, skey: str, present: bool) -> None:
        """Add (``present``) or remove a source from a run's index; an index left empty is deleted."""
        existing = self.run_index(rkey)
        before = set(existing["sources"]) if existing else set()
        after = before | {skey} if present else before - {skey}
        if existing is not None and after == before or existing is None and not after:
            return
        path = f"{self.root}/runs/{rkey}.json"
        if after:
            self._write(path, json.dumps({"run_id": run_id, "sources": sorted(after)}, indent=1).encode())
        else:
            self._delete(path)


class _Facts:
    """What the merge and the ranks need to know of one table's rows of one source, gathered part by
    part as the rows are staged, so nothing holds all of them: per run (per source for a table
    without a key) the rows, the furthest step, whether the rows come in partition order (one
    model/hardware, dates never going back: then they can be written as they are read), whether the
    key only grows (then no key repeats; else the keys are counted at the end)."""

    def __init__(self, table: str, by_run: bool = True):
        self.table, self.by_run = TABLES[table], by_run
        key = self.table.key
        self.step = key[1] if len(key) == 2 and pa.types.is_integer(self.table.schema.field(key[1]).type) else None
        self.rows: dict[str, int] = {}
        self.furthest: dict[str, int] = {}
        self.in_order: dict[str, bool] = {}
        self.growing: dict[str, bool] = {}
        self.place: dict[str, tuple] = {}
        self._last: dict[str, tuple] = {}  # run -> (last key value, last date)

    def groups(self, part: pa.Table) -> list[tuple[str, np.ndarray]]:
        """(run id, row positions) per run in ``part``, positions ascending; one group without runs."""
        if not self.by_run:
            return [("", np.arange(part.num_rows))]
        enc = pc.dictionary_encode(part.column("run_id")).combine_chunks()
        codes = enc.indices.to_numpy(zero_copy_only=False)
        names = enc.dictionary.to_pylist()
        if len(names) == 1:
            return [(names[0], np.arange(part.num_rows))]
        order = np.argsort(codes, kind="stable")
        cuts = np.flatnonzero(np.diff(codes[order])) + 1
        return [(names[codes[g[0]]], g) for g in np.split(order, cuts)]

    def update(self, part: pa.Table, groups: list[tuple[str, np.ndarray]]) -> None:
        t = self.table
        days = pc.cast(part.column(t.time_column), pa.date32()).cast(pa.int32()).to_numpy(zero_copy_only=False)
        model, hardware = part.column("model"), part.column("hardware")
        step = part.column(self.step).to_numpy(zero_copy_only=False) if self.step else None
        stamped = STAMPED_BY.get(t.name)
        col = part.column(stamped).to_numpy(zero_copy_only=False) if stamped else None
        whole = len(groups) == 1
        for run, pos in groups:
            d = days if whole else days[pos]
            place = (model[int(pos[0])].as_py(), hardware[int(pos[0])].as_py())
            last = self._last.get(run)
            ordered = bool((np.diff(d) >= 0).all()) and self.place.get(run, place) == place and (
                last is None or d[0] >= last[1]) and self.in_order.get(run, True)
            if ordered and len(pos) > 1:  # one model/hardware in the group too
                ordered = all(pc.all(pc.equal(c if whole else c.take(pos), v)).as_py()
                              for c, v in ((model, place[0]), (hardware, place[1])))
            grows = False
            if step is not None:
                s = step[pos]
                grows = bool((np.diff(s) > 0).all()) and (last is None or s[0] > last[0]) and \
                    self.growing.get(run, True)
            self.in_order[run], self.growing[run] = ordered, grows
            self.place.setdefault(run, place)
            self._last[run] = (int(step[pos[-1]]) if step is not None else None, int(d[-1]))
            self.rows[run] = self.rows.get(run, 0) + len(pos)
            if col is not None:
                valid = col[pos][~np.isnan(col[pos].astype(np.float64))] if col.dtype.kind == "f" else col[pos]
                if len(valid):
                    self.furthest[run] = max(self.furthest.get(run, -1), int(valid.max()))


class Ingester:
    """One ``mhw ingest`` call: ``add`` (or ``add_jsonl``) each source (validate, quarantine, stage its
    rows), then ``finish`` to rebuild every run the sources touched from all of that run's files."""

    def __init__(self, lake: Lake, now: datetime | None = None):
        self.lake, self.now = lake, now or datetime.now(timezone.utc)
        self.listing, self.store = _Listing(lake), _Store(lake)
        self.dirty: dict[str, str] = {}  # run digest -> run id

    def identify(self, path: str, digest: str | None, name: str | None = None) -> str:
        """The identity a source is recorded under, so that one file is one source however it is
        reached: the name the user gave (``--source-name``); else the real path (a symlink is its
        target) when that was ingested before; else the identity of an earlier source with the same
        bytes (a hard link, a copy, a re-export, the same content through a pipe); else the real path
        (or, for a pipe, ``content:<sha1>``)."""
        if name:
            return f"name:{name}"
        real = os.path.realpath(path) if path is not None else None
        if real is not None:
            known = self.store.alias("paths", _digest(real))
            if known is not None:
                return known
            if self.store.record(_digest(real)) is not None:
                return real
        owner = self.store.alias("content", digest) if digest else None
        return owner or real or f"content:{digest}"

    def add(self, parsed: Parsed, shown_as: str, fill: dict | None = None, identity: str | None = None,
            digest: str | None = None, path: str | None = None) -> SourceResult:
        """Validate ``parsed``'s records row by row, quarantine the bad ones and stage the good ones,
        replacing whatever an earlier ingest of the same source (``identity``: see ``identify``;
        default the file's real path) gave. ``digest`` (the content's sha1) and ``path`` (where the
        file lies; None for a pipe) are remembered for ``identify``."""
        result = SourceResult(shown_as, parsed.format, notes=list(parsed.notes))
        good = self._validate(parsed, shown_as, fill, result)
        parts = ((name, pa.Table.from_pylist(rows, schema=_input_schema(TABLES[name]))) for name, rows in good.items())
        return self._add(parts, result, parsed.clock, identity or os.path.realpath(parsed.source), digest, path)

    def add_jsonl(self, source: str, table: str | None, shown_as: str, fill: dict | None = None,
                  identity: str | None = None, digest: str | None = None, path: str | None = None,
                  resolve=None) -> SourceResult:
        """``add`` for a JSON-lines file, read in blocks and validated in columns
        (warehouse/jsonl_columns.py): the same rows and rejects as ``add(parse(source))``, in memory
        that does not grow with the file. Without ``digest``, the bytes are hashed as they are read
        (read once), and ``resolve(digest)`` then gives the source's identity (``identify``): where
        that is not ``identity`` (a copy of a source ingested before), nothing is kept and _Moved
        says which it is."""
        result = SourceResult(shown_as, "jsonl")

        def row_path(lineno, line, size):
            rec = jsonl_record(table, lineno, line, size)
            return None if rec is None else self._check(rec, shown_as, fill)

        reader = jsonl_columns.Reader(table, _fills(fill), row_path)
        hashed = hashlib.sha1() if digest is None else None

        def parts():
            try:
                with open(source, "rb") as f:
                    for block in reader.blocks(f, hashed.update if hashed else None):
                        result.rejects += block.rejects
                        yield from block.rows.items()
            except OSError as e:
                raise SourceError(f"{source}: cannot read: {e.strerror or e}") from e

        def settle() -> tuple[str, str | None]:
            if hashed is None:
                return identity, digest
            read = hashlib.sha1(hashed.digest()).hexdigest()  # content_digest of a file
            return (resolve(read) if resolve else identity), read

        return self._add(parts(), result, None, identity or os.path.realpath(source), digest, path, settle)

    def _add(self, parts, result: SourceResult, clock: StepClock | None, identity: str, digest: str | None,
             path: str | None, settle=None) -> SourceResult:
        """Stage validated rows (``(table, Arrow rows)`` in file order) as they come, then record the
        source, link it to its runs and write its quarantine rows and its tables without a key.
        ``settle()``, once the rows are staged, gives (identity, digest) when they were not known
        before: a source that turns out to be another is abandoned (_Moved)."""
        skey = _digest(identity)
        previous = (self.store.record(skey) or {}).get("runs", {})
        stage = _Staging(self.store, skey, (self.store.record(skey) or {}).get("gen", 0) + 1)
        spool = tempfile.mkdtemp(prefix="mhw-ingest-rows-")
        try:
            try:
                for name, rows in parts:
                    stage.add(name, rows, spool)
                stage.flush()
                if settle is not None:
                    settled, digest = settle()
                    if settled != identity:
                        raise _Moved(settled, digest)
            except BaseException:
                stage.abandon()  # parts of a source never recorded: nothing names them
                raise

            # Tables without a natural key: the source's rows under the source's own key, as given.
            for name in UNKEYED:
                key, written = write_key(identity, name), []
                if name in stage.spooled:
                    res = self._write_rows(name, key, stage.spooled_rows(name), stage.facts[name].in_order.get("", False))
                    result.rows[name], result.files[name], written = res.rows, res.files, res.files
                result.removed += self.listing.replace(name, key, written)
        finally:
            shutil.rmtree(spool, ignore_errors=True)

        # Keyed tables: record the source, then link it to its runs (and unlink it from runs it left).
        counts = stage.keys()
        for name in KEYED:
            if name in counts:
                total, kept = sum(stage.facts[name].rows.values()), sum(counts[name].values())
                if kept < total:
                    result.notes.append(f"{total - kept} {name} rows repeat an earlier ({', '.join(TABLES[name].key)}) "
                                        f"of this source; the later one is kept")
        ranks = _ranks(stage, counts, clock)
        record = {"source": result.source, "format": result.format, "clock": _clock_json(clock), "gen": stage.gen,
                  "runs": {_digest(r): {"run_id": r, "rank": ranks[r], "tables": stage.where(r, counts)}
                           for r in sorted(ranks)}}
        self.store.commit(skey, record, stage.parts)
        if digest:
            self.store.set_alias("content", digest, identity, replace=False)
        if path is not None and os.path.realpath(path) != identity:
            self.store.set_alias("paths", _digest(os.path.realpath(path)), identity)
        for rkey, info in record["runs"].items():
            self.store.link(rkey, info["run_id"], skey, present=True)
            self.dirty[rkey] = info["run_id"]
        for rkey, info in previous.items():
            if rkey not in record["runs"]:
                self.store.link(rkey, info["run_id"], skey, present=False)
                self.dirty[rkey] = info["run_id"]
        for name in KEYED:
            if name in counts:
                result.rows[name] = sum(counts[name].values())
            # files of the per-file keys an earlier version of ingest wrote: the run's key replaces them
            result.removed += self.listing.replace(name, write_key(identity, name), [])

        key, written = write_key(identity, "quarantine"), []
        if result.rejects:
            q = [{"target_table": r.target_table, "source": r.file or result.source, "line": r.line,
                  "field": r.problems[0].field, "reason": r.reason, "raw": r.raw, "ingested_at": self.now}
                 for r in result.rejects]
            res = self.lake.write("quarantine", pa.Table.from_pylist(q, schema=_input_schema(TABLES["quarantine"])), key)
            result.files["quarantine"], written = res.files, res.files
        result.removed += self.listing.replace("quarantine", key, written)
        return result

    def _validate(self, parsed: Parsed, shown_as: str, fill: dict | None, result: SourceResult) -> dict[str, list]:
        good: dict[str, list[dict]] = {}
        for rec in parsed.records:
            got = self._check(rec, shown_as, fill)
            if isinstance(got, Reject):
                result.rejects.append(got)
            else:
                good.setdefault(got[0], []).append(got[1])
        return good

    def _check(self, rec: Record, shown_as: str, fill: dict | None) -> tuple[str, dict] | Reject:
        """One candidate row: (its table, the typed row), or why it is rejected."""
        target = rec.table if isinstance(rec.table, str) and rec.table in LOADABLE else None
        if rec.error:
            problems = [_problem_from(rec.error)]
        elif rec.table is None:
            problems = [Problem("table", "missing table", "no 'table' field on the line and no --table")]
        elif target is None:
            problems = [Problem("table", "unknown table", f"{_show(rec.table)} is not one of {', '.join(LOADABLE)}")]
        else:
            values = rec.values
            if fill and isinstance(values, dict):
                names = TABLES[target].schema.names
                values = {**{k: v for k, v in fill.items() if k in names}, **values}
            row, problems = validate(TABLES[target], values)
            if row is not None:
                return target, row
        return Reject(rec.file or shown_as, rec.line, target, problems, rec.raw, rec.file)

    def _write_rows(self, name: str, key: str, parts, in_order: bool) -> WriteResult:
        """Write rows under ``key`` as Lake.write would. Rows that come in partition order are written
        a partition at a time as they are read (memory: WRITERS + 1 partitions, encoded side by side);
        others are gathered and handed to Lake.write whole."""
        if not in_order:
            data = pa.concat_tables(list(parts))
            return self.lake.write(name, data, key) if data.num_rows else WriteResult()
        table, res = TABLES[name], WriteResult()
        pending, where, done = [], None, set()
        jobs: deque = deque()
        written: list[WriteResult] = []
        with self.lake.transaction() as tx, ThreadPoolExecutor(WRITERS, thread_name_prefix="mhw-write") as pool:
            def put(values, pending):  # Parquet encoding lets go of the GIL: partitions are written side by side
                if pending:
                    jobs.append(pool.submit(self._put, table, key, values, pending, tx))
                while len(jobs) > WRITERS:
                    written.append(jobs.popleft().result())

            for part in parts:
                if not part.num_rows:
                    continue
                data = conform(table, part)
                for values, piece in _partition_runs(table, data):
                    if values != where:
                        put(where, pending)
                        if values in done:  # the staging checked the order; a failure here is a bug, not data
                            raise RuntimeError(f"{name} rows of {key} are not in partition order")
                        pending, where = [], values
                        done.add(values)
                    pending.append(piece)
            put(where, pending)
            written += [j.result() for j in jobs]
        for w in written:
            res += w
        return res

    def _put(self, table: Table, key: str, values: tuple, pending: list, tx) -> WriteResult:
        data = pa.concat_tables(pending)
        path = f"{self.lake.partition_dir(table, dict(zip(table.partition_by, values)))}/{key}.parquet"
        self.lake.put_file(path, parquet_bytes(data.select(table.file_schema.names)), ".parquet", tx)
        return WriteResult(data.num_rows, [path])

    def finish(self) -> list[RunResult]:
        """Rebuild each touched run from all of its files: one row per key, the most advanced file's
        row winning, every derived timestamp on that file's clock."""
        return [self._merge(rkey, run_id) for rkey, run_id in sorted(self.dirty.items(), key=lambda kv: kv[1])]

    def _merge(self, rkey: str, run_id: str) -> RunResult:
        index = self.store.run_index(rkey) or {"sources": []}
        ranked = []
        for skey in index["sources"]:
            rec = self.store.record(skey)
            if rec and rkey in rec.get("runs", {}):
                ranked.append((skey, rec))
        # the most advanced file first (see _rank); the path breaks ties
        ranked.sort(key=lambda sr: (*(-x for x in sr[1]["runs"][rkey]["rank"]), sr[1]["source"]))
        clock = next((_clock(rec["clock"]) for _, rec in ranked if rec.get("clock")), None)
        out = RunResult(run_id, None, [rec["source"] for _, rec in ranked])

        # Per table: one source whose rows come in partition order with no key twice is streamed as
        # it is read (a big log: memory one partition); any other mix is merged in Arrow.
        merged: dict[str, pa.Table | tuple] = {}
        for name in KEYED:
            having = [(i, skey, rec) for i, (skey, rec) in enumerate(ranked) if _may_have(rec, rkey, name)]
            if not having:
                continue
            if name == "runs":
                rows = [r for _, skey, rec in having for r in _last_per_run(self.store.rows(skey, name, run_id))]
                if rows:
                    merged[name] = pa.Table.from_pylist([_merge_run_rows(rows, rows[0])],
                                                        schema=_input_schema(TABLES[name]))
                continue
            facts = having[0][2]["runs"][rkey].get("tables", {}).get(name)
            restamp = clock is not None and having[0][2].get("clock") is not None and name in STAMPED_BY
            if len(having) == 1 and facts and facts["in_order"] and facts["keys"] == facts["rows"] and not restamp:
                merged[name] = (having[0][1], facts)
            else:
                pieces = [(i, pa.concat_tables([*self.store.rows(skey, name, run_id), _input_schema(TABLES[name]).empty_table()]))
                          for i, skey, rec in having]
                data = _winners(name, pieces, {i for i, _, rec in having if rec.get("clock")}, clock)
                if data.num_rows:
                    merged[name] = data

        # One run lives in one model/hardware partition: its runs row says which.
        where = None
        if "runs" in merged:
            where = {k: merged["runs"].column(k)[0].as_py() for k in ("model", "hardware")}
            out.model = where["model"]
            for name, data in merged.items():
                moved = _moved(data, where)
                if moved:
                    out.notes.append(f"{moved} {name} rows named another model/hardware; stored under the run's "
                                     f"{where['model']}/{where['hardware']}")
        elif merged:
            first = merged[next(n for n in KEYED if n in merged)]
            out.model = first[1]["place"][0] if isinstance(first, tuple) else first.column("model")[0].as_py()

        key = run_key(run_id)
        for name in KEYED:
            data, written = merged.get(name), []
            if isinstance(data, tuple):  # streamed from its one source
                skey, facts = data
                parts = (_placed(t, where) for t in self.store.rows(skey, name, run_id))
                res = self._write_rows(name, key, parts, in_order=True)
            elif data is not None:
                res = self.lake.write(name, _placed(data, where), key)
            if data is not None:
                out.rows[name], out.files[name], written = res.rows, res.files, res.files
            self.listing.replace(name, key, written)
            if data is not None and self.lake.local:
                keys = (lambda d=data, n=name: self._keys_of(n, run_id, d))
                out.notes += self._strip_compacted(name, run_id, keys, _places(data, where))
        return out

    def _keys_of(self, name: str, run_id: str, data) -> set[tuple]:
        cols = list(TABLES[name].key)
        if isinstance(data, tuple):
            parts = [t.select(cols) for t in self.store.rows(data[0], name, run_id)]
            data = pa.concat_tables(parts)
        return set(zip(*(data.column(c).to_pylist() for c in cols)))

    def _strip_compacted(self, table: str, run_id: str, keys, wheres: set[str]) -> list[str]:
        """Take the run's keys out of compacted files of its partitions. Compaction
        (``pipelines/maintenance.py``) folds the run's own files into ``compacted-*`` files, which the
        run's key no longer replaces; without this a file of the run ingested afterwards would store
        those keys twice. Only keys the run now holds are removed (rows of the same run id written by
        something else, e.g. a live training, stay). Each file is rewritten in place, one rename.
        ``keys()`` gives the run's keys, read only when a compacted file holds the run."""
        cols = TABLES[table].key
        removed = files = 0
        held = None
        for name, paths in list(self.listing.of(table).items()):
            if not name.startswith("compacted-"):
                continue
            for p in [p for p in paths if any(w in p.replace(os.sep, "/") for w in wheres)]:
                ids = pq.read_table(p, columns=["run_id"], filesystem=self.lake.fs).column("run_id")
                if not pc.any(pc.equal(ids, run_id)).as_py():
                    continue
                held = keys() if held is None else held
                data = pq.read_table(p, filesystem=self.lake.fs, schema=TABLES[table].file_schema)
                mine = pc.equal(data.column("run_id"), run_id).to_numpy(zero_copy_only=False)
                drop = np.zeros(data.num_rows, bool)
                at = np.flatnonzero(mine)
                if len(at):
                    sub = data.take(at)
                    found = [k in held for k in zip(*(sub.column(c).to_pylist() for c in cols))]
                    drop[at[np.array(found, bool)]] = True
                if not drop.any():
                    continue
                if drop.all():
                    self.lake.delete(p)
                    paths.remove(p)
                else:
                    self.lake.put_table(p, data.filter(pa.array(~drop)))
                removed, files = removed + int(drop.sum()), files + 1
        return [f"{removed} {table} rows of the run were also in {files} compacted file(s): taken out there"] if files else []


class _Staging:
    """One source's validated rows on their way to its ingest record: gathered per table up to
    STAGE_ROWS, then written as one part (a record batch per run), with the facts of each run."""

    def __init__(self, store: _Store, skey: str, gen: int):
        self.store, self.skey, self.gen = store, skey, gen
        self.facts = {name: _Facts(name, by_run=name in KEYED) for name in LOADABLE}
        self.parts: dict[str, int] = {}  # table -> parts written
        self.batches: dict[tuple[str, str], list] = {}  # (table, run) -> [[part, batch], ...]
        self.spooled: dict[str, list[str]] = {}  # table without a key -> files of its rows (temporary)
        self.runs: dict[str, dict] = {}  # run -> its last runs row
        self._pending: dict[str, list[pa.Table]] = {}
        self._written: list[str] = []

    def add(self, name: str, rows: pa.Table, spool: str) -> None:
        if not rows.num_rows:
            return
        if name in UNKEYED:
            self.facts[name].update(rows, self.facts[name].groups(rows))
            path = os.path.join(spool, f"{name}-{len(self.spooled.get(name, []))}.arrow")
            with pa.ipc.new_file(path, rows.schema) as w:
                w.write_table(rows)
            self.spooled.setdefault(name, []).append(path)
            return
        self._pending.setdefault(name, []).append(rows)
        if sum(t.num_rows for t in self._pending[name]) >= STAGE_ROWS:
            self._flush(name)

    def flush(self) -> None:
        for name in list(self._pending):
            self._flush(name)

    def _flush(self, name: str) -> None:
        data = pa.concat_tables(self._pending.pop(name))
        facts = self.facts[name]
        groups = facts.groups(data)
        facts.update(data, groups)
        n = self.parts.get(name, 0)
        batches = []
        for run, pos in groups:  # record batches of one run each: the merge reads only its run's rows
            piece = data.take(pos) if len(groups) > 1 else data
            for b in piece.to_batches():
                self.batches.setdefault((name, run), []).append([n, len(batches)])
                batches.append(b)
        if name == "runs":
            for r in data.to_pylist():
                self.runs[r["run_id"]] = {k: v for k, v in r.items() if v is not None}
        path = self.store.part_path(self.skey, name, self.gen, n)
        self.store.put_part(path, batches)
        self._written.append(path)
        self.parts[name] = n + 1

    def abandon(self) -> None:
        for p in self._written:
            self.store._delete(p)

    def spooled_rows(self, name: str):
        for path in self.spooled[name]:
            with pa.memory_map(path) as f:
                yield pa.ipc.open_file(f).read_all()

    def keys(self) -> dict[str, dict[str, int]]:
        """Distinct keys per keyed table and run: the row count where the key only grew, else counted
        from the staged rows of that run (key columns only)."""
        out: dict[str, dict[str, int]] = {}
        for name in KEYED:
            facts = self.facts[name]
            for run, n in facts.rows.items():
                if name == "runs":
                    k = 1
                elif facts.growing.get(run):
                    k = n
                else:
                    cols = list(TABLES[name].key)
                    rec = {"gen": self.gen, "runs": {_digest(run): {"tables": {name: {"batches": self.batches[(name, run)]}}}}}
                    data = pa.concat_tables([t.select(cols) for t in self.store.rows(self.skey, name, run, rec)])
                    k = data.group_by(cols, use_threads=False).aggregate([]).num_rows
                out.setdefault(name, {})[run] = k
        return out

    def where(self, run: str, counts: dict[str, dict[str, int]]) -> dict:
        """What the record keeps of one run's rows per table: where they lie and what the merge needs."""
        out = {}
        for name in KEYED:
            facts = self.facts[name]
            if run in facts.rows:
                out[name] = {"batches": self.batches[(name, run)], "rows": facts.rows[run], "keys": counts[name][run],
                             "in_order": facts.in_order[run], "place": list(facts.place[run])}
        return out


def _fills(fill: dict | None) -> dict[str, dict[str, tuple[bool, object]]]:
    """The run-metadata flags per table, converted once as the row path converts them: (True, value),
    or (False, None) for a value that does not fit (rows that need it then take the row path)."""
    out = {}
    for name in LOADABLE:
        t, cols = TABLES[name], {}
        for k, v in (fill or {}).items():
            if k in t.schema.names and v is not None:
                try:
                    cols[k] = (True, _converter(t.schema.field(k).type, t.max_chars(k))(v))
                except _Bad:
                    cols[k] = (False, None)
        out[name] = cols
    return out


def _ranks(stage: "_Staging", counts: dict[str, dict[str, int]], clock: StepClock | None) -> dict[str, list]:
    """How far a source got in each of its runs: (furthest step, has ended, knows its timing, rows).
    Timing: a derived clock with no run time (a checkpoint saved before the Trainer's summary) stamps
    every row alike, so of two copies at the same step the one that knows the run time is better."""
    steps: dict[str, int] = {}
    rows: dict[str, int] = {}
    for name in KEYED:
        for rid, k in counts.get(name, {}).items():
            rows[rid] = rows.get(rid, 0) + k
        if name in STAMPED_BY:
            for rid, s in stage.facts[name].furthest.items():
                steps[rid] = max(steps.get(rid, -1), s)
    ended = {}
    for r in stage.runs.values():
        if r.get("steps") is not None:
            steps[r["run_id"]] = r["steps"]
        ended[r["run_id"]] = int(r.get("status") in ENDED or (r.get("ended_at") is not None and r.get("status") is None))
    timed = int(clock is None or clock.span_s > 0)
    return {rid: [int(steps.get(rid, -1)), ended.get(rid, 0), timed, n] for rid, n in rows.items()}


def _may_have(rec: dict, rkey: str, table: str) -> bool:
    """Whether a source's record may hold rows of the run in ``table`` (an earlier version's record
    does not say which tables a run has)."""
    if "gen" in rec:
        return table in rec["runs"][rkey].get("tables", {})
    return table in rec.get("tables", [])


def _last_per_run(parts) -> list[dict]:
    """A source's runs rows of one run as dicts without nulls, the later one where it repeats."""
    last: dict[str, dict] = {}
    for t in parts:
        for r in t.to_pylist():
            last[r["run_id"]] = {k: v for k, v in r.items() if v is not None}
    return list(last.values())


def _starts(t: pa.Table, cols) -> np.ndarray:
    """Rows of ``t`` where ``cols`` differ from the row before (nulls equal to nulls); the first row."""
    n = t.num_rows
    out = np.zeros(n, bool)
    if n:
        out[0] = True
    for c in cols:
        a = t.column(c).combine_chunks()
        x, y = a.slice(1), a.slice(0, n - 1)
        same = pc.or_(pc.fill_null(pc.equal(x, y), False), pc.and_(x.is_null(), y.is_null()))
        out[1:] |= ~same.to_numpy(zero_copy_only=False)
    return out


def _winners(name: str, pieces: list[tuple[int, pa.Table]], clocked: set[int], clock: StepClock | None) -> pa.Table:
    """One row per key of a run from the rows of each of its sources (``pieces``: the source's rank,
    its rows in file order): the best-ranked source's row and, of its rows with that key, the later
    one (the log's final word), placed where the key first came in that source; ranks in
    ``clocked`` read time off a derived clock and are re-stamped with ``clock``."""
    schema, cols = _input_schema(TABLES[name]), list(TABLES[name].key)
    data = pa.concat_tables([t.append_column("_src", pa.array(np.full(t.num_rows, rank, np.int32)))
                             .append_column("_pos", pa.array(np.arange(t.num_rows, dtype=np.int64)))
                             for rank, t in pieces])
    if not data.num_rows:
        return schema.empty_table()
    order = pc.sort_indices(data, sort_keys=[(c, "ascending", "at_end") for c in cols] +
                            [("_src", "ascending", "at_end"), ("_pos", "descending", "at_end")])
    data = data.take(order)
    new_key = _starts(data, cols)
    groups = np.flatnonzero(new_key | _starts(data, ["_src"]))  # (key, source) groups
    ends = np.concatenate([groups[1:], [data.num_rows]]) - 1
    win = np.flatnonzero(new_key)
    first = data.column("_pos").to_numpy()[ends[np.searchsorted(groups, win)]]
    src = data.column("_src").to_numpy()[win]
    out = data.take(win[np.lexsort((first, src))])
    if clock is not None and clocked and name in STAMPED_BY:
        stamped = out.column(STAMPED_BY[name]).to_pylist()
        ts = [clock.at(s) if r in clocked and s is not None else t
              for r, s, t in zip(out.column("_src").to_pylist(), stamped, out.column("ts").to_pylist())]
        out = out.set_column(out.schema.get_field_index("ts"), "ts", pa.array(ts, TS))
    return out.select(schema.names).cast(schema)


def _moved(data, where: dict) -> int:
    """Rows of a run's table that name another model/hardware than its runs row."""
    if isinstance(data, tuple):  # streamed: the facts say its one place
        _, facts = data
        return facts["rows"] if tuple(facts["place"]) != (where["model"], where["hardware"]) else 0
    other = pc.or_(pc.not_equal(data.column("model"), where["model"]),
                   pc.not_equal(data.column("hardware"), where["hardware"]))
    return int(pc.sum(other).as_py() or 0)


def _placed(data: pa.Table, where: dict | None) -> pa.Table:
    """The rows under the run's model/hardware."""
    if where is None or not _moved(data, where):
        return data
    for k in ("model", "hardware"):
        data = data.set_column(data.schema.get_field_index(k), k, pa.nulls(data.num_rows, pa.string()).fill_null(where[k]))
    return data


def _places(data, where: dict | None) -> set[str]:
    """The ``/model=<m>/hardware=<h>/`` folders a run's rows are written under."""
    if where is not None:
        return {f"/model={where['model']}/hardware={where['hardware']}/"}
    if isinstance(data, tuple):
        m, h = data[1]["place"]
        return {f"/model={m}/hardware={h}/"}
    pairs = data.group_by(["model", "hardware"]).aggregate([])
    return {f"/model={m}/hardware={h}/" for m, h in zip(pairs.column("model").to_pylist(), pairs.column("hardware").to_pylist())}


def _partition_runs(table: Table, data: pa.Table):
    """(partition values, rows) for each stretch of ``data`` (conformed) in one partition."""
    starts = np.flatnonzero(_starts(data, table.partition_by))
    for a, b in zip(starts, np.concatenate([starts[1:], [data.num_rows]])):
        yield tuple(data.column(c)[int(a)].as_py() for c in table.partition_by), data.slice(int(a), int(b - a))


# The progress of a run comes from its most advanced file as a whole; descriptive fields any file
# gives fill what that file leaves out.
PROGRESS = ("started_at", "ended_at", "status", "final_loss", "steps", "config_json", "source", "kind")


def _merge_run_rows(ranked_rows: list[dict], best: dict) -> dict:
    row = dict(best)
    for other in ranked_rows:
        for k, v in other.items():
            if k not in PROGRESS and row.get(k) is None and v is not None:
                row[k] = v
    return row


def _clock_json(clock: StepClock | None) -> dict | None:
    if clock is None:
        return None
    return {"started_at": clock.started_at.isoformat(), "span_s": clock.span_s, "max_steps": clock.max_steps}


def _clock(d: dict) -> StepClock:
    return StepClock(datetime.fromisoformat(d["started_at"]), float(d["span_s"]), float(d["max_steps"]))


def _problem_from(error: tuple[str | None, str]) -> Problem:
    field_, reason = error
    kind, _, detail = reason.partition(": ")
    return Problem(field_, kind, detail)


# --- command line -----------------------------------------------------------------------------------

def _timestamp_arg(s: str) -> datetime:
    try:
        return to_timestamp(float(s) if s.replace(".", "", 1).isdigit() else s)
    except _Bad as b:
        raise argparse.ArgumentTypeError(b.detail) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files to load; a directory is an MLflow file store (mlruns/) or a TensorBoard log dir")
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                   help="input format (default: detected from name and content)")
    p.add_argument("--table", choices=LOADABLE, help="JSONL: table of lines that have no 'table' field")
    p.add_argument("--lake", help="lake root (default from config)")
    m = p.add_argument_group(
        "run metadata", "Fill in what a file does not say. Importers take these over the file's own values; "
                        "for JSONL they fill columns a line leaves out. Free-form names become slugs.")
    m.add_argument("--model", help="model name, e.g. distilbert/lora-imdb")
    m.add_argument("--hardware", help="hardware fingerprint, e.g. a100-40gb-x8")
    p.add_argument("--source-name", help="the name this input is recorded under (default: its real path, or for a pipe "
                                          "its content): ingesting the same name again replaces what it gave")
    m.add_argument("--run-id", help="run id (default: the file's own, else a hash of what every copy and checkpoint "
                                    "of the run shares; see the importers' docs)")
    m.add_argument("--precision", help="fp32 | bf16 | fp16 | int8")
    m.add_argument("--model-family", help="architecture family, e.g. bert")
    m.add_argument("--n-params", type=int, help="trainable parameters")
    m.add_argument("--gpu-name", help="device name")
    m.add_argument("--gpu-count", type=int, help="accelerators used")
    m.add_argument("--dataset", help="data set name or path")
    m.add_argument("--code-version", help="git commit or package version")
    m.add_argument("--started-at", type=_timestamp_arg,
                   help="run start, ISO-8601 or epoch seconds (HF Trainer: anchors the derived timestamps)")


def _meta(args) -> tuple[RunMeta, list[str]]:
    notes = []
    names = {}
    for flag in ("model", "hardware"):
        given = getattr(args, flag)
        if given is not None:
            try:
                names[flag] = slugify(given)
            except PartitionError:
                raise SystemExit(f"mhw ingest: --{flag} {given!r} has no letters or digits to make a name of")
            if names[flag] != given:
                notes.append(f"--{flag} {given!r} is stored as {names[flag]!r}")
    meta = RunMeta(run_id=args.run_id, model=names.get("model"), hardware=names.get("hardware"),
                   precision=args.precision, model_family=args.model_family, n_params=args.n_params,
                   gpu_name=args.gpu_name, gpu_count=args.gpu_count, dataset=args.dataset,
                   code_version=args.code_version, started_at=args.started_at)
    return meta, notes


def run(args: argparse.Namespace) -> int:
    with arrow_without_pandas():  # the audit entry too: its row is pyarrow's first conversion
        return _run(args)


@audit.audited("ingest")
def _run(args: argparse.Namespace) -> int:
    if args.lake:
        lake_root = args.lake
    else:
        from warehouse import config

        lake_root = config.load(getattr(args, "config", None)).lake_root
    lake = Lake(lake_root)
    meta, notes = _meta(args)
    for n in notes:
        print(f"note: {n}")
    results, runs, errors = [], [], []
    spool = tempfile.mkdtemp(prefix="mhw-ingest-")
    try:
        # Pipes and FIFOs are read once, before the lake is locked: a slow writer holds up nobody.
        inputs = []
        for path in args.paths:
            if path == "-" or _is_stream(path):
                try:
                    inputs.append((path, *_spool(path, spool)))
                except OSError as e:
                    errors.append(f"{path}: cannot read: {e.strerror or e}")
            else:
                inputs.append((path, path, None))
        if args.source_name and len(inputs) > 1:
            raise SystemExit("mhw ingest: --source-name names one input; give one PATH with it")
        # One transaction: the whole call is seen at once by readers, or (killed) not at all.
        with lake.transaction():
            ingester = Ingester(lake)
            seen: dict[str, str] = {}
            for shown, path, digest in inputs:
                try:
                    found = sources(path, args.format)
                except SourceError as e:
                    errors.append(str(e).replace(path, shown))
                    continue
                for source, fmt in found:
                    piped = digest is not None
                    shown_as = shown if piped else source
                    as_read = fmt == "jsonl" and not piped  # its bytes are hashed as they are parsed: read once
                    try:
                        d = digest or (None if as_read else content_digest(source))
                    except OSError as e:
                        errors.append(f"{source}: cannot read: {e.strerror or e}")
                        continue
                    ident = ingester.identify(None if piped else source, d, args.source_name)
                    if ident in seen:
                        print(f"note: {shown_as} is {seen[ident]} again (same file or same bytes): ingested once")
                        continue
                    seen[ident] = shown_as
                    try:
                        where = None if piped else source
                        if fmt == "jsonl":  # read in blocks, validated in columns; the flags fill what lines leave out
                            def identity_of(read, source=source):
                                return ingester.identify(source, read, args.source_name)

                            try:
                                results.append(ingester.add_jsonl(source, args.table, shown_as, meta.given(), ident,
                                                                  d, where, identity_of if as_read else None))
                            except _Moved as moved:  # the bytes of a source ingested before: that source again
                                if moved.identity in seen:
                                    print(f"note: {shown_as} is {seen[moved.identity]} again (same file or same "
                                          f"bytes): ingested once")
                                    continue
                                seen[moved.identity] = shown_as
                                results.append(ingester.add_jsonl(source, args.table, shown_as, meta.given(),
                                                                  moved.identity, moved.digest, where))
                        else:  # importers placed the flags themselves
                            parsed = parse(source, fmt, meta, args.table)
                            results.append(ingester.add(parsed, shown_as, None, ident, d, where))
                    except SourceError as e:
                        errors.append(str(e).replace(source, shown) if piped else str(e))
            runs = ingester.finish()
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    audit.record(**_counts(results, errors))  # committed: the audit entry's counts
    _report(results, runs, errors, lake, sys.stdout)
    for e in errors:
        print(f"mhw ingest: error: {e}", file=sys.stderr)
    if errors:
        audit.error("; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""))
        return 2
    if not any(r.rows for r in results):
        print("mhw ingest: nothing ingested", file=sys.stderr)
        audit.error("nothing ingested")
        return 1
    return 0


def _counts(results: list[SourceResult], errors: list[str]) -> dict:
    """What one ingest call did, for its audit entry."""
    return {"rows_in": sum(sum(r.rows.values()) for r in results),
            "rows_quarantined": sum(len(r.rejects) for r in results),
            "files_deleted": sum(len(r.removed) for r in results),
            "sources": [r.source for r in results], "files_failed": len(errors)}


def _is_stream(path: str) -> bool:
    """A pipe, FIFO, socket or character device (``<(cmd)``, ``/dev/stdin``, ``mkfifo``): bytes that
    can be read only once."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def _spool(path: str, folder: str) -> tuple[str, str]:
    """Copy a stream, read once and in blocks, to a file in ``folder``; (that file, sha1 of the bytes).
    The file keeps the stream's name when it has an extension (format detection reads names)."""
    name = os.path.basename(path)
    name = name if "." in name else "stdin"
    out = os.path.join(folder, f"{len(os.listdir(folder))}", name)
    os.makedirs(os.path.dirname(out))
    h = hashlib.sha1()
    src = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        with open(out, "wb") as f:
            while block := src.read(1 << 20):
                h.update(block)
                f.write(block)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    return out, h.hexdigest()


def _report(results: list[SourceResult], runs: list[RunResult], errors: list[str], lake: Lake, out) -> None:
    for r in results:
        per_table = ", ".join(f"{t} {n}" for t, n in r.rows.items())
        rejected = f", {len(r.rejects)} rejected" if r.rejects else ""
        out.write(f"{r.source} [{r.format}]: {sum(r.rows.values())} rows ({per_table or 'none'}){rejected}\n")
        for n in r.notes:
            out.write(f"  note: {n}\n")
    totals, files = Counter(), Counter()
    for r in results:  # tables without a key are written per file, the keyed ones per run
        totals.update({t: n for t, n in r.rows.items() if t in UNKEYED})
        files.update({t: len(f) for t, f in r.files.items() if t in UNKEYED})
    for run in runs:
        totals.update(run.rows)
        files.update({t: len(f) for t, f in run.files.items()})
    if totals:
        out.write(f"written to {lake.uri} (rows the lake now holds for the runs and files ingested):\n")
        width = max(len(t) for t in totals)
        for t in LOADABLE:
            if t in totals:
                out.write(f"  {t:<{width}}  {totals[t]:>7} rows  {files[t]:>3} files\n")
    for run in runs:
        if len(run.sources) > 1 or run.notes:
            stored = ", ".join(f"{t} {n}" for t, n in run.rows.items()) or "nothing"
            out.write(f"run {run.run_id} ({run.model}): {len(run.sources)} files, one row per key: {stored}; "
                      f"most advanced file: {run.sources[0] if run.sources else '-'}\n")
            for n in run.notes:
                out.write(f"  note: {n}\n")
    rejects = [j for r in results for j in r.rejects]
    if rejects:
        out.write(f"rejected {len(rejects)} rows (kept in the quarantine table):\n")
        for j in rejects[:SHOWN_REJECTS]:
            out.write(f"  {j.describe()}\n")
        if len(rejects) > SHOWN_REJECTS:
            out.write(f"  ... and {len(rejects) - SHOWN_REJECTS} more\n")
        by_kind = Counter(j.problems[0].kind for j in rejects)
        out.write("  by reason: " + ", ".join(f"{k} {n}" for k, n in by_kind.most_common()) + "\n")
    if errors:
        out.write(f"{len(errors)} file(s) could not be ingested (see errors)\n")
