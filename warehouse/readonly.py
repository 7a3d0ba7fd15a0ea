"""Read-only where promised: ``mhw query`` and Superset's SQL Lab run other people's SQL on DuckDB,
and both must only read the lake and the serving file. Two layers, because neither holds alone
(measured on DuckDB 2.0):

- ``lock_down`` (DuckDB settings): no file outside the allowed directories and paths, no extension
  loads, no setting changes afterwards. DuckDB enforces this for reads (``read_csv('/etc/passwd')``,
  ``glob('/*')``, ``<lake>/../..`` are refused), not for writes: ``COPY … TO`` may write anywhere
  under an allowed directory, and an attached database's own file and WAL are always allowed, so
  ``COPY … TO '<serving>.wal'`` plants a WAL that read-only opens replay, and ``COPY … TO '<serving>'
  (use_tmp_file false)`` overwrites the serving file itself, with external access off.
- ``check_read_only`` (the statements): DuckDB's own parser splits the SQL; only a SELECT (DESCRIBE,
  SHOW, SUMMARIZE and PIVOT … IN (…) are SELECTs to DuckDB) or an EXPLAIN of one may run. DuckDB 2.0
  also runs data-modifying WITH clauses inside a SELECT (``with d as (copy … to 'x') select 1``,
  ``with d as (delete from t returning *) …``), so each SELECT's parse tree (``json_serialize_sql``)
  is walked too, and the functions that run SQL from a string or a serialized plan, which no check
  can see, are refused.

``REFUSED_SQL_FUNCTIONS`` and ``LOCKED_CONFIG`` are the same rules for a Superset connection (see
dashboards/superset_config.py). Stdlib and duckdb only: .venv-bi imports this module into Superset.
"""
from __future__ import annotations

import json
import os
import re

import duckdb

from warehouse.sqltext import literal

READ_KINDS = "SELECT, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE"

# DuckDB settings that close what enable_external_access leaves open, for lock_down and Superset:
# extensions (loaded code reads and writes anything) and Python replacement scans (a SELECT naming a
# variable of the calling Python frame reads that object).
_OFF = ("enable_external_access", "autoload_known_extensions", "autoinstall_known_extensions",
        "allow_community_extensions", "python_enable_replacements")
# A DuckDB connection that opens the serving file for SQL Lab: read-only, nothing outside it, locked.
LOCKED_CONFIG = {"access_mode": "read_only", **{k: "false" for k in _OFF}, "lock_configuration": "true"}

# Query nodes a read may contain; any other (INSERT_QUERY_NODE, COPY_QUERY_NODE, …) writes.
_READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE", "RECURSIVE_CTE_NODE"}
# Functions that run SQL given as a value (a string, a serialized plan): the check never sees it.
REFUSED_SQL_FUNCTIONS = {"query", "json_execute_serialized_sql"}
_EXPLAIN = re.compile(r"\s*explain\s+(?:analy[sz]e\s+)?(?:\([^()]*\)\s*)?(.*)\Z", re.IGNORECASE | re.DOTALL)
_FIRST_WORD = re.compile(r"\s*([A-Za-z_]+)")


class NotReadOnly(ValueError):
    """SQL that could write, change settings or run SQL unseen; the message names the statement."""


