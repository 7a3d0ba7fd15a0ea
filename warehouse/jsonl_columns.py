"""JSON lines validated in columns: a big log read in blocks, each line's structure vouched for by its
shape (warehouse/jsonl_shapes.py), its values parsed by DuckDB's JSON reader and checked with Arrow
kernels; every line the columns cannot vouch for takes the row path.

Why: the row path (``json.loads``, then ``warehouse.ingest.validate`` one value at a time) reads
7-30 k rows/s and holds every row as Python objects; a trainer's log has millions of lines. DuckDB
parses JSON on every core, but it reads leniently: an unknown field is skipped, a repeated one takes
its first value, ``"3"`` is read as the number 3 and ``true`` as 1, ``-NaN``, ``Inf`` and a trailing
comma pass. Shapes close that gap: lines of one shape differ only in digits and signs, so json.loads
of one line of a shape (its representative) says which keys every line of it has and what JSON kind
each value is, and DuckDB's typed parse of each line is then exact (see warehouse/jsonl_shapes.py for
why; a log has a few shapes per block, so the Python read costs little).

How it stays exact. The columns only ever *accept* a line. A line goes to the row path (the
``row_path`` callback: ``warehouse.importers.jsonl.record`` then ingest's checks), which decides and
words every reject, when anything about it is unusual: not a plain ``{...}`` line (blank, BOM, over
LINE_BYTES, not UTF-8, a lone ``\\r`` in its block: line numbers as read_lines counts them), a shape
json.loads does not vouch for (not JSON, unknown or repeated field, a kind the columns do not convert
exactly), a line DuckDB fails to parse, a value its shape says is there and DuckDB did not find (a
key that differs from the representative's in digits), a table name other than its shape's, any
check it fails (required, length in characters, slug, integer range, an integral ``3.0``), or a value
the two readers might read differently (``-NaN``, an integer literal beyond float range, a timestamp
outside the plain ISO form or the epoch range). So the rows kept and the rejects (line, field,
reason, raw) are the row path's, line for line (tests/warehouse/test_ingest_columns.py).

Speed: the lines of a block are split, shaped, parsed and checked on a worker thread (WORKERS of
them), mostly in C++ out of the GIL; ingest stages the blocks in order as they come.

Memory: WORKERS + 1 blocks (BLOCK_BYTES) and their rows at a time.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.importers import block_lines, line_breaks, read_blocks
from warehouse.jsonl_shapes import SHAPE_CUT, Shape, head
from warehouse.schemas import INT32, LINE_BYTES, RAW_HEAD, STRING, TABLES, TIMESTAMP, TS, Table
from warehouse.writer import check_slug

WORKERS = 2  # blocks read in columns at once (threads), each parsed by one DuckDB thread
DUCKDB_THREADS = 1  # per parse: the workers keep the cores busy
BATCH_ROWS = 16384  # lines per Arrow batch handed to DuckDB
LINES = "__lines__"  # the lines' view in a query, named per worker when it runs
RETRIES = 16  # shapes per block whose first line is bad that are read again off other lines
ROW_PATH_LINES = 4096  # a file of fewer lines takes the row path whole: starting DuckDB costs more
BOM = b"\xef\xbb\xbf"
SLUG_RE2 = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"  # warehouse.writer.SLUG; RE2's $ is the very end
EPOCH_MIN, EPOCH_MAX = -62_135_596_800 + 86_400, 1e11  # epoch seconds the row path reads as a time
US = 1_000_000
INT32_MIN, INT32_MAX = -(1 << 31), 1 << 31
INT64_MIN, INT64_MAX = -(2.0 ** 63), 2.0 ** 63


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
    name none (``--table``); ``fill`` maps table -> {column: (fits, typed value)} for the run-metadata
    flags (a value that failed its check is (False, None): rows that need it take the row path);
    ``row_path(lineno, line, size)`` returns None (a blank line), ``(table, row)`` or a reject."""

    def __init__(self, default: str | None, fill: dict[str, dict[str, tuple[bool, object]]], row_path):
        self.default = default if default in TABLES else None
        self.fill, self.row_path = fill, row_path
        self._con, self._local, self._lock = None, threading.local(), threading.Lock()

    def blocks(self, f, seen=None):
        """The file's blocks in order. WORKERS threads read blocks in columns at once (most of it out
        of the GIL: DuckDB, Arrow, numpy) while this one stages what they gave. ``seen``: called with
        every byte read (read_blocks)."""
        chunks = read_blocks(f, seen=seen)
        first, second = next(chunks, None), next(chunks, None)
        if first is None:
            return
        if second is None and first[2] is None and line_breaks(first[1]) < ROW_PATH_LINES:
            yield self._slow(block_lines(first[0], first[1]))  # a small file
            return
        ahead: deque = deque()
        try:
            with ThreadPoolExecutor(WORKERS, thread_name_prefix="mhw-jsonl") as pool:
                for lineno, data, size in _chain(first, second, chunks):
                    if size is not None:  # one line over the bound, read through: the row path rejects it
                        ahead.append(self._slow([(lineno, data, size)]))
                    elif b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):  # a lone \r breaks lines too
                        ahead.append(self._slow(block_lines(lineno, data)))
                    else:
                        ahead.append(pool.submit(self._columns, lineno, data))
                    while len(ahead) > WORKERS:
                        yield self._finish(ahead.popleft())
                while ahead:
                    yield self._finish(ahead.popleft())
        finally:
            if self._con is not None:
                self._con.close()
                self._con, self._local = None, threading.local()

    # --- the row path --------------------------------------------------------------------------

    def _slow(self, items) -> Block:
        out = _Collect()
        for lineno, line, size in items:
            out.row_path(lineno, self.row_path(lineno, line, size))
        return out.block()

    def _finish(self, job) -> Block:
        """A block the columns read: their rows, and the row path for the lines they left."""
        if isinstance(job, Block):
            return job
        done: _Done = job.result()
        out, lines = _Collect(), done.lines
        for table, at, rows in done.fast:
            out.fast(table, lines.lineno + at, rows)
        for i in done.slow.tolist():
            out.row_path(lines.lineno + i, self.row_path(lines.lineno + i, *lines.raw(i)))
        return out.block()

    # --- one block of plain lines, in a worker -----------------------------------------------------

    def _columns(self, lineno: int, data: bytearray) -> "_Done":
        """Split a block into lines and shapes, and parse with DuckDB the lines shapes vouch for: per
        group of shapes of one table that agree on their columns' types, one parse of the lines that
        start with the group's head (the rest of each line, the head's values known) and one of the
        others. Then the column checks."""
        lines = _Lines.of(data, lineno)
        plain = np.flatnonzero(lines.plain())
        code = _shapes(data, lines.n)
        shapes = self._vouch(lines, plain, code[plain])
        groups: list[_Group] = []
        for k, s in shapes.items():
            if s is not None:
                g = next((g for g in groups if g.takes(s)), None)
                if g is None:
                    groups.append(g := _Group(TABLES[s.table]))
                g.add(k, s)
        group_of = np.full(int(code.max(initial=0)) + 1, -1, np.int32)
        for n, g in enumerate(groups):
            group_of[g.codes] = n
        line_group = np.full(lines.n, -1, np.int32)
        line_group[plain] = group_of[code[plain]]
        parses = []
        try:
            for n, g in enumerate(groups):
                idx = np.flatnonzero(line_group == n)
                sid = np.searchsorted(g.codes, code[idx]).astype(np.int32)  # codes are added ascending
                if g.head is not None:
                    hit = lines.starting(g.head.bytes)[idx]
                    if hit.any():
                        at, cut = idx[hit], len(g.head.bytes)
                        lines.open_heads(at, cut)  # each line from its head's end, made an object
                        got = self._typed(lines.views(at, cut - 1), g.sql(head=True))
                        parses.append((_Parse(g, at, sid[hit], True), got))
                        idx, sid = idx[~hit], sid[~hit]
                if len(idx):
                    parses.append((_Parse(g, idx, sid, False), self._typed(lines.views(idx), g.sql(head=False))))
        finally:
            lines.close_heads()
        done, slow = _Done(lines, [], None), [np.flatnonzero(line_group < 0)]
        for p, got in parses:
            ok, rows = p.group.check(got, lines, p, self.fill.get(p.group.table.name, {}))
            done.fast.append((p.group.table.name, p.idx[ok], rows))
            slow.append(p.idx[~ok])
        done.slow = np.sort(np.concatenate(slow))
        return done

    def _vouch(self, lines: "_Lines", plain: np.ndarray, codes: np.ndarray) -> dict[int, Shape | None]:
        """Each shape of the block's plain lines (``codes``), read off its first line; where that line is
        bad, off its last or middle one (a bad line does not send its good neighbours to the row path)."""
        found, first, count = np.unique(codes, return_index=True, return_counts=True)
        out, retries = {}, RETRIES
        for k, i, n in zip(found.tolist(), first.tolist(), count.tolist()):
            out[k] = Shape.of(lines.line(int(plain[i])), self.default, self.fill)
            if out[k] is None and n > 1 and retries:
                retries -= 1
                at = plain[np.flatnonzero(codes == k)]
                for j in (at[-1], at[len(at) // 2]):
                    if (shape := Shape.of(lines.line(int(j)), self.default, self.fill)) is not None:
                        out[k] = shape
                        break
        return out

    def _typed(self, lines: pa.Array, sql: str) -> pa.Table:
        """DuckDB's typed parse of ``lines`` (a cursor per worker thread)."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                if self._con is None:
                    import duckdb  # here, not at the top: a small file never starts it

                    self._con = duckdb.connect(config={"threads": DUCKDB_THREADS})
                cursor = self._local.cursor = self._con.cursor()
        batches = [pa.record_batch([lines.slice(a, BATCH_ROWS)], names=["line"]) for a in range(0, len(lines), BATCH_ROWS)]
        name = f"lines_{threading.get_ident()}"  # each worker's own, whatever DuckDB shares between cursors
        cursor.register(name, pa.Table.from_batches(batches, pa.schema([("line", lines.type)])))
        try:
            return cursor.sql(sql.replace(LINES, name)).to_arrow_table()
        finally:
            cursor.unregister(name)


class _Group:
    """Shapes of one table whose columns agree on their DuckDB types: parsed together."""

    def __init__(self, table: Table):
        self.table, self.types, self.named = table, {}, False
        self.codes: list[int] = []
        self.shapes: list[Shape] = []
        self.nulls = False

    def takes(self, s: Shape) -> bool:
        return s.table == self.table.name and all(self.types.get(c, t) == t for c, t in s.types().items())

    def add(self, code: int, s: Shape) -> None:
        self.codes.append(code)
        self.shapes.append(s)
        self.types.update(s.types())
        self.named |= s.named
        self.nulls |= s.nulls

    @cached_property
    def head(self) -> "_Head | None":
        """The first shape's head (jsonl_shapes.head), when its values pass the column checks."""
        got = head(self.shapes[0])
        if got is None:
            return None
        length, values = got
        for k, v in values.items():  # checked once, as the row path checks them
            if k != "table":
                try:
                    _check_string(self.table, k, v)
                except ValueError:
                    return None
        return _Head(self.shapes[0].line[:length], values)

    def sql(self, head: bool) -> str:
        """The query: whether DuckDB parsed each line, the columns as typed (less the head's, for lines
        parsed from their head's end), and the keys when a shape has a null (a null reads like a missing
        key: the keys are compared whole)."""
        known = self.head.values if head else {}
        types = {**({"table": "VARCHAR"} if self.named else {}), **self.types}
        struct = "{" + ", ".join(f'"{c}": "{t}"' for c, t in types.items() if c not in known) + "}"
        keys = ', try(json_keys(line)) as "__keys"' if self.nulls else ""
        return (f'select s is not null as "__ok", unnest(s){keys} '
                f"from (select line, try(json_transform(line, '{struct}')) as s from {LINES})")

    def check(self, parsed: pa.Table, lines: "_Lines", p: "_Parse", fill: dict):
        """Which lines of a parse the columns vouch for, and their rows in ingest's input schema."""
        table, sid, n = self.table, p.sid, len(p.idx)
        known = self.head.values if p.head else {}

        def per_line(values) -> np.ndarray:  # one value per shape, for each line
            return np.asarray(values)[sid]

        ok = parsed.column("__ok").to_numpy(zero_copy_only=False).copy()
        has = [{c for c, k in s.kinds if k != "null"} for s in self.shapes]  # columns with a value
        if self.named and "table" not in known:  # the table field is there and names the shape's table
            want = pa.array(np.array([s.table if s.named else None for s in self.shapes], object)[sid], pa.string())
            same = pc.fill_null(pc.equal(_one(parsed.column("table")), want), False).to_numpy(zero_copy_only=False)
            ok &= same | ~per_line([s.named for s in self.shapes])
        if self.nulls:
            expected = [s.keys[len(known):] if s.nulls else None for s in self.shapes]
            ok &= _keys_match(_one(parsed.column("__keys")), sid, expected)
        cols: dict[str, pa.Array] = {}
        for name, value in known.items():
            if name != "table":
                cols[name] = _repeat(value, n)
        for name, duck in self.types.items():
            if name in known:
                continue
            col = _one(parsed.column(name))
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            ok &= valid | ~per_line([name in h for h in has])  # a key its shape has, not found
            ctype = table.column(name).type
            if ctype == STRING:
                ok &= _strings_fit(table, name, col)
                if name in table.required:
                    ok &= pc.fill_null(pc.not_equal(col, ""), True).to_numpy(zero_copy_only=False)
            elif ctype == TIMESTAMP:
                col, good = _timestamps(col)
                ok &= good
            elif duck == "DOUBLE" and pa.types.is_integer(table.schema.field(name).type):  # 3.0 for 3
                v = col.to_numpy(zero_copy_only=False)
                lo, hi = (INT32_MIN, INT32_MAX) if ctype == INT32 else (INT64_MIN, INT64_MAX)
                whole = valid & np.isfinite(v) & (np.floor(v) == v) & (v >= lo) & (v < hi)
                ok &= whole | ~valid
                col = pa.array(np.where(whole, v, 0).astype(np.int64), mask=~whole)
            elif ctype == INT32:
                v = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls as NaN
                ok &= ~valid | ((v >= INT32_MIN) & (v < INT32_MAX))
            elif duck == "DOUBLE":  # a number column: non-finite values as the shape writes them
                odd = np.flatnonzero(valid & ~np.isfinite(col.to_numpy(zero_copy_only=False)))
                if len(odd):
                    kind = per_line(np.array([dict(s.kinds).get(name) for s in self.shapes], object))[odd]
                    ok[odd[kind == "int"]] = False  # an integer literal beyond float range: Python's OverflowError
                    for i in odd[kind == "const"].tolist():  # NaN or Infinity: -NaN is not JSON to Python
                        if b"-NaN" in lines.line(int(p.idx[i])):
                            ok[i] = False
            cols[name] = col
        for name, (fits, value) in fill.items():
            absent = per_line([name not in s.keys for s in self.shapes])
            if not absent.any():
                continue
            ftype = table.schema.field(name).type
            full = pa.nulls(n, ftype).fill_null(pa.scalar(value, ftype))
            if absent.all():
                cols[name] = full
            else:
                base = cols[name].cast(ftype) if name in cols else pa.nulls(n, ftype)
                cols[name] = pc.if_else(pa.array(absent), full, base)
        schema = input_schema(table)
        keep = None if ok.all() else pa.array(ok)
        kept, nulls = int(ok.sum()), {}  # one array of nulls per type: most columns of a log are empty
        arrays = [(cols[f.name].cast(f.type) if keep is None else cols[f.name].filter(keep).cast(f.type))
                  if f.name in cols else nulls.setdefault(f.type, pa.nulls(kept, f.type)) for f in schema]
        return ok, pa.Table.from_arrays(arrays, schema=schema)


class _Head(NamedTuple):
    """The bytes a group's lines may start with, and the values of the members they hold."""

    bytes: bytes
    values: dict[str, str]


@dataclass
class _Parse:
    """One DuckDB parse of lines of a group: the lines, their shapes (places in the group's list),
    and whether they are parsed from their head's end."""

    group: _Group
    idx: np.ndarray
    sid: np.ndarray
    head: bool


# --- helpers ---------------------------------------------------------------------------------------

def _chain(first, second, rest):
    yield first
    if second is not None:
        yield second
        yield from rest


def _check_string(table: Table, name: str, value: str) -> None:
    """Raise ValueError when a string ``value`` of column ``name`` would not pass the row path's checks
    (its bound, a slug for a partition column, a required column not empty)."""
    if len(value) > table.max_chars(name) or name in table.required and not value:
        raise ValueError(name)
    if name in table.partition_by:
        check_slug(name, value)  # PartitionError is a ValueError


def _repeat(value: str, n: int) -> pa.Array:
    """``value`` ``n`` times, as strings (a block's worth: well within 32-bit offsets)."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])


def _one(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _shapes(data: bytes, n: int) -> np.ndarray:
    """Each line's shape, as a code: lines of one shape share it."""
    sig = data.translate(None, SHAPE_CUT)
    sb = np.frombuffer(sig, np.uint8)
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    nl = np.flatnonzero(sb == 10)[:n] + 1
    offsets[1:len(nl) + 1] = nl
    offsets[len(nl) + 1:] = len(sig)  # the last line, no line break after it
    shapes = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(sig)])
    enc = pc.dictionary_encode(shapes)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32)


