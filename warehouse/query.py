"""DuckDB over the lake: one view per lake table (hive partitions as columns), plus the cubes of the
serving file when it exists, attached read-only. ``mhw query "SQL"`` runs SQL on that connection,
locked down to reading (warehouse/readonly.py): no file outside the lake and the serving file, no
setting changes, and only read statements.

``--team NAME`` (conf/teams.yaml, warehouse/teams.py) restricts all of it to the team's models, as
Superset's row-level security does: each lake view reads only the team's ``model=`` partitions, and
DuckDB may open no other file (not another model's partition, not the serving file); the cubes the
query names are copied from the serving file, filtered to the team's rows (never a rolled-up
``model = 'ALL'`` row), and the file is detached before the query runs. Tables without a model
column (quarantine, audit_log, the audit trail) are empty for a team, except the model-free
``sketch_bounds`` and ``build_info``."""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys

import duckdb

from warehouse import commit, config, readonly
from warehouse.output import write_rows
from warehouse.schemas import BOOL, DATE, FLOAT64, INT32, INT64, STRING, TABLES, TIMESTAMP, Table, arrow_type
from warehouse.sqltext import literal

# DuckDB 2.0 folds expressions over Parquet min/max statistics, which leave NaN out: reading such a file
# directly, max(x) of [1, NaN, 2] came out 2 and `abs(x) < 'inf'` true for all three rows (measured by the
# cube engine, pipelines/engines/duckdb_engine.py). Through this module's views (every column cast) the
# NaN was found either way in our tests, but `mhw query` also runs users' own read_parquet() SQL, and NaN
# losses are the signal this warehouse exists for: every connection here turns that pass off.
DISABLED_OPTIMIZERS = "statistics_propagation"

_DUCK_TYPES = {
    STRING: "VARCHAR", INT64: "BIGINT", INT32: "INTEGER", FLOAT64: "DOUBLE", BOOL: "BOOLEAN", DATE: "DATE",
    TIMESTAMP: "TIMESTAMPTZ",
}


def duck_type(t) -> str:
    """DuckDB's type for a column type of warehouse/schemas.py, given by name or as pyarrow's type."""
    return _DUCK_TYPES[t] if isinstance(t, str) else _arrow_duck_types()[t]


@functools.cache
def _arrow_duck_types() -> dict:
    return {arrow_type(name): duck for name, duck in _DUCK_TYPES.items()}


def table_glob(lake_root: str, name: str) -> str:
    return f"{lake_root.rstrip('/')}/{name}/**/*.parquet"


def _has_files(lake_root: str, name: str) -> bool:
    if config.is_remote(lake_root):
        return True  # listing object stores is costly; let DuckDB find out
    d = os.path.join(lake_root, name)
    for _, _, files in os.walk(d):
        if any(f.endswith(".parquet") for f in files):
            return True
    return False


def view_sql(lake_root: str, table: Table) -> str:
    """A view whose columns and types are exactly the table's schema, empty if no file exists yet."""
    cols = ", ".join(f"cast({_q(c.name)} as {duck_type(c.type)}) as {_q(c.name)}" for c in table.columns)
    if not _has_files(lake_root, table.name):
        nulls = ", ".join(f"cast(null as {duck_type(c.type)}) as {_q(c.name)}" for c in table.columns)
        return f"create or replace view {table.name} as select {nulls} where false"
    hive_types = ", ".join(f"{literal(k)}: {literal(duck_type(table.column(k).type))}"
                           for k in table.partition_by)
    return (
        f"create or replace view {table.name} as select {cols} from read_parquet("
        f"{literal(table_glob(lake_root, table.name))}, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {{{hive_types}}})"
    )


def _q(name: str) -> str:
    return f'"{name}"'


# Serving tables without a model column that hold no model's data: a team sees them whole.
MODEL_FREE = ("sketch_bounds", "build_info")


