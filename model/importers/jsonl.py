"""JSON lines: one object per line whose fields are a lake table's column names (docs/jsonl-schema.md).

The table comes from the line's ``table`` field, else from ``--table``. Values are passed through as
read (JSON ``NaN``/``Infinity`` tokens included); ``warehouse.ingest`` checks them strictly and
quarantines what does not fit, so nothing here rewrites a value.
"""
from __future__ import annotations

import json
import os

from model.importers import Parsed, Record, RunMeta, SourceError, json_type


def parse(path: str, meta: RunMeta, table: str | None = None) -> Parsed:
    out = Parsed(source=os.path.abspath(path), format="jsonl")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
    for lineno, line in enumerate(data.splitlines(), start=1):
        if lineno == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM left by some editors
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raw = line.decode("utf-8", errors="replace")
            out.records.append(Record(table, None, lineno, raw, (None, f"not UTF-8: {e.reason} at byte {e.start}")))
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            out.records.append(Record(table, None, lineno, text, (None, f"invalid JSON: {e}")))
            continue
        if not isinstance(obj, dict):
            out.records.append(
                Record(table, obj, lineno, text, (None, f"not a JSON object: got a JSON {json_type(obj)}")))
            continue
        row_table = obj.pop("table", table)
        out.records.append(Record(row_table, obj, lineno, text))
    return out
