"""JSON lines: one object per line whose fields are a lake table's column names (docs/jsonl-schema.md).

The table comes from the line's ``table`` field, else from ``--table``. Values are passed through as
read (JSON ``NaN``/``Infinity`` tokens included); ``warehouse.ingest`` checks them strictly and
quarantines what does not fit, so nothing here rewrites a value. The file is read in chunks, a line
at a time: a line over ``LINE_BYTES`` (1 MiB) is rejected before parsing, whatever its size.
"""
from __future__ import annotations

import json
import os

from warehouse.importers import Parsed, Record, RunMeta, SourceError, cut_raw, json_type, line_too_long, read_lines


def parse(path: str, meta: RunMeta, table: str | None = None) -> Parsed:
    """Every line as a Record, one at a time (the row path; ``warehouse.ingest`` reads big files in
    blocks and comes here only for the lines its columns cannot vouch for)."""
    out = Parsed(source=os.path.abspath(path), format="jsonl")
    try:
        with open(path, "rb") as f:
            for lineno, line, size in read_lines(f):
                rec = record(table, lineno, line, size)
                if rec is not None:
                    out.records.append(rec)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    return out


def record(table: str | None, lineno: int, line: bytes, size: int | None) -> Record | None:
    """The candidate row of one line as read_lines gives it (None for a blank line): ``table`` is the
    table of a line without a ``table`` field."""
    if lineno == 1:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM left by some editors
    if size is not None:  # over the line bound: rejected unparsed, quarantine keeps its head
        raw = cut_raw(line.decode("utf-8", errors="replace"), size)
        return Record(table, None, lineno, raw, (None, line_too_long(size)))
    if not line.strip():
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raw = line.decode("utf-8", errors="replace")
        return Record(table, None, lineno, raw, (None, f"not UTF-8: {e.reason} at byte {e.start}"))
    try:
        obj = json.loads(text)
    except ValueError as e:
        return Record(table, None, lineno, text, (None, f"invalid JSON: {e}"))
    if not isinstance(obj, dict):
        return Record(table, obj, lineno, text, (None, f"not a JSON object: got a JSON {json_type(obj)}"))
    row_table = obj.pop("table", table)
    return Record(row_table, obj, lineno, text)
