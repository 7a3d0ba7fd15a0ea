"""The lake writer: atomic, idempotent and buffered.

- Atomic: a file is written aside (``<root>/_tmp/``) and renamed into its partition, so no reader ever
  sees a partial file; every write is part of a transaction (warehouse/commit.py: a lake lock, a
  rollback journal), so a write of several files is seen whole or not at all, and a killed one is
  undone by the next process to take the lock. On object stores a single PUT is already atomic, so
  files are written in place, one at a time.
- Idempotent: every write carries a ``key``; the file it lands in is ``<partition>/<key>.parquet``.
  A retry with the same key replaces its own files instead of adding rows.
- Buffered: ``BufferedWriter`` collects rows in memory and hands whole blocks to a background thread,
  so a training loop can log every step without waiting on I/O.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse import commit
from warehouse.config import is_remote
# the names of files: re-exported, since callers have always found them here
from warehouse.keys import SLUG, PartitionError, block_key, block_of, check_slug, slugify  # noqa: F401
from warehouse.schemas import TABLES, Table

@dataclass
class WriteResult:
    rows: int = 0
    files: list[str] = field(default_factory=list)

    def __iadd__(self, other: "WriteResult") -> "WriteResult":
        self.rows += other.rows
        self.files += other.files
        return self


def conform(table: Table, data: pa.Table) -> pa.Table:
    """Cast ``data`` to ``table``'s logical schema: missing columns become nulls, the ``date``
    partition is derived from the time column, unknown columns are an error."""
    unknown = set(data.column_names) - set(table.schema.names)
    if unknown:
        raise ValueError(f"{table.name}: unknown columns {sorted(unknown)}")
    cols = []
    for f in table.schema:
        if f.name in data.column_names:
            cols.append(data.column(f.name).cast(f.type))
        elif f.name == "date":
            cols.append(pc.cast(data.column(table.time_column).cast(table.schema.field(table.time_column).type), pa.date32()))
        else:
            cols.append(pa.nulls(len(data), f.type))
    return pa.Table.from_arrays(cols, schema=table.schema)


class Lake:
    """A lake root (local folder or object-store URI) and the only code that writes files into it. The
    one handle on a location: its filesystem, its root inside that filesystem, its URI, whether it is
    local. Resolved once (``Lake.of``) and passed everywhere: builds, diagnoses, cube stores, engines."""

    def __init__(self, root: str | os.PathLike, durable: bool = True):
        """``durable=False`` skips the fsync before each rename: files still appear atomically to
        readers, but a power loss may lose recent ones. For regenerable bulk data (``simulate``)."""
        root = str(root)
        self.durable = durable
        if is_remote(root):
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.root = path.rstrip("/")
            self.local = False
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
            self.local = True
        self.uri = root.rstrip("/") if not self.local else self.root

    @classmethod
    def of(cls, where: "Lake | str | os.PathLike") -> "Lake":
        """``where`` as a handle: a Lake is passed through, a path or URI resolved."""
        return where if isinstance(where, Lake) else cls(where)

    @property
    def engine_filesystem(self) -> pafs.FileSystem | None:
        """What an engine reads this lake's files through: None for a local folder (DuckDB and Spark
        read local paths themselves), the pyarrow filesystem of an object store."""
        return None if self.local else self.fs

    def under(self, name: str) -> "Lake":
        """A handle on ``<root>/<name>`` on the same filesystem (the cube store beside the lake)."""
        return Lake(f"{self.uri}/{name}", self.durable)

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def table_dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def partition_dir(self, table: Table, values: dict) -> str:
        parts = []
        for k in table.partition_by:
            v = values[k]
            v = v.isoformat() if hasattr(v, "isoformat") else v
            parts.append(f"{k}={check_slug(k, v)}")
        return "/".join([self.table_dir(table.name), *parts])

    @contextlib.contextmanager
    def transaction(self):
        """Every write and delete in the block commits together, or not at all (warehouse/commit.py).
        Nested blocks (and Lake.write inside one) join the outer transaction of this thread. Yields
        the transaction (None on object stores, where each file is its own PUT)."""
        if not self.local:
            yield None
            return
        with commit.transaction(self.root, self.durable) as tx:
            yield tx

    @contextlib.contextmanager
    def read_lock(self):
        """Hold the lake still for the block: no writer commits while it runs (a short read)."""
        if not self.local:
            yield
            return
        with commit.locked(self.root, "shared"):
            yield

    @contextlib.contextmanager
    def snapshot(self, tables, files=()):
        """A root that holds hard links of every data file of ``tables`` (and of ``files``, paths under
        the root, where they exist) as of now: a long read of ``<it>/<table>`` sees one state of the
        lake whatever writers commit meanwhile."""
        if not self.local:
            yield self.root
            return
        with commit.snapshot(self.root, list(tables), tuple(files)) as root:
            yield root

    def write(self, table_name: str, data: pa.Table, key: str) -> WriteResult:
        """Write ``data`` into its partitions as ``<key>.parquet``, replacing an earlier write of the
        same key: in the partitions written, and in the other date partitions of the same model and
        hardware (a run resumed, or a checkpoint re-evaluated, on a later day). Returns rows written
        and the files' paths. One transaction (or part of the caller's)."""
        table = TABLES[table_name]
        check_slug("key", key)
        data = conform(table, data)
        jobs = [(f"{self.partition_dir(table, values)}/{key}.parquet", part.select(table.file_schema.names), values)
                for values, part in _split_by_partition(table, data)]
        with self.transaction() as tx:
            # Parquet encoding releases the GIL: partitions are written in parallel, one per core.
            if len(jobs) > 1:
                with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
                    list(pool.map(lambda j: self._write_file(j[1], j[0], tx), jobs))
            elif jobs:
                self._write_file(jobs[0][1], jobs[0][0], tx)
            written = [path for path, _, _ in jobs]
            if table.partition_by[-1:] == ("date",) and len(table.partition_by) > 1:
                self._drop_other_dates(table, key, {tuple(v[k] for k in table.partition_by[:-1]) for _, _, v in jobs},
                                       written)
        return WriteResult(sum(p.num_rows for _, p, _ in jobs), written)

    def _drop_other_dates(self, table: Table, key: str, prefixes: set[tuple], written: list[str]) -> None:
        keep = {os.path.normpath(p) for p in written}
        for values in prefixes:
            parent = "/".join([self.table_dir(table.name), *(f"{k}={v}" for k, v in zip(table.partition_by, values))])
            sel = pafs.FileSelector(parent, recursive=False, allow_not_found=True)
            for info in self.fs.get_file_info(sel):
                path = f"{info.path}/{key}.parquet"
                if info.type == pafs.FileType.Directory and os.path.normpath(path) not in keep:
                    self.delete(path)

    def merge(self, table_name: str, data: pa.Table, key: str) -> WriteResult:
        """Write ``data`` into ``key``'s rows, one row per natural key (``merge_key``): a row of
        ``data`` replaces the key's row with the same natural key (the last one of ``data`` if it
        repeats one), the key's other rows stay. Re-applying the same ``data`` changes nothing, so a
        retried delivery lands once; a run resumed mid-block replaces the steps it logs again and
        keeps the block's earlier ones. One transaction (or part of the caller's)."""
        table = TABLES[table_name]
        names = merge_key(table_name)
        data = _last_per_key(conform(table, data), names)
        with self.transaction():
            old = self._rows_of_key(table, key, data)
            if old is not None and old.num_rows:
                old = conform(table, old)
                old = old.filter(pc.invert(pc.is_in(_key_strings(old, names), value_set=_key_strings(data, names))))
                data = pa.concat_tables([old, data])
            return self.write(table_name, data, key)

    def _rows_of_key(self, table: Table, key: str, data: pa.Table) -> pa.Table | None:
        """Every row ``key`` holds under the partitions of ``data`` other than the date (a run's
        model and hardware), whatever the date: read back to be merged."""
        check_slug("key", key)
        fixed = table.partition_by[:-1] if table.partition_by[-1:] == ("date",) else table.partition_by
        combos = {tuple(r.values()) for r in data.select(list(fixed)).to_pylist()} if fixed else {()}
        parts = []
        for values in combos:
            parent = "/".join([self.table_dir(table.name), *(f"{k}={check_slug(k, v)}" for k, v in zip(fixed, values))])
            dirs = [i.path for i in self.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
                    if i.type == pafs.FileType.Directory]
            files = [i.path for i in self.fs.get_file_info([f"{d}/{key}.parquet" for d in dirs])
                     if i.type == pafs.FileType.File]
            for path in files:
                part = pq.read_table(path, filesystem=self.fs, schema=table.file_schema)
                for k, v in zip(fixed, values):
                    part = part.append_column(table.schema.field(k), pa.array([v] * part.num_rows, table.schema.field(k).type))
                parts.append(part.drop_columns([c for c in part.column_names if c == "date"]))
        return pa.concat_tables(parts, promote_options="default") if parts else None

    def put_table(self, path: str, data: pa.Table) -> None:
        """Write one Parquet file at ``path`` (inside the lake root), atomically, in a transaction."""
        with self.transaction() as tx:
            self._write_file(data, path, tx)

    def put_bytes(self, path: str, data: bytes) -> None:
        """Write one file of bytes at ``path`` (inside the lake root), atomically, in a transaction."""
        with self.transaction() as tx:
            self._publish(path, lambda f: f.write(data), ".bytes", tx)

    def put_file(self, path: str, write, suffix: str, tx: "commit.Transaction | None" = None) -> None:
        """Write one file at ``path`` (inside the lake root) as ``write(f)`` writes it to a binary file:
        streamed, atomically, in a transaction (``tx``: the caller's, for a pool thread, which has
        none of its own; else this thread's)."""
        if tx is not None:
            self._publish(path, write, suffix, tx)
            return
        with self.transaction() as tx:
            self._publish(path, write, suffix, tx)

    def delete(self, path: str) -> bool:
        """Delete the file at ``path`` if it exists (in a transaction), and the folders it leaves
        empty. Returns whether there was a file."""
        with self.transaction() as tx:
            if not self.local:
                if self.fs.get_file_info(path).type != pafs.FileType.File:
                    return False
                self.fs.delete_file(path)
                return True
            if not os.path.isfile(path):
                return False
            tx.before_change(path)
            os.unlink(path)
            commit.prune_empty(os.path.dirname(path), self.root)
            return True

    def _write_file(self, data: pa.Table, path: str, tx: "commit.Transaction | None") -> None:
        """Publish one Parquet file; ``tx`` is the caller's transaction (the writing thread may be a
        pool worker, which has none of its own)."""
        self._publish(path, parquet_bytes(data), ".parquet", tx)

    def _publish(self, path: str, write, suffix: str, tx: "commit.Transaction | None") -> None:
        """publish() into this lake: staged under ``_tmp/`` (emptied by the next exclusive lock holder
        if this process dies), the replaced file journaled by ``tx`` first."""
        publish(self.fs, path, write, self.local, staging=f"{self.root}/{commit.STAGING}", suffix=suffix,
                durable=self.durable, before=tx.before_change if tx is not None else None)

    def list_files(self, table: str) -> dict[str, list[str]]:
        """Every file of ``table``, by file name (``<key>.parquet``), from one recursive listing."""
        sel = pafs.FileSelector(self.table_dir(table), recursive=True, allow_not_found=True)
        found: dict[str, list[str]] = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                found.setdefault(info.base_name, []).append(info.path)
        return found

    def drop_stale(self, table: str, written: list[str], *, key: str | None = None, prefix: str | None = None,
                   listing: dict[str, list[str]] | None = None) -> list[str]:
        """Delete files of one key (or of every key starting with ``prefix``) that the latest write of
        that key did not produce: rows an earlier write put in partitions (another date, model or
        hardware) that the new content no longer has. Returns the deleted paths."""
        listing = self.list_files(table) if listing is None else listing
        keep = {os.path.normpath(p) for p in written}
        if key is not None:
            names = [f"{key}.parquet"]
        else:
            names = [n for n in listing if n.startswith(prefix)]
        stale = [p for n in names for p in listing.get(n, []) if os.path.normpath(p) not in keep]
        with self.transaction():
            return [p for p in stale if self.delete(p)]

    def recover(self) -> dict[str, int]:
        """Undo what killed writers left half done and remove their staged files (the next writer
        or reader does this anyway; maintenance calls it to report)."""
        if not self.local:
            return {}
        with commit.locked(self.root, "exclusive"):
            return commit.recovered(self.root) or {}

    def remove_old(self, folder: str, older_than_s: float) -> int:
        """Delete the entries (files or folders) of ``<root>/<folder>`` older than ``older_than_s``."""
        where = os.path.join(self.root, folder)
        if not self.local or not os.path.isdir(where):
            return 0
        n, cutoff = 0, time.time() - older_than_s
        for name in os.listdir(where):
            p = os.path.join(where, name)
            if os.path.getmtime(p) < cutoff:
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
                n += 1
        return n


def publish(fs: pafs.FileSystem, path: str, write, local: bool, *, staging: str | None = None,
            suffix: str = ".parquet", durable: bool = False, before=None) -> None:
    """The project's one atomic file write: readers see the old file or the new one, never half of
    one. ``write(f)`` writes the bytes to a binary file. Local: written aside (in ``staging``, else as
    ``.<id><suffix>.tmp`` beside ``path``, which the owner's clean-up removes), fsynced if ``durable``,
    ``before(path)`` called (a journal saving the old file), then renamed over ``path``. Object
    store: one PUT, atomic by the store's own rules."""
    parent = path.rsplit("/", 1)[0]
    if not local:
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as f:
            write(f)
        return
    os.makedirs(parent, exist_ok=True)
    if staging:
        os.makedirs(staging, exist_ok=True)
        tmp = f"{staging}/{uuid.uuid4().hex}{suffix}.tmp"
    else:
        tmp = f"{parent}/.{uuid.uuid4().hex}{suffix}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:  # the rename must not publish a file whose bytes are not on disk
                f.flush()
                os.fsync(f.fileno())
        if before is not None:
            before(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parquet_bytes(data: pa.Table):
    """``write`` for publish(): ``data`` as Parquet, with the lake's options."""
    return lambda f: pq.write_table(data, f, **parquet_options(data.schema))


def parquet_options(schema: pa.Schema) -> dict:
    # Dictionary-encode only strings: on float metrics it costs 40 % of write time and saves nothing.
    # No min/max statistics on floats: Parquet leaves NaN out of them, and DuckDB 2.0 then folds
    # `isnan(x)` to false for the whole row group -- NaN losses are the signal this lake must keep.
    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)],
            "write_statistics": [f.name for f in schema if not pa.types.is_floating(f.type)]}