def _keys_match(keys: pa.Array, sid: np.ndarray, expected: list) -> np.ndarray:
    """Lines whose shape has a null (``expected``: its keys, else None) and whose keys, as DuckDB
    reads them, are not those keys, whole and in order: False; every other line True."""
    out = np.ones(len(sid), bool)
    offsets = keys.offsets.to_numpy(zero_copy_only=False)
    flat = keys.values
    valid = keys.is_valid().to_numpy(zero_copy_only=False)
    for s, want in enumerate(expected):
        if want is None:
            continue
        rows = np.flatnonzero(sid == s)
        good = valid[rows] & (offsets[rows + 1] - offsets[rows] == len(want))
        at = rows[good]
        if len(at):
            got = flat.take(pa.array((offsets[at][:, None] + np.arange(len(want))).ravel()))
            same = pc.equal(got, pa.array(list(want) * len(at))).to_numpy(zero_copy_only=False)
            good[good] = same.reshape(len(at), len(want)).all(axis=1)
        out[rows] = good
    return out


@dataclass
class _Done:
    """A block the columns read: its lines, per parse (table, line indices, rows) of the lines they
    vouch for, and the indices of the lines left for the row path."""

    lines: "_Lines"
    fast: list
    slow: np.ndarray | None


class _Lines:
    """The lines of one block: offsets into its bytes (without their line breaks), numbered from
    ``lineno``."""

    def __init__(self, data: bytearray, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, lineno: int):
        self.data, self.buf, self.starts, self.ends, self.lineno = data, buf, starts, ends, lineno
        self.n = len(starts)
        self._opened: list[tuple[np.ndarray, np.ndarray]] = []  # (places, bytes there) open_heads changed

    @classmethod
    def of(cls, data: bytearray, lineno: int) -> "_Lines":
        buf = np.frombuffer(data, np.uint8)  # writable: open_heads writes into it
        nl = np.flatnonzero(buf == 10)
        starts = np.concatenate([[0], nl + 1])
        ends = np.concatenate([nl, [len(data)]])
        if data.endswith(b"\n"):  # no line after the last break
            starts, ends = starts[:-1], ends[:-1]
        if b"\r" in data:  # \r\n endings: the \r is not part of the line
            cr = np.zeros(len(ends), bool)
            cr[ends > starts] = buf[ends[ends > starts] - 1] == 13
            ends = ends - cr
        return cls(data, buf, starts, ends, lineno)

    def plain(self) -> np.ndarray:
        """Lines the columns may read: ``{...}``, within LINE_BYTES, UTF-8, no BOM."""
        length = self.ends - self.starts
        plain = length > 0
        nz = np.flatnonzero(plain)
        plain[nz] = (self.buf[self.starts[nz]] == 123) & (self.buf[self.ends[nz] - 1] == 125) & (length[nz] <= LINE_BYTES)
        if self.lineno == 1 and self.data.startswith(BOM):
            plain[0] = False
        try:
            if not self.data.isascii():  # ASCII is UTF-8, and checked 10x faster
                self.data.decode("utf-8")
        except UnicodeDecodeError:  # find the lines that are not (rare): each non-ASCII line alone
            high = np.unique(np.searchsorted(self.starts, np.flatnonzero(self.buf >= 128), "right") - 1)
            for i in high.tolist():
                try:
                    self.line(i).decode("utf-8")
                except UnicodeDecodeError:
                    plain[i] = False
        return plain

    def line(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]]

    def raw(self, i: int) -> tuple[bytes, int | None]:
        """Line ``i`` as read_lines gives it: (line, None), or (its head, its length) when over the bound."""
        line = self.line(i)
        return (line, None) if len(line) <= LINE_BYTES else (line[:RAW_HEAD], len(line))

    def views(self, idx: np.ndarray, skip: int = 0) -> pa.Array:
        """The lines ``idx`` as strings (Arrow string views into the block: no copy), each from its
        byte ``skip`` on."""
        off = (self.starts[idx] + skip).astype(np.int32)
        length = (self.ends[idx] - off).astype(np.int32)
        views = np.zeros((len(idx), 4), np.int32)  # length, first 4 bytes, buffer 0, offset
        views[:, 0] = length
        views[:, 1] = self.buf[np.minimum(off[:, None] + np.arange(4), len(self.buf) - 1)].view(np.int32)[:, 0]
        views[:, 3] = off
        short = np.flatnonzero(length <= 12)  # kept whole in the view
        if len(short):
            inline = views.view(np.uint8)
            inline[short, 4:] = 0
            for i in short.tolist():
                inline[i, 4:4 + length[i]] = self.buf[off[i]:off[i] + length[i]]
        return pa.Array.from_buffers(pa.string_view(), len(idx), [None, pa.py_buffer(views), pa.py_buffer(self.data)])

    def starting(self, head: bytes) -> np.ndarray:
        """Which lines start with ``head``."""
        offsets = np.append(self.starts, len(self.data)).astype(np.int32)
        whole = pa.Array.from_buffers(pa.binary(), self.n, [None, pa.py_buffer(offsets), pa.py_buffer(self.data)])
        return pc.starts_with(whole, pattern=head).to_numpy(zero_copy_only=False)

    def open_heads(self, idx: np.ndarray, head_len: int) -> None:
        """Make lines ``idx`` read as objects from their head's end: the byte before the next key
        (a comma or a space) becomes ``{``, until ``close_heads``."""
        at = self.starts[idx] + head_len - 1
        self._opened.append((at, self.buf[at].copy()))
        self.buf[at] = ord("{")

    def close_heads(self) -> None:
        for at, was in reversed(self._opened):
            self.buf[at] = was
        self._opened.clear()


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
