"""``mhw ingest``: load JSONL, Hugging Face Trainer, TensorBoard and MLPerf logs into the lake.

    mhw ingest steps.jsonl --table train_steps --model gpt2-small --hardware a100-40gb-x1
    mhw ingest out/trainer_state.json --model distilbert/lora-imdb --hardware t4-x1 --precision fp16
    mhw ingest runs/ --format tensorboard --model my-model --hardware cpu
    mhw ingest bert_mlperf.log                    # model/hardware from submission_benchmark/_platform

The importers in ``model/importers/`` turn each file into candidate rows; this module is the one
place that checks them against ``warehouse.schemas`` and writes them, the same way for every format:

- a row that does not fit its table (wrong type, missing required column, unparseable timestamp,
  unknown field, a model/hardware that is not a slug, a line that is not a JSON object or not JSON at
  all) goes to the ``quarantine`` table with file, line, field, reason and the raw row. Nothing is
  silently dropped. NaN and +-inf are data and are kept.
- every file's rows are written under a key derived from the file's absolute path and the table, and
  files of that key left in other partitions are removed, so ingesting a file again replaces its own
  rows (and its own quarantine rows) instead of adding to them.

Exit status: 0 when rows were written (even with rejects), 1 when nothing was, 2 when a file could
not be read or parsed at all (the other files are still ingested).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from model.importers import FORMATS, Parsed, RunMeta, SourceError, json_type, parse, sources
from warehouse.schemas import DERIVED_TABLES, TABLES, TS, Table
from warehouse.writer import Lake, PartitionError, check_slug, slugify

LOADABLE = tuple(n for n in TABLES if n != "quarantine" and n not in DERIVED_TABLES)  # quarantine: ingest writes it
SHOWN_REJECTS = 10  # reject lines printed before the count by reason

# Strings accepted for float columns besides JSON numbers and the NaN/Infinity tokens.
_NONFINITE = {s: float(s.lstrip("+").replace("infinity", "inf")) for s in
              ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")}


# --- validation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    field: str | None
    kind: str  # short and stable: the CLI counts rejects by it
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


class _Bad(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _wrong(expected: str, v) -> _Bad:
    return _Bad("wrong type", f"expected {expected}, got {json_type(v)} {_show(v)}")


def _to_str(v):
    if not isinstance(v, str):
        raise _wrong("a string", v)
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


def _converter(t: pa.DataType):
    if pa.types.is_string(t):
        return _to_str
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
    row, problems = {}, []
    names = table.schema.names
    for k, v in values.items():
        if k in table.partition_by and k == "date":
            problems.append(Problem(k, "derived field", f"'date' is derived from {table.time_column}; leave it out"))
        elif k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(Problem(str(k), "unknown field", f"{table.name} has no column {str(k)!r}{hint}"))
        elif v is not None:
            try:
                row[k] = _converter(table.schema.field(k).type)(v)
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
    return (None, problems) if problems else (row, [])


# --- writing ----------------------------------------------------------------------------------------

@dataclass
class Reject:
    source: str  # as the user named it
    line: int | None
    target_table: str | None
    problems: list[Problem]
    raw: str | None

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
    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale files of an earlier ingest of this source


def write_key(source: str, table: str) -> str:
    """The Lake.write key of one source's rows in one table: stable across runs, so a re-ingest
    replaces them."""
    digest = hashlib.sha1(f"{os.path.abspath(source)}\0{table}".encode()).hexdigest()[:16]
    return f"ingest-{digest}"


def _input_schema(table: Table) -> pa.Schema:
    return pa.schema([f for f in table.schema if f.name != "date"])  # conform() derives the date


class _Listing:
    """Files already in the lake, by table and file name, listed once per ingest."""

    def __init__(self, lake: Lake):
        self.lake, self._by_table = lake, {}

    def of(self, table: str) -> dict[str, list[str]]:
        if table not in self._by_table:
            self._by_table[table] = self.lake.list_files(table)
        return self._by_table[table]


def ingest_parsed(lake: Lake, parsed: Parsed, shown_as: str, fill: dict | None = None,
                  listing: _Listing | None = None, now: datetime | None = None) -> SourceResult:
    """Validate ``parsed``'s records, write the good ones and quarantine the rest, replacing
    whatever an earlier ingest of the same source wrote."""
    listing = listing or _Listing(lake)
    now = now or datetime.now(timezone.utc)
    result = SourceResult(shown_as, parsed.format, notes=list(parsed.notes))
    good: dict[str, list[dict]] = {}
    for rec in parsed.records:
        target = rec.table if isinstance(rec.table, str) and rec.table in LOADABLE else None
        if rec.error:
            problems = [_problem_from(rec.error)]
        elif rec.table is None:
            problems = [Problem("table", "missing table", "no 'table' field on the line and no --table")]
        elif target is None:
            problems = [Problem("table", "unknown table",
                                f"{_show(rec.table)} is not one of {', '.join(LOADABLE)}")]
        else:
            values = rec.values
            if fill and isinstance(values, dict):
                names = TABLES[target].schema.names
                values = {**{k: v for k, v in fill.items() if k in names}, **values}
            row, problems = validate(TABLES[target], values)
            if row is not None:
                good.setdefault(target, []).append(row)
                continue
        result.rejects.append(Reject(shown_as, rec.line, target, problems, rec.raw))

    for name in LOADABLE:
        rows = good.get(name, [])
        key = write_key(parsed.source, name)
        written = []
        if rows:
            res = lake.write(name, pa.Table.from_pylist(rows, schema=_input_schema(TABLES[name])), key)
            result.rows[name], result.files[name], written = res.rows, res.files, res.files
        result.removed += _drop_stale(lake, listing, name, key, written)

    key = write_key(parsed.source, "quarantine")
    written = []
    if result.rejects:
        q = [{"target_table": r.target_table, "source": parsed.source, "line": r.line,
              "field": r.problems[0].field, "reason": r.reason, "raw": r.raw, "ingested_at": now}
             for r in result.rejects]
        res = lake.write("quarantine", pa.Table.from_pylist(q, schema=_input_schema(TABLES["quarantine"])), key)
        result.files["quarantine"], written = res.files, res.files
    result.removed += _drop_stale(lake, listing, "quarantine", key, written)
    return result


def _problem_from(error: tuple[str | None, str]) -> Problem:
    field_, reason = error
    kind, _, detail = reason.partition(": ")
    return Problem(field_, kind, detail)


def _drop_stale(lake: Lake, listing: _Listing, table: str, key: str, written: list[str]) -> list[str]:
    """Remove files of ``key`` that this write did not produce (see Lake.drop_stale)."""
    return lake.drop_stale(table, written, key=key, listing=listing.of(table))


# --- command line -----------------------------------------------------------------------------------

def _timestamp_arg(s: str) -> datetime:
    try:
        return to_timestamp(float(s) if s.replace(".", "", 1).isdigit() else s)
    except _Bad as b:
        raise argparse.ArgumentTypeError(b.detail) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files to load; a directory is read as a TensorBoard log dir")
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                   help="input format (default: detected from name and content)")
    p.add_argument("--table", choices=LOADABLE, help="JSONL: table of lines that have no 'table' field")
    p.add_argument("--lake", help="lake root (default from config)")
    m = p.add_argument_group(
        "run metadata", "Fill in what a file does not say. Importers take these over the file's own values; "
                        "for JSONL they fill columns a line leaves out. Free-form names become slugs.")
    m.add_argument("--model", help="model name, e.g. distilbert/lora-imdb")
    m.add_argument("--hardware", help="hardware fingerprint, e.g. a100-40gb-x8")
    m.add_argument("--run-id", help="run id (default: a stable hash of the file's absolute path)")
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
    if args.lake:
        lake_root = args.lake
    else:
        from warehouse import config

        lake_root = config.load(getattr(args, "config", None)).lake_root
    lake = Lake(lake_root)
    meta, notes = _meta(args)
    for n in notes:
        print(f"note: {n}")
    listing, now = _Listing(lake), datetime.now(timezone.utc)
    results, errors, seen = [], [], set()
    for path in args.paths:
        try:
            found = sources(path, args.format)
        except SourceError as e:
            errors.append(str(e))
            continue
        for source, fmt in found:
            if os.path.abspath(source) in seen:
                continue
            seen.add(os.path.abspath(source))
            try:
                parsed = parse(source, fmt, meta, args.table)
                fill = meta.given() if fmt == "jsonl" else None  # importers placed the flags themselves
                results.append(ingest_parsed(lake, parsed, source, fill, listing, now))
            except SourceError as e:
                errors.append(str(e))
    _report(results, errors, lake, sys.stdout)
    for e in errors:
        print(f"mhw ingest: error: {e}", file=sys.stderr)
    if errors:
        return 2
    if not any(r.rows for r in results):
        print("mhw ingest: nothing ingested", file=sys.stderr)
        return 1
    return 0


def _report(results: list[SourceResult], errors: list[str], lake: Lake, out) -> None:
    for r in results:
        per_table = ", ".join(f"{t} {n}" for t, n in r.rows.items())
        rejected = f", {len(r.rejects)} rejected" if r.rejects else ""
        out.write(f"{r.source} [{r.format}]: {sum(r.rows.values())} rows ({per_table or 'none'}){rejected}\n")
        for n in r.notes:
            out.write(f"  note: {n}\n")
    totals, files = Counter(), Counter()
    for r in results:
        totals.update(r.rows)
        files.update({t: len(f) for t, f in r.files.items() if t != "quarantine"})
    if totals:
        out.write(f"written to {lake.uri}:\n")
        width = max(len(t) for t in totals)
        for t in LOADABLE:
            if t in totals:
                out.write(f"  {t:<{width}}  {totals[t]:>7} rows  {files[t]:>3} files\n")
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
