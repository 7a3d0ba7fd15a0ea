"""DuckDB, in process: the default engine, and the one `mhw query` and the serving file use."""
from __future__ import annotations

import itertools

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from pipelines.engines import normalize
from warehouse.query import DISABLED_OPTIMIZERS, duck_type
from warehouse.sqltext import literal as _lit

_ids = itertools.count()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, filesystem=None, threads: int | None = None):
        # filesystem: a pyarrow filesystem for object-store lakes (no DuckDB extension is needed:
        # Arrow reads the files, DuckDB scans the Arrow dataset with projection pushdown)
        self.fs = filesystem
        self.threads = threads
        self.con = self._setup(duckdb.connect())

    def _setup(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        con.execute("set enable_progress_bar = false")
        con.execute("set TimeZone = 'UTC'")
        # DuckDB 2.0 folds NaN-sensitive expressions from Parquet min/max statistics, which leave NaN
        # out: on a file holding [1, NaN, 2], max(x) returns 2 and `abs(x) < 'inf'` is true for all
        # three rows. Without this pass, DuckDB agrees with Spark (and with itself on Arrow input).
        con.execute(f"set disabled_optimizers = {_lit(DISABLED_OPTIMIZERS)}")
        if self.threads:
            con.execute(f"set threads = {int(self.threads)}")
        return con

    def session(self) -> "DuckDBEngine":
        """Another connection to the same database: its own temp views, the same threads and memory."""
        other = object.__new__(DuckDBEngine)
        other.fs, other.threads = self.fs, self.threads
        other.con = self._setup(self.con.cursor())
        return other

    def register_arrow(self, name: str, table: pa.Table | ds.Dataset) -> None:
        hidden = f"__arrow_{next(_ids)}"
        self.con.register(hidden, table)
        self.con.execute(f"create or replace temp view {_q(name)} as select * from {_q(hidden)}")

    def register_files(self, name: str, files: list[str], schema: pa.Schema,
                       partition_cols: tuple[str, ...] = (), base_dir: str | None = None) -> None:
        """A view named ``name`` with exactly ``schema``'s columns and types over Parquet ``files``;
        ``partition_cols`` are read from the hive path (``k=v`` folders), the rest from the files."""
        if not files:
            self.register_arrow(name, schema.empty_table())
            return
        if self.fs is not None:
            part = (ds.partitioning(pa.schema([(k, pa.string()) for k in partition_cols]), flavor="hive")
                    if partition_cols else None)
            data = ds.dataset(files, filesystem=self.fs, format="parquet", partitioning=part,
                              partition_base_dir=base_dir)
            hidden = f"__files_{next(_ids)}"
            self.con.register(hidden, data)
            source = _q(hidden)
        else:
            listed = "[" + ", ".join(_lit(f) for f in files) + "]"
            if partition_cols:
                types = ", ".join(f"{_lit(k)}: 'VARCHAR'" for k in partition_cols)
                source = (f"read_parquet({listed}, hive_partitioning = true, union_by_name = true, "
                          f"hive_types = {{{types}}})")
            else:
                source = f"read_parquet({listed}, hive_partitioning = false, union_by_name = true)"
        # A column newer than every file (a table that grew one: alerts' host and rank) reads as null,
        # as Spark's reader with the declared schema does, rather than failing the view.
        present = {r[0] for r in self.con.execute(f"describe select * from {source}").fetchall()}
        cols = ", ".join(f"cast({_q(f.name) if f.name in present else 'null'} as {duck_type(f.type)}) as {_q(f.name)}"
                         for f in schema)
        self.con.execute(f"create or replace temp view {_q(name)} as select {cols} from {source}")

    def materialize(self, name: str, sql: str) -> None:
        """The result of ``sql`` held as a temp table ``name``: computed once, read by many queries.
        Held for a few queries only: uncompressed, its rows in whatever order the threads produce them
        (readers never rely on a table's order): 40 % less CPU than the defaults at 10 M rows. Its text
        columns then become ENUMs of their values in sorted order: equal, sorted and compared as the
        text is, but grouped and joined on as integer codes (a quarter less CPU for the rules reading
        a table of every logged step, for 1.6 s at 10 M rows)."""
        self.con.execute("set preserve_insertion_order = false")
        self.con.execute("set force_compression = 'uncompressed'")
        try:
            self.con.execute(f"create or replace temp table {_q(name)} as {sql}")
            texts = self.con.execute(
                "select column_name from duckdb_columns() where table_name = ? and data_type = 'VARCHAR' "
                "and database_name = 'temp' order by column_index", [name]).fetchall()
            for (col,) in texts:
                values = f"select distinct {_q(col)} from {_q(name)} where {_q(col)} is not null order by 1"
                if self.con.execute(f"select count(*) from ({values})").fetchone()[0] == 0:
                    continue  # all null: nothing to code (an ENUM needs a value)
                enum = f"__enum_{next(_ids)}"
                self.con.execute(f"create type {_q(enum)} as enum ({values})")
                self.con.execute(f"alter table {_q(name)} alter {_q(col)} type {_q(enum)}")
        finally:
            self.con.execute("reset preserve_insertion_order")
            self.con.execute("reset force_compression")

    def register_view(self, name: str, sql: str) -> None:
        """A temp view ``name`` over ``sql`` (other views and tables of this engine)."""
        self.con.execute(f"create or replace temp view {_q(name)} as {sql}")

    def query(self, sql: str) -> pa.Table:
        return normalize(self.con.sql(sql).to_arrow_table())

    def close(self) -> None:
        self.con.close()
