"""JSON lines validated in columns: a big log read in blocks, parsed by pyarrow's JSON reader against
each table's schema and checked with Arrow kernels; every line the columns cannot vouch for takes the
row path.

Why: the row path (``json.loads``, then ``warehouse.ingest.validate`` one value at a time) reads
7-30 k rows/s and holds every row as Python objects; a trainer's log has millions of lines.

How it stays exact. The columns only ever *accept* a line. A line goes to the row path (the
``row_path`` callback: ``warehouse.importers.jsonl.record`` then ingest's checks), which decides and words
every reject, when anything about it is unusual: not a plain ``{...}`` line (blank, BOM, over
LINE_BYTES, a lone ``\\r`` in its block: line numbers as read_lines counts them), its ``table`` not
plainly named, a parse error in its unit (pyarrow's reader is strict: an unknown or repeated field,
a string where a number goes, ``3.0`` for an integer, bad UTF-8 all fail), any check it fails
(required, length in characters, slug), a value the two paths might read differently (a non-finite
number not written as ``NaN``/``Infinity``/``-Infinity``, a timestamp outside the plain ISO form or
the epoch range, a null in a column a flag fills). So the rows kept and the rejects (line, field,
reason, raw) are the row path's, line for line (tests/warehouse/test_ingest_columns.py).

Memory: one block (BLOCK_BYTES) and its rows at a time.
"""
from __future__ import annotations

import json
import re
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from warehouse.importers import block_lines, read_blocks
from warehouse.schemas import LINE_BYTES, RAW_HEAD, TABLES, TS, Table

UNIT_BYTES = 1 << 21  # one read_json call: a line it cannot parse costs re-reading about this much
LEAF_LINES = 8  # a failing range this small takes the row path whole
FAILURES_PER_UNIT = 16  # parse errors in one unit before the rest of it takes the row path
MAX_NAMES = 16  # distinct `table` values looked for in one block (more: the row path sorts them out)
BOM = b"\xef\xbb\xbf"
_DATE = r"(?:[1-8]\d{3}|9[0-8]\d\d|99[0-8]\d)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"  # years 1000-9989
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
ISO_ZONED = rf"^{_DATE}[T ]{_TIME}(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"  # the plain forms both paths read alike
ISO_NAIVE = rf"^{_DATE}[T ]{_TIME}$"  # no offset: UTC
SLUG_RE2 = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"  # warehouse.writer.SLUG; RE2's $ is the very end
# Non-finite numbers pyarrow reads that Python's json reads otherwise or not at all: -NaN, Inf, -Inf,
# and integer literals beyond float range (the row path: "out of range").
ODD_NONFINITE = re.compile(rb"-NaN|Inf(?!inity)|\d{309}")
EPOCH_MIN, EPOCH_MAX = -62_135_596_800 + 86_400, 1e11  # epoch seconds the row path reads as a time
US = 1_000_000


@dataclass
class Block:
    """What one block of lines gave: per table its validated rows (ingest's input schema, file
    order) with their line numbers, and what the row path returned for the lines it rejected."""

    rows: dict[str, pa.Table] = field(default_factory=dict)
    lines: dict[str, np.ndarray] = field(default_factory=dict)
    rejects: list = field(default_factory=list)


def input_schema(table: Table) -> pa.Schema:
    return pa.schema([f for f in table.schema if f.name != "date"])  # the writer derives the date