def check_read_only(sql: str, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Raise NotReadOnly unless every statement of ``sql`` only reads. A syntax error is DuckDB's
    own ``duckdb.ParserException``, as when the SQL runs. ``con``: the connection to parse on (it
    only parses there: nothing runs, nothing is resolved), so that a caller about to run ``sql`` on it
    opens no other database (each costs ~30 ms, a tenth of `mhw query`'s start-up); by default
    DuckDB's default connection and a fresh in-memory database with nothing attached."""
    statements = (con or duckdb).extract_statements(sql)
    if not statements:
        raise NotReadOnly("no statement to run")
    for st in statements:
        _check_statement(st, con)


def _check_statement(st, con: duckdb.DuckDBPyConnection | None) -> None:
    try:
        kind = st.type.name
    except ValueError:  # a kind this duckdb's Python enum has no name for (UPDATE EXTENSIONS is one)
        kind = "UNKNOWN"
    if kind == "SELECT":
        _check_tree(st.query, con)
        return
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs what it explains: check that statement
        m = _EXPLAIN.match(st.query)
        try:
            inner = (con or duckdb).extract_statements(m.group(1)) if m else []
        except duckdb.ParserException:
            inner = []
        if len(inner) != 1:
            raise NotReadOnly(f"EXPLAIN statement refused: only EXPLAIN [ANALYZE] of one SELECT runs here: "
                              f"{_snippet(st.query)}")
        _check_statement(inner[0], con)
        return
    word = m.group(1).upper() if (m := _FIRST_WORD.match(st.query)) else kind
    if kind == "UNKNOWN":
        kind = "a kind this check does not know"
    named = word if word == kind else f"{word} ({kind})"
    hint = ""
    if kind == "MULTI" and word in ("PIVOT", "UNPIVOT"):
        hint = " (without an IN (…) list PIVOT first creates a type; list the values: ON col IN (…))"
    raise NotReadOnly(f"{named} statement refused: only read statements run here ({READ_KINDS}){hint}: "
                      f"{_snippet(st.query)}")


def _check_tree(query: str, con: duckdb.DuckDBPyConnection | None) -> None:
    """The parse tree of one SELECT: no writing query node anywhere, no function that runs SQL text."""
    parser = con or duckdb.connect()  # parsing only: json_serialize_sql binds no name and runs nothing
    try:
        out = parser.execute("select json_serialize_sql(?::varchar)", [query]).fetchone()[0]
    finally:
        if con is None:
            parser.close()
    try:
        tree = json.loads(out)
    except RecursionError:
        raise NotReadOnly(f"SELECT refused: nested too deeply to check: {_snippet(query)}") from None
    if tree.get("error"):
        raise NotReadOnly(f"SELECT refused: DuckDB cannot show its parse tree to check it "
                          f"({tree.get('error_message')}): {_snippet(query)}")
    stack = [tree["statements"]]
    while stack:
        o = stack.pop()
        if isinstance(o, list):
            stack.extend(o)
        elif isinstance(o, dict):
            t = o.get("type")
            if isinstance(t, str) and t.endswith("_NODE") and t not in _READ_NODES:
                what = t.removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
                raise NotReadOnly(f"{what} inside a SELECT refused (a data-modifying WITH clause); only "
                                  f"read statements run here ({READ_KINDS}): {_snippet(query)}")
            fn = o.get("function_name")
            if isinstance(fn, str) and fn.lower() in REFUSED_SQL_FUNCTIONS:
                raise NotReadOnly(f"{fn.lower()}() refused: it runs SQL given as a value, which this check "
                                  f"cannot see; write that SQL itself: {_snippet(query)}")
            stack.extend(o.values())


def _snippet(sql: str, n: int = 80) -> str:
    s = " ".join(sql.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def lock_down(con: duckdb.DuckDBPyConnection, directories=(), paths=()) -> None:
    """From now on ``con`` opens files only under ``directories``, at ``paths`` and of the databases
    already attached; it loads no extension and no setting of it can change again. Reads only:
    COPY can still write where reading is allowed, which ``check_read_only`` refuses."""
    con.execute(f"set allowed_directories = [{', '.join(literal(d) for d in directories)}]")
    con.execute(f"set allowed_paths = [{', '.join(literal(p) for p in paths)}]")
    for setting in _OFF:
        con.execute(f"set {setting} = false")
    con.execute("set lock_configuration = true")


def remove_wal(db_path: str) -> bool:
    """Remove ``<db_path>.wal``. The serving file is only ever replaced whole (os.replace), never
    written in place, so a WAL beside it is a leftover or a plant, and read-only opens would replay
    it over the file. True if there was one."""
    try:
        os.unlink(f"{db_path}.wal")
        return True
    except FileNotFoundError:
        return False
