"""Per-request serving logs: one JSON object per line, one line per request, as an inference server
or gateway writes them (``mhw serve --request-log`` does), into ``serving_requests``.

    {"model": "llama-8b", "hardware": "h100-80gb-x1", "precision": "bf16", "ts": "2026-01-05T10:00:00.1Z",
     "status": 200, "e2e_ms": 812.4, "ttft_ms": 95.1, "itl_ms": 22.3, "prompt_tokens": 412, "output_tokens": 33}

Detected by the first line: a JSON object with ``e2e_ms`` and no ``table`` field (docs/jsonl-schema.md,
serving_requests). ``itl_ms`` may be the request's mean gap or the list of its gaps (then averaged);
``status_class`` (ok | client_error | server_error | error) is derived from ``status`` when absent, by
the same mapping as scraped statuses (warehouse/importers/prometheus.status_class). Fields that are
not serving_requests columns are dropped and named once in a note; ``--model``, ``--hardware`` and
``--precision`` fill what a line leaves out; hub names become slugs (``org/model`` -> ``org--model``).
Everything else (types, required columns, bounds) is checked by ``warehouse.ingest``, which
quarantines what does not fit.
"""
from __future__ import annotations

import json
import os

from warehouse.importers import (Parsed, Record, RunMeta, SourceError, cut_raw, json_type, line_too_long,
                                 number, read_lines)
from warehouse.importers.prometheus import status_class
from warehouse.schemas import TABLES

TABLE = "serving_requests"
COLUMNS = set(TABLES[TABLE].schema.names) - {"date"}


def looks_like(first_line: bytes) -> bool:
    """A first line that is a request-log record (and not a lake-table JSONL line)."""
    try:
        obj = json.loads(first_line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "e2e_ms" in obj and "table" not in obj


def _slug(v):
    from warehouse.writer import PartitionError, slugify

    if not isinstance(v, str):
        return v  # ingest says what type it should have been
    try:
        return slugify(v)
    except PartitionError:
        return v  # ingest quarantines it with the slug rule


def parse(path: str, meta: RunMeta) -> Parsed:
    out = Parsed(source=os.path.abspath(path), format="serving-log")
    fill = {k: v for k, v in (("model", meta.model), ("hardware", meta.hardware), ("precision", meta.precision))
            if v is not None}
    dropped: set[str] = set()
    try:
        with open(path, "rb") as f:
            for lineno, line, size in read_lines(f):
                rec = _record(lineno, line, size, fill, dropped)
                if rec is not None:
                    out.records.append(rec)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    if dropped:
        out.notes.append(f"fields that are not serving_requests columns were dropped: {', '.join(sorted(dropped))}")
    return out


def _record(lineno: int, line: bytes, size: int | None, fill: dict, dropped: set) -> Record | None:
    if lineno == 1:
        line = line.removeprefix(b"\xef\xbb\xbf")
    if size is not None:
        raw = cut_raw(line.decode("utf-8", errors="replace"), size)
        return Record(TABLE, None, lineno, raw, (None, line_too_long(size)))
    if not line.strip():
        return None
    text = line.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError as e:
        return Record(TABLE, None, lineno, text, (None, f"invalid JSON: {e}"))
    if not isinstance(obj, dict):
        return Record(TABLE, obj, lineno, text, (None, f"not a JSON object: got a JSON {json_type(obj)}"))
    row = {k: v for k, v in obj.items() if k in COLUMNS}
    dropped.update(k for k in obj if k not in COLUMNS)
    for k, v in fill.items():
        row.setdefault(k, v)
    for k in ("model", "hardware"):
        if k in row:
            row[k] = _slug(row[k])
    gaps = row.get("itl_ms")
    if isinstance(gaps, list):  # every gap of the request: its mean is the column
        values = [number(g) for g in gaps]
        if gaps and all(v is not None for v in values):
            row["itl_ms"] = sum(values) / len(values)
        elif not gaps:
            row["itl_ms"] = None
    if isinstance(row.get("status"), (int, float)) and not isinstance(row.get("status"), bool):
        row["status"] = str(int(row["status"])) if float(row["status"]).is_integer() else str(row["status"])
    if row.get("status_class") is None and row.get("status") is not None:
        row["status_class"] = status_class(row["status"])
    return Record(TABLE, row, lineno, text)