def _split_by_partition(table: Table, data: pa.Table):
    """Yield (partition values, rows) for each partition present in ``data``, in one sort."""
    keys = table.partition_by
    for k in keys:
        if data.column(k).null_count:
            raise PartitionError(f"{table.name}: {data.column(k).null_count} rows have no {k}")
    if data.num_rows == 0:
        return
    codes, uniques = [], []
    for k in keys:
        enc = pc.dictionary_encode(data.column(k)).combine_chunks()
        codes.append(enc.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        uniques.append(enc.dictionary.to_pylist())
    for k, u in zip(keys, uniques):  # validate each distinct value once, not each row
        for v in u:
            check_slug(k, v.isoformat() if hasattr(v, "isoformat") else v)
    combined = np.zeros(data.num_rows, dtype=np.int64)
    for c, u in zip(codes, uniques):
        combined = combined * len(u) + c
    order = np.argsort(combined, kind="stable")
    sorted_codes = combined[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    if len(starts) > 1:  # one gather for the whole table, then zero-copy slices per partition
        data = data.take(pa.array(order))
    for s, e in zip(starts, ends):
        first = order[s]
        values = {k: u[c[first]] for k, u, c in zip(keys, uniques, codes)}
        yield values, data.slice(s, e - s)


class BufferedWriter:
    """Buffers rows for one run and one table; writes them in blocks on a background thread.

    Rows belong to numbered blocks; a block's file key is ``<prefix>-b<block>``. By default a row's
    block is ``step // flush_rows`` (or its time bucket for tables without a step), so a run resumed
    from a checkpoint rewrites exactly the blocks it logs again instead of duplicating them.
    A block is written when a later block starts, every ``flush_seconds`` (partially, to be replaced
    when complete), and at ``close()``.
    """

    def __init__(self, lake: Lake, table: str, prefix: str, flush_rows: int = 2000,
                 flush_seconds: float = 30.0, background: bool = True):
        self.lake, self.table, self.prefix = lake, table, check_slug("key prefix", prefix)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.schema = TABLES[table].schema
        self._names = set(self.schema.names)
        self._blocks: dict[int, list[dict]] = {}
        self._last_flush = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"mhw-{table}") if background else None
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.rows_written = 0
        self.files: list[str] = []

    def append(self, row: dict, block: int | None = None) -> None:
        b = block_of(self.table, row, self.flush_rows) if block is None else block
        rows = self._blocks.get(b)
        if rows is None:
            done = [k for k in self._blocks if k < b]
            for k in done:  # earlier blocks are complete: write them once, for good
                self._submit(k, self._blocks.pop(k))
            rows = self._blocks[b] = []
        rows.append(row)
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        for k, rows in self._blocks.items():
            self._submit(k, list(rows))
        self._last_flush = time.monotonic()
        if wait:
            self._drain()

    def close(self) -> None:
        self.flush(wait=True)
        self._blocks.clear()
        if self._pool:
            self._pool.shutdown(wait=True)

    def _submit(self, block: int, rows: list[dict]) -> None:
        if not rows:
            return
        key = block_key(self.prefix, block)
        if self._pool is not None:
            try:
                self._pending.append(self._pool.submit(self._write, key, rows))
                self._pending = [f for f in self._pending if not f.done() or f.exception()]
                return
            except RuntimeError:  # the interpreter is exiting (an exit hook's last flush): write here
                pass
        self._write(key, rows)

    def _write(self, key: str, rows: list[dict]) -> None:
        data = pa.Table.from_pylist(rows, schema=_present(self.schema, rows))
        res = self.lake.write(self.table, data, key)
        with self._lock:
            self.rows_written += res.rows  # counts rewrites of partial blocks too
            self.files = sorted(set(self.files) | set(res.files))

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()  # re-raises a background write's error in the caller

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The natural key Lake.merge merges a table's rows by: the table's own (warehouse/schemas.py); a
# rejected row is one field of one line of one source.
MERGE_KEYS = {"quarantine": ("target_table", "source", "line", "field")}


def merge_key(table_name: str) -> tuple[str, ...]:
    names = MERGE_KEYS.get(table_name) or TABLES[table_name].key
    if not names:
        raise ValueError(f"{table_name} has no natural key: its rows cannot be merged, only written")
    return names


def _key_strings(data: pa.Table, names: tuple[str, ...]) -> pa.Array:
    """One string per row naming its natural key (nulls spelled out, so they compare equal)."""
    cols = [pc.fill_null(pc.cast(data.column(n), pa.string()), "\x00") for n in names]
    return cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\x1f")


def _last_per_key(data: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """``data`` with one row per natural key: the last of each."""
    keys = _key_strings(data, names).combine_chunks() if data.num_rows else None
    if keys is None or pc.count_distinct(keys).as_py() == data.num_rows:
        return data
    last = {k: i for i, k in enumerate(keys.to_pylist())}
    return data.take(pa.array(sorted(last.values()), pa.int64()))


def rows_table(table_name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) as a pyarrow table of ``table_name``'s types, with the columns they name."""
    return pa.Table.from_pylist(rows, schema=_present(TABLES[table_name].schema, rows))


def _present(schema: pa.Schema, rows: list[dict]) -> pa.Schema:
    names = set().union(*rows)
    unknown = names - set(schema.names)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}")
    return pa.schema([f for f in schema if f.name in names])