def connect(lake_root: str | None = None, serving_path: str | None = None,
            read_only_serving: bool = True, locked: bool = True,
            con: duckdb.DuckDBPyConnection | None = None, team=None,
            sql: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per lake table and, if the serving file exists,
    that file attached read-only as ``serving`` with a view per cube in the main schema. ``locked``
    (the default): once the views exist, files outside the lake and the serving file cannot be
    opened and no setting can change (readonly.lock_down). ``con``: a fresh in-memory connection to
    set up so (default: a new one). ``team`` (a warehouse.teams.Team): only that team's rows, see
    the module docstring; ``sql``, the query to come, names the cubes worth copying."""
    settings = config.load()
    lake_root = lake_root or settings.lake_root
    serving_path = serving_path if serving_path is not None else settings.serving_path
    con = duckdb.connect() if con is None else con
    if team is not None:
        return _connect_team(con, lake_root, serving_path, team, sql, locked)
    con.execute(f"set disabled_optimizers = {literal(DISABLED_OPTIMIZERS)}")
    for table in TABLES.values():
        con.execute(view_sql(lake_root, table))
    if serving_path and os.path.exists(serving_path):
        mode = " (read_only)" if read_only_serving else ""
        con.execute(f"attach {literal(serving_path)} as serving{mode}")
        names = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_catalog = 'serving'").fetchall()]
        for n in names:
            if n not in TABLES:
                con.execute(f"create or replace view {_q(n)} as select * from serving.main.{_q(n)}")
    if locked:
        lake_dir = lake_root if config.is_remote(lake_root) else os.path.abspath(lake_root)
        readonly.lock_down(con, directories=[lake_dir],
                           paths=[os.path.abspath(serving_path)] if serving_path else [])
    return con


def _connect_team(con, lake_root: str, serving_path: str, team, sql: str | None, locked: bool):
    if config.is_remote(lake_root):
        raise ValueError("--team needs a local lake (its partitions are listed to pick the team's)")
    con.execute(f"set disabled_optimizers = {literal(DISABLED_OPTIMIZERS)}")
    lake_root = os.path.abspath(lake_root)
    allowed = []
    for table in TABLES.values():
        dirs = []
        if "model" in table.partition_by:
            base = os.path.join(lake_root, table.name)
            dirs = [os.path.join(base, d) for d in sorted(_listdir(base))
                    if d.startswith("model=") and team.owns(d[len("model="):])]
        allowed += [d + os.sep for d in dirs]
        con.execute(_team_view_sql(table, dirs))
    if serving_path and os.path.exists(serving_path):
        con.execute(f"attach {literal(serving_path)} as serving (read_only)")
        names = {r[0]: r[1] for r in con.execute(
            "select table_name, list(column_name) from information_schema.columns "
            "where table_catalog = 'serving' group by table_name").fetchall()}
        for n, cols in names.items():
            if n in TABLES:
                continue
            if n in MODEL_FREE:
                where = "true"
            elif "model" in cols and sql is not None and not re.search(rf"\b{re.escape(n)}\b", sql, re.I):
                where = "false"  # not named by the query: its columns, none of its rows
            elif "model" in cols:
                where = team.predicate()
            else:
                where = "false"
            con.execute(f"create table {_q(n)} as select * from serving.main.{_q(n)} where {where}")
        con.execute("detach serving")
    if locked:
        readonly.lock_down(con, directories=allowed, paths=[])
    return con


def _team_view_sql(table: Table, dirs: list[str]) -> str:
    """``view_sql`` over the given partition folders only (none: an empty view)."""
    dirs = [d for d in dirs if any(f.endswith(".parquet") for _, _, fs in os.walk(d) for f in fs)]
    if not dirs:
        nulls = ", ".join(f"cast(null as {duck_type(c.type)}) as {_q(c.name)}" for c in table.columns)
        return f"create or replace view {table.name} as select {nulls} where false"
    cols = ", ".join(f"cast({_q(c.name)} as {duck_type(c.type)}) as {_q(c.name)}" for c in table.columns)
    globs = ", ".join(literal(f"{d}/**/*.parquet") for d in dirs)
    hive_types = ", ".join(f"{literal(k)}: {literal(duck_type(table.column(k).type))}" for k in table.partition_by)
    return (f"create or replace view {table.name} as select {cols} from read_parquet([{globs}], "
            f"hive_partitioning = true, union_by_name = true, hive_types = {{{hive_types}}})")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sql", help="SQL to run; lake tables and cubes are views by their names; read "
                   f"statements only ({readonly.READ_KINDS})")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--serving", help="serving DuckDB file (default from config)")
    p.add_argument("--max-rows", type=int, default=200, help="rows printed in table format")
    p.add_argument("--team", help="only this team's models (conf/teams.yaml or $MHW_TEAMS), as its "
                                  "Superset users see them; no rolled-up 'ALL' rows")


def run(args: argparse.Namespace) -> int:
    # One database for the check and the query: each more costs ~30 ms, a tenth of the start-up. The
    # check only parses, before any view exists, so a refused statement never lists the lake.
    con = duckdb.connect()
    try:
        readonly.check_read_only(args.sql, con)
    except (readonly.NotReadOnly, duckdb.Error) as e:  # a syntax error too (it was a traceback)
        print(f"mhw query: {e}", file=sys.stderr)
        return 2
    # The lake lock, shared, for the whole read: no ingest commits while the query lists and reads
    # files, and the query never sees half of a killed one (warehouse/commit.py).
    team = None
    if getattr(args, "team", None):
        from warehouse import teams

        try:
            team = teams.load().team(args.team)
        except teams.TeamsError as e:
            print(f"mhw query: {e}", file=sys.stderr)
            return 2
    with _read_lock(args.lake or config.load().lake_root):
        try:
            connect(args.lake, args.serving, con=con, team=team, sql=args.sql)
            cur = con.execute(args.sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if cols else []
        except duckdb.Error as e:
            print(f"mhw query: {e}", file=sys.stderr)
            return 2
    write_rows(cols, rows, args.format, sys.stdout, args.max_rows)
    return 0


def _read_lock(lake_root: str):
    """``Lake(lake_root).read_lock()`` without building a Lake, whose pyarrow filesystem would cost
    this command more start-up than all the rest (bench/bench_startup.py): the lake lock, shared, on a
    local lake; nothing on an object store."""
    if config.is_remote(lake_root):
        return contextlib.nullcontext()
    return commit.locked(os.path.abspath(lake_root), "shared")