class Reader:
    """Reads one JSON-lines file block by block (``blocks``). ``default`` is the table of lines that
    name none (``--table``); ``fill`` maps table -> {column: (ok, typed value)} for the run-metadata
    flags (a value that failed its check is (False, None): rows that need it take the row path);
    ``row_path(lineno, line, size)`` returns None (a blank line), ``(table, row)`` or a reject."""

    def __init__(self, default: str | None, fill: dict[str, dict[str, tuple[bool, object]]], row_path):
        self.default = default if default in TABLES else None
        self.fill, self.row_path = fill, row_path
        self.loadable = tuple(fill)

    def blocks(self, f):
        """The file's blocks in order. A block's units are parsed on a thread pool (the reader lets
        go of the GIL) while the block before it is checked."""
        ahead: deque = deque()
        with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="mhw-jsonl") as pool:
            for lineno, data, size in read_blocks(f):
                if size is not None:  # one line over the bound, read through: the row path rejects it
                    ahead.append(self._slow([(lineno, data, size)]))
                elif b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):  # a lone \r breaks lines too
                    ahead.append(self._slow(block_lines(lineno, data)))
                else:
                    ahead.append(self._start(lineno, data, pool))
                if len(ahead) > 1:
                    yield self._finish(ahead.popleft())
            while ahead:
                yield self._finish(ahead.popleft())

    # --- the row path --------------------------------------------------------------------------

    def _slow(self, items) -> Block:
        out = _Collect()
        for lineno, line, size in items:
            out.row_path(lineno, self.row_path(lineno, line, size))
        return out.block()

    # --- one block of plain lines ----------------------------------------------------------------

    def _start(self, lineno: int, data: bytes, pool) -> "_Started | Block":
        """Split a block into lines, route them to tables and start parsing its units."""
        buf = np.frombuffer(data, np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.concatenate([[0], nl + 1])
        ends = np.concatenate([nl, [len(data)]])
        if data.endswith(b"\n"):  # no line after the last break
            starts, ends = starts[:-1], ends[:-1]
        if b"\r" in data:  # \r\n endings: the \r is not part of the line
            cr = np.zeros(len(ends), bool)
            cr[ends > starts] = buf[ends[ends > starts] - 1] == 13
            ends = ends - cr
        length = ends - starts
        n = len(starts)
        plain = length > 0
        nz = np.flatnonzero(plain)
        plain[nz] = (buf[starts[nz]] == 123) & (buf[ends[nz] - 1] == 125) & (length[nz] <= LINE_BYTES)  # { ... }
        if lineno == 1 and data.startswith(BOM):
            plain[0] = False
        lines = _Lines(data, buf, starts, ends, lineno)
        table_of, named = self._route(lines, plain)
        units = []
        for t in self.loadable:
            idx = np.flatnonzero(table_of == self.loadable.index(t))
            if not len(idx):
                continue
            size = np.cumsum(lines.ends[idx] - lines.starts[idx] + 1)
            cuts = np.unique(np.searchsorted(size, np.arange(UNIT_BYTES, int(size[-1]), UNIT_BYTES)))
            for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(idx)]])):
                if b > a:
                    table, unit = TABLES[t], idx[a:b]
                    first = _object(lines.line(int(unit[0])))
                    cols = [c for c in table.schema.names if c in first and c != "date"]
                    kind = "epoch" if any(isinstance(first.get(c), (int, float)) and not isinstance(first.get(c), bool)
                                          for c in _ts_columns(table)) else "iso"
                    schema = _schema(table, cols, kind)  # the columns the unit's first line has: fewer parse faster
                    units.append((table, unit, named[a:b], kind, pool.submit(_parse, lines.buffer(unit), schema, b - a)))
        return _Started(lines, np.flatnonzero(table_of < 0), units)

    def _finish(self, job: "_Started | Block") -> Block:
        """Check a started block's parsed units; the row path for the rest."""
        if isinstance(job, Block):
            return job
        lines, out, slow = job.lines, _Collect(), job.odd.tolist()  # odd lines, unnamed tables
        for table, idx, named, kind, parsed in job.units:
            for pos, piece in self._parsed(table, lines, idx, kind, parsed, slow):
                ok, rows = self._check(table, lines, idx[pos], named[pos], piece)
                out.fast(table.name, lines.lineno + idx[pos][ok], rows)
                slow += idx[pos][~ok].tolist()
        for i in slow:
            out.row_path(lines.lineno + i, self.row_path(lines.lineno + i, *lines.raw(i)))
        return out.block()

    def _route(self, lines: "_Lines", plain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each plain line's table (index into loadable; -1: the row path) and whether the line names
        it: ``{"table": "<name>"`` at its start (as json.dumps writes it, with or without the space).
        A line that mentions "table" any other way takes the row path; a line that does not mention it
        gets the default table."""
        n = len(plain)
        table_of = np.full(n, -1, np.int16)
        named = np.zeros(n, bool)
        data = lines.data
        if b'"table"' in data:
            for head in (b'{"table": "', b'{"table":"'):
                left = lines.starting(head, plain & ~named)
                for _ in range(MAX_NAMES):
                    if not len(left):
                        break
                    s = int(lines.starts[left[0]]) + len(head)
                    end = data.find(b'"', s, s + 64)
                    name = data[s:end] if end > 0 else b"\\"
                    mask = np.zeros(n, bool)
                    mask[left] = True
                    hits = lines.starting(head + name + b'"', mask) if b"\\" not in name else left[:0]
                    t = name.decode("ascii", "replace")
                    if t in self.loadable and len(hits):
                        table_of[hits], named[hits] = self.loadable.index(t), True
                    else:  # not a table, or not plainly written: the row path says which
                        hits = hits if len(hits) else left[:1]
                        plain[hits] = False
                    left = np.setdiff1d(left, hits, assume_unique=True)
                plain[left] = False  # more names than looked for
            others = np.flatnonzero(plain & ~named)
            if len(others) and data.count(b'"table"') > int(named.sum()):
                for i in others:  # another line mentions "table": only the row path reads it right
                    if b'"table"' in lines.line(int(i)):
                        plain[i] = False
        rest = plain & ~named
        if self.default in self.loadable:
            table_of[rest] = self.loadable.index(self.default)
        return table_of, named

    # --- one unit of one table's lines ---------------------------------------------------------------

    def _parsed(self, table: Table, lines: "_Lines", idx: np.ndarray, kind: str, parsed, slow: list[int]):
        """(positions in ``idx``, parsed table) for the lines of one unit that parse; the others are
        added to ``slow``. After a parse error the unit is read again with every column (the error
        may be a column its first line lacks) or the other timestamp kind, then localized: the
        reader names the row it failed in, or the range is halved."""
        try:
            return [(np.arange(len(idx)), parsed.result())]
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            msg = str(e)
        full = _schema(table, [c for c in table.schema.names if c != "date"], kind)
        if "unexpected field" in msg:
            schema = full
        elif any(f"Column(/{c})" in msg for c in _ts_columns(table)):  # an epoch where ISO was guessed, or so
            schema = _schema(table, full.names[1:], "epoch" if kind == "iso" else "iso")
        else:
            schema = full
        got, ranges, failures = [], [(0, len(idx))], 0
        while ranges:
            a, b = ranges.pop()
            if b <= a:
                continue
            if b - a <= LEAF_LINES or failures >= FAILURES_PER_UNIT:
                slow += idx[a:b].tolist()
                continue
            try:
                got.append((np.arange(a, b), _parse(lines.buffer(idx[a:b]), schema, b - a)))
            except (pa.ArrowInvalid, UnicodeDecodeError) as e:
                failures += 1
                m = re.search(r" in row (\d+)$", str(e))
                h = int(m.group(1)) if m else -1
                if 0 <= h < b - a:  # the reader's own pointer: parse around that line
                    slow.append(int(idx[a + h]))
                    ranges += [(a + h + 1, b), (a, a + h)]
                else:
                    mid = (a + b) // 2
                    ranges += [(mid, b), (a, mid)]
        got.sort(key=lambda g: g[0][0])
        return got

    def _check(self, table: Table, lines: "_Lines", idx: np.ndarray, named: np.ndarray,
               piece: pa.Table) -> tuple[np.ndarray, pa.Table]:
        """Which parsed rows the columns vouch for, and those rows in ingest's input schema."""
        n = piece.num_rows
        ok = np.ones(n, bool)
        cols: dict[str, pa.Array] = {}
        for name in piece.column_names:
            col = piece.column(name).combine_chunks() if piece.column(name).num_chunks != 1 else piece.column(name).chunk(0)
            if name == "table":  # a named line says this table; a default one says none
                same = pc.fill_null(pc.equal(col, table.name), False).to_numpy(zero_copy_only=False)
                ok &= np.where(named, same, col.is_null().to_numpy(zero_copy_only=False))
                continue
            want = table.schema.field(name).type
            if want == TS:
                col, good = _timestamps(col)
                ok &= good
            elif pa.types.is_floating(want):
                odd = np.flatnonzero(~pc.fill_null(pc.is_finite(col), True).to_numpy(zero_copy_only=False))
                for i in odd:  # NaN and inf as Python's json reads them are data; other spellings are not
                    if ODD_NONFINITE.search(lines.line(int(idx[i]))):
                        ok[i] = False
            cols[name] = col
        for name, (good, value) in self.fill.get(table.name, {}).items():
            col = cols.get(name)
            missing = np.ones(n, bool) if col is None else col.is_null().to_numpy(zero_copy_only=False)
            if not missing.any():
                continue
            if col is not None and f'"{name}"'.encode() in lines.data:  # null given, or left out?
                for i in np.flatnonzero(missing):
                    if f'"{name}"'.encode() in lines.line(int(idx[i])):
                        ok[i] = False  # "name": null overrides the flag: the row path handles it
            if not good:
                ok &= ~missing
                continue
            scalar = pa.scalar(value, table.schema.field(name).type)
            cols[name] = (pa.nulls(n, scalar.type) if col is None else col).fill_null(scalar)
        for name in table.required:
            col = cols.get(name)
            if col is None:
                ok[:] = False
                break
            valid = col.is_valid()
            if pa.types.is_string(col.type):
                valid = pc.and_(valid, pc.fill_null(pc.not_equal(col, ""), False))
            ok &= valid.to_numpy(zero_copy_only=False)
        for name, col in cols.items():
            if pa.types.is_string(col.type):
                ok &= _strings_fit(table, name, col)
        names = input_schema(table)
        keep = None if ok.all() else pa.array(ok)
        arrays = [(cols[f.name] if keep is None else cols[f.name].filter(keep)) if f.name in cols
                  else pa.nulls(int(ok.sum()), f.type) for f in names]
        return ok, pa.Table.from_arrays(arrays, schema=names)


# --- helpers ---------------------------------------------------------------------------------------

@dataclass
class _Started:
    """A block whose units are being parsed: its lines, the lines for the row path, and per unit
    (table, line indices, named flags, timestamp kind, the parse's future)."""

    lines: "_Lines"
    odd: np.ndarray
    units: list


class _Lines:
    """The lines of one block: offsets into its bytes, numbered from ``lineno``."""

    def __init__(self, data: bytes, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, lineno: int):
        self.data, self.buf, self.starts, self.ends, self.lineno = data, buf, starts, ends, lineno

    def line(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]]

    def raw(self, i: int) -> tuple[bytes, int | None]:
        """Line ``i`` as read_lines gives it: (line, None), or (its head, its length) when over the bound."""
        line = self.line(i)
        return (line, None) if len(line) <= LINE_BYTES else (line[:RAW_HEAD], len(line))

    def starting(self, head: bytes, mask: np.ndarray) -> np.ndarray:
        """Indices of the lines in ``mask`` that start with ``head``."""
        idx = np.flatnonzero(mask & (self.ends - self.starts >= len(head)))
        if not len(idx):
            return idx
        got = self.buf[self.starts[idx][:, None] + np.arange(len(head))]
        return idx[(got == np.frombuffer(head, np.uint8)).all(axis=1)]

    def buffer(self, idx: np.ndarray) -> bytes:
        """The lines ``idx`` (ascending) as one buffer, one line each: runs of neighbours as one slice."""
        breaks = np.flatnonzero(np.diff(idx) != 1)
        firsts = np.concatenate([[0], breaks + 1])
        lasts = np.concatenate([breaks, [len(idx) - 1]])
        parts = [self.data[self.starts[idx[a]]:self.ends[idx[b]]] for a, b in zip(firsts, lasts)]
        return parts[0] if len(parts) == 1 else b"\n".join(parts)


class _Collect:
    """Rows and rejects of one block as they come, in any order; ``block()`` puts them in line order."""

    def __init__(self):
        self.tables: dict[str, list[tuple[np.ndarray, pa.Table]]] = {}
        self.rows: dict[str, list[tuple[int, dict]]] = {}
        self.rejects: list[tuple[int, object]] = []

    def fast(self, table: str, lines: np.ndarray, rows: pa.Table) -> None:
        if rows.num_rows:
            self.tables.setdefault(table, []).append((lines, rows))

    def row_path(self, lineno: int, got) -> None:
        if got is None:
            return
        if isinstance(got, tuple):
            self.rows.setdefault(got[0], []).append((lineno, got[1]))
        else:
            self.rejects.append((lineno, got))

    def block(self) -> Block:
        out = Block(rejects=[r for _, r in sorted(self.rejects, key=lambda x: x[0])])
        for name in set(self.tables) | set(self.rows):
            schema = input_schema(TABLES[name])
            parts = [t for _, t in self.tables.get(name, [])]
            lines = [ln for ln, _ in self.tables.get(name, [])]
            if name in self.rows:
                slow = self.rows[name]
                parts.append(pa.Table.from_pylist([r for _, r in slow], schema=schema))
                lines.append(np.array([ln for ln, _ in slow], np.int64))
            data = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            at = np.concatenate(lines) if len(lines) > 1 else lines[0]
            if len(parts) > 1 and (np.diff(at) < 0).any():
                order = np.argsort(at, kind="stable")
                data, at = data.take(order), at[order]
            out.rows[name], out.lines[name] = data, at
        return out


def _object(line: bytes) -> dict:
    """A unit's first line as Python reads it: which columns (and timestamp kinds) to parse as."""
    try:
        obj = json.loads(line)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _ts_columns(table: Table) -> list[str]:
    return [f.name for f in table.schema if f.type == TS]


def _schema(table: Table, cols: list[str], kind: str) -> pa.Schema:
    """What the reader reads a unit as: the ``table`` field and ``cols``, timestamps as ISO strings
    or as epoch numbers (converted after, as the row path converts them)."""
    ts = pa.string() if kind == "iso" else pa.float64()
    return pa.schema([pa.field("table", pa.string())] +
                     [pa.field(c, ts if table.schema.field(c).type == TS else table.schema.field(c).type) for c in cols])


def _parse(buf: bytes, schema: pa.Schema, n: int) -> pa.Table:
    t = pj.read_json(pa.BufferReader(buf), read_options=pj.ReadOptions(block_size=len(buf) + 1, use_threads=False),
                     parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
    if t.num_rows != n:  # two objects on one line, say: no longer one row per line
        raise pa.ArrowInvalid(f"{t.num_rows} rows from {n} lines")
    return t


def _timestamps(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A TS column from ISO strings or epoch seconds, and which rows the columns vouch for (nulls
    pass: the required check sees them)."""
    null = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(col.type):
        zoned, naive = _iso_forms(col)
        good = zoned | naive
        if not good.all():
            col = pc.if_else(pa.array(good), col, pa.scalar(None, pa.string()))
        out, cast = _cast_iso(col, pa.array(naive))
        return out, null | (good & cast)
    # epoch seconds as datetime.fromtimestamp reads a float: microseconds rounded half to even
    v = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls come as NaN
    good = ~null & np.isfinite(v) & (v >= EPOCH_MIN) & (v < EPOCH_MAX)
    frac, whole = np.modf(np.where(good, v, 0.0))
    us = whole.astype(np.int64) * US + np.rint(frac * US).astype(np.int64)
    return pa.array(us, pa.int64(), mask=~good).cast(TS), null | good


def _strings_fit(table: Table, name: str, col: pa.Array) -> np.ndarray:
    """Rows whose string in ``name`` is within its bound and, for a partition column, a slug (nulls
    pass). Checked once per distinct value: ids and names repeat on every line."""
    if col.null_count == 0 and len(col) and pc.all(pc.equal(col, col[0])).as_py():  # one value: check it once
        values, enc = col.slice(0, 1), None
    else:
        enc = pc.dictionary_encode(col)
        values = enc.dictionary
    fits = pc.less_equal(pc.utf8_length(values), table.max_chars(name))
    if name in table.partition_by:
        fits = pc.and_(fits, pc.match_substring_regex(values, SLUG_RE2))
    if pc.all(fits).as_py() is not False:
        return np.ones(len(col), bool)
    if enc is None:
        return np.zeros(len(col), bool)
    return pc.fill_null(pc.take(fits, enc.indices), True).to_numpy(zero_copy_only=False)


def _iso_forms(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(zoned, naive): the rows in one of the plain forms ISO_ZONED / ISO_NAIVE, read off the string
    bytes by position (a regular expression costs ~200 ns a row; this ~20): for each length a string
    of those forms can have, every split of its tail into fraction and zone."""
    n = len(col)
    zoned, naive = np.zeros(n, bool), np.zeros(n, bool)
    if col.null_count == n:
        return zoned, naive
    off = np.frombuffer(col.buffers()[1], np.int32, n + 1, col.offset * 4)
    data = np.frombuffer(col.buffers()[2], np.uint8)
    length = np.diff(off)
    valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.ones(n, bool)
    for size in np.unique(length[valid]):
        if not 19 <= size <= 19 + 7 + 6:  # no plain form is that long
            continue
        if col.null_count == 0 and length[0] == size and (length == size).all():  # one length: a view
            rows, m = slice(None), data[off[0]:off[0] + n * size].reshape(n, size)
        else:
            rows = np.flatnonzero(valid & (length == size))
            m = data[off[rows][:, None] + np.arange(size)]
        base = _iso_base(m)
        for frac in (0, 2, 3, 4, 5, 6, 7):  # '.' and 1-6 digits
            zone = size - 19 - frac
            if zone not in (0, 1, 6):
                continue
            f = base.copy()
            if frac:
                f &= (m[:, 19] == ord(".")) & _digits(m[:, 20:19 + frac])
            e = 19 + frac
            if zone == 0:
                naive[rows] |= f
            elif zone == 1:
                zoned[rows] |= f & (m[:, e] == ord("Z"))
            else:  # +hh:mm
                z = m[:, [e + 1, e + 2, e + 4, e + 5]] - np.uint8(48)
                zoned[rows] |= f & ((m[:, e] == ord("+")) | (m[:, e] == ord("-"))) & (m[:, e + 3] == ord(":")) & \
                    (z <= 9).all(axis=1) & (z[:, 0] * 10 + z[:, 1] <= 23) & (z[:, 2] * 10 + z[:, 3] <= 59)
    return zoned, naive


def _digits(m: np.ndarray) -> np.ndarray:
    return ((m - np.uint8(48)) <= 9).all(axis=1)  # below '0' wraps round to > 9


def _iso_base(m: np.ndarray) -> np.ndarray:
    """YYYY-MM-DD[T ]hh:mm:ss with the ranges of _DATE and _TIME (``m``: the strings' bytes)."""
    d = (m[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]] - np.uint8(48)).astype(np.int16)
    ok = ((d >= 0) & (d <= 9)).all(axis=1) & (m[:, 4] == ord("-")) & (m[:, 7] == ord("-"))
    ok &= ((m[:, 10] == ord("T")) | (m[:, 10] == ord(" "))) & (m[:, 13] == ord(":")) & (m[:, 16] == ord(":"))
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day = d[:, 4] * 10 + d[:, 5], d[:, 6] * 10 + d[:, 7]
    hour, minute, second = d[:, 8] * 10 + d[:, 9], d[:, 10] * 10 + d[:, 11], d[:, 12] * 10 + d[:, 13]
    return ok & (year >= 1000) & (year <= 9989) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & \
        (hour <= 23) & (minute <= 59) & (second <= 59)


def _cast_iso(col: pa.Array, naive) -> tuple[pa.Array, np.ndarray]:
    """Cast ISO strings to TS; a string the cast refuses (30 February) is found by halving and left
    for the row path."""
    try:
        return _iso(col, naive), np.ones(len(col), bool)
    except pa.ArrowInvalid:
        if len(col) == 1:
            return pa.nulls(1, TS), np.zeros(1, bool)
    mid = len(col) // 2
    a, oka = _cast_iso(col.slice(0, mid), naive.slice(0, mid))
    b, okb = _cast_iso(col.slice(mid), naive.slice(mid))
    return pa.concat_arrays([a, b]), np.concatenate([oka, okb])


def _iso(col: pa.Array, naive) -> pa.Array:
    if not pc.any(naive).as_py():
        return pc.cast(col, TS)
    zoned = pc.cast(pc.if_else(naive, pa.scalar(None, pa.string()), col), TS)
    plain = pc.cast(pc.cast(pc.if_else(naive, col, pa.scalar(None, pa.string())), pa.timestamp("us")), TS)
    return pc.if_else(naive, plain, zoned)
