"""The shape of a JSON line: the line with its digits and signs taken out, and what every line of
one shape holds, read once off one of them by Python's json (the row path's reader).

Why: the lines of a log differ in their numbers, not in their structure. A line's shape is its bytes
less ``0-9``, ``+`` and ``-`` (``SHAPE_CUT``). Two lines of one shape have the same quotes,
backslashes, brackets, colons, commas, whitespace, letters and dots in the same order; they differ
only in digits and signs, which outside a string make up numbers and nothing else. So when one line
of a shape (its representative) is, to json.loads, an object whose keys are columns of its table,
each once, with values of known JSON kinds, then every other line of that shape that DuckDB's JSON
parser accepts has keys in the same places and values of the same kinds there:

- strings start and end at the same quotes: a backslash is followed by one of ``"\\/bfnrtu`` in
  valid JSON, never a digit, so the backslashes before each quote, and which quotes they escape,
  are the same;
- where the representative has a number, the line has digits, signs and the same dots and
  exponents, and DuckDB's number grammar is JSON's (``01``, ``+1``, ``.5``, ``5.``, ``1.e5`` fail
  there as in Python), so it has a number of the same kind: an integer literal where the
  representative has one, a decimal or exponent where it has one;
- ``true``, ``false``, ``null``, ``NaN`` and ``Infinity`` are letters, kept in the shape; the one
  sign DuckDB reads that Python does not, ``-NaN``, is looked for in the line (warehouse/jsonl_columns.py);
- keys sit in the same places, but may differ from the representative's in digits and signs
  (``loss`` / ``loss2``): the typed parse names each column it finds, so a line whose keys are not
  the representative's finds one of them missing, and the column checks send it to the row path.
  That holds when every key of the shape has a value (a null reads like a missing key) and no two
  keys of the shape are alike but for digits and signs; a shape with a null value has its keys
  compared whole, and a shape with two such keys is not vouched for.

``Shape.of`` reads the representative and says what its shape holds, or None when the row path
must read every line of it (not an object, an unknown or repeated field, a value of a kind the
columns do not convert exactly: ``"3"`` for a number, ``NaN`` for an integer, a nested object ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from warehouse.schemas import BOOL, FLOAT64, INT32, INT64, MAX_FIELDS, STRING, TABLES, TIMESTAMP

SHAPE_CUT = b"0123456789+-"  # what a shape leaves out of a line

# DuckDB's type for a column of a given type holding a JSON value of a given kind; a pair not here
# is one the columns do not read exactly, and its shape takes the row path.
DUCKDB_TYPE = {
    (STRING, "str"): "VARCHAR",
    (INT64, "int"): "BIGINT", (INT32, "int"): "BIGINT",
    (INT64, "float"): "DOUBLE", (INT32, "float"): "DOUBLE",  # 3.0: an integer to Python; checked integral
    (FLOAT64, "int"): "DOUBLE", (FLOAT64, "float"): "DOUBLE", (FLOAT64, "const"): "DOUBLE",
    (BOOL, "bool"): "BOOLEAN",
    (TIMESTAMP, "str"): "VARCHAR",  # ISO-8601
    (TIMESTAMP, "int"): "DOUBLE", (TIMESTAMP, "float"): "DOUBLE",  # epoch seconds
}


class _Object(list):
    """A JSON object as (key, value) pairs, repeats kept."""


class _Const(str):
    """NaN, Infinity or -Infinity, written as such."""


def _kind(v) -> str | None:
    if v is None:
        return "null"
    if v is True or v is False:
        return "bool"
    t = type(v)
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t is str:
        return "str"
    if t is _Const:
        return "const"
    return None  # an object or an array


@dataclass(frozen=True)
class Shape:
    """What every line of one shape holds: its table, whether it names it (a ``table`` field), its
    keys in order (``table`` where it stands) and each column's JSON kind (``str``, ``int``,
    ``float``, ``const``, ``bool`` or ``null``)."""

    table: str
    named: bool
    keys: tuple[str, ...]
    kinds: tuple[tuple[str, str], ...]
    line: bytes = field(compare=False, repr=False)  # the representative

    @property
    def nulls(self) -> bool:
        return any(k == "null" for _, k in self.kinds)

    def types(self) -> dict[str, str]:
        """DuckDB's type of each column with a value."""
        t = TABLES[self.table]
        return {c: DUCKDB_TYPE[(t.column(c).type, k)] for c, k in self.kinds if k != "null"}

    @staticmethod
    def of(line: bytes, default: str | None, fill: dict[str, dict[str, tuple[bool, object]]]) -> "Shape | None":
        """The shape of ``line`` as the row path reads it, or None when the row path must read every
        line of it. ``default``: the table of a line without a ``table`` field; ``fill``: the
        run-metadata flags per loadable table, as jsonl_columns.Reader takes them (table -> {column:
        (fits, value)})."""
        try:
            obj = json.loads(line.decode("utf-8"), object_pairs_hook=_Object, parse_constant=_Const)
            keys = tuple(k for k, _ in obj) if type(obj) is _Object else ()
            alike = {k.encode().translate(None, SHAPE_CUT) for k in keys}
        except (ValueError, RecursionError):  # not JSON, not UTF-8, a lone surrogate in a key
            return None
        if not keys or len(keys) > MAX_FIELDS + 1 or len(set(keys)) != len(keys) or len(alike) != len(keys):
            return None  # not an object; more fields than a row takes; a repeated key, or two alike
        values = dict(obj)
        named = "table" in values
        name = values.pop("table") if named else default
        if type(name) is not str or name not in fill or len(values) > MAX_FIELDS:
            return None
        table, kinds = TABLES[name], []
        for k, v in values.items():
            kind = _kind(v)
            if k not in table.schema.names or k == "date" or kind is None or \
                    kind != "null" and (table.column(k).type, kind) not in DUCKDB_TYPE:
                return None
            kinds.append((k, kind))
        given, flags = dict(kinds), fill[name]
        if any(k not in given and not fits for k, (fits, _) in flags.items()):
            return None  # a flag the rows need that does not fit its column
        if any(given.get(k) == "null" or k not in given and k not in flags for k in table.required):
            return None  # a required column missing
        return Shape(name, named, keys, tuple(kinds), bytes(line))


def head(shape: Shape) -> tuple[int, dict[str, str]] | None:
    """The representative's first members whose values are strings, as (their length in bytes, up to
    the next key's quote; their values): the names and ids a log repeats on every line. A line that
    starts with those bytes has those members, whatever its shape; the rest of it is parsed alone.
    None when there are none. Time columns and the last member stay out (they vary, or end the line)."""
    text = shape.line.decode("utf-8")
    table, end, values, pos = TABLES[shape.table], None, {}, 1
    decode = json.decoder.scanstring
    try:
        while True:
            pos = _skip(text, pos)
            if text[pos] != '"':
                break
            key, pos = decode(text, pos + 1)
            pos = _skip(text, pos)
            pos = _skip(text, pos + 1) if text[pos] == ":" else len(text)
            if text[pos] != '"' or key != "table" and table.column(key).type == TIMESTAMP:
                break
            value, pos = decode(text, pos + 1)
            pos = _skip(text, pos)
            if text[pos] != ",":
                break
            pos = _skip(text, pos + 1)
            values[key], end = value, pos
    except (IndexError, KeyError, ValueError):
        pass
    return (len(text[:end].encode()), values) if values else None


def _skip(text: str, pos: int) -> int:
    while text[pos] in " \t\n\r":
        pos += 1
    return pos
