"""The serving file: one DuckDB file that dashboards and ``mhw query`` open read-only.

Each served model is a table named after the model; each ``serve:`` name in the SQL headers is a view
over the union of its models (``train_health`` = ``train_health_daily`` ∪ ``train_health_window``).
A build never writes the live file: it writes ``<serving>.<build>.tmp`` beside it (a fresh file, or
a copy of the live one with only the rebuilt partitions replaced) and swaps it in with ``os.replace``.
A reader that opened the old file keeps reading the old inode to the end of its query; a reader that
opens after the swap sees the new build whole. Nobody sees half a cube.
"""
from __future__ import annotations

import json
import os
import shutil

import duckdb
import pyarrow as pa

from pipelines import sketch

BUILD_INFO = "build_info"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def live_build_id(serving_path: str) -> str | None:
    if not os.path.exists(serving_path):
        return None
    con = duckdb.connect()
    try:
        con.execute(f"attach '{serving_path}' as live (read_only)")
        return con.execute(f"select build_id from live.main.{BUILD_INFO}").fetchall()[0][0]
    except (duckdb.Error, IndexError):
        return None
    finally:
        con.close()


def publish(serving_path: str, models, store, outputs: dict[str, pa.Table], targets_of: dict,
            full: bool, build_id: str, previous_build_id: str | None, info: dict) -> str:
    """Bring the serving file up to date and swap it in. Returns 'fresh', 'patched' or 'unchanged'."""
    served = [m for m in models if m.serve]
    live_id = live_build_id(serving_path)
    patchable = not full and live_id is not None and live_id == previous_build_id
    if patchable and not any(m.name in outputs for m in served):
        return "unchanged"
    os.makedirs(os.path.dirname(os.path.abspath(serving_path)), exist_ok=True)
    tmp = f"{serving_path}.{build_id}.tmp"
    if patchable:
        shutil.copyfile(serving_path, tmp)
    elif os.path.exists(tmp):
        os.unlink(tmp)
    con = duckdb.connect(tmp)
    try:
        con.execute("set TimeZone = 'UTC'")
        for m in served:
            if patchable:
                if m.name in outputs:
                    _patch(con, m, outputs[m.name], targets_of.get(m.name))
            else:
                data = outputs[m.name] if full and m.name in outputs else store.read(m)
                _replace(con, m.name, data)
        for view, members in _views(served).items():
            union = " union all ".join(f"select * from {_q(n)}" for n in members)
            con.execute(f"create or replace view {_q(view)} as {union}")
        _replace(con, "sketch_bounds", sketch.bounds_table())
        _replace(con, BUILD_INFO, pa.table({
            "build_id": [build_id], "info": [json.dumps(info)],
            "served": [json.dumps(sorted(_views(served)))]}))
        con.execute("checkpoint")
    except BaseException:
        con.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    con.close()
    os.replace(tmp, serving_path)
    return "patched" if patchable else "fresh"


def _views(served) -> dict[str, list[str]]:
    views: dict[str, list[str]] = {}
    for m in served:
        views.setdefault(m.serve, []).append(m.name)
    return views


def _replace(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table) -> None:
    con.register("__incoming", data)
    con.execute(f"create or replace table {_q(name)} as select * from __incoming")
    con.unregister("__incoming")


def _patch(con: duckdb.DuckDBPyConnection, m, data: pa.Table, targets) -> None:
    """Replace only the rebuilt partitions of model ``m``'s table."""
    if not m.partitions or targets is None:
        _replace(con, m.name, data)
        return
    key = "concat_ws(chr(31), " + ", ".join(f"cast({_q(c)} as varchar)" for c in m.partitions) + ")"
    keys = pa.table({"k": ["\x1f".join(t) for t in sorted(targets)]})
    con.register("__keys", keys)
    con.register("__incoming", data)
    con.execute(f"delete from {_q(m.name)} where {key} in (select k from __keys)")
    con.execute(f"insert into {_q(m.name)} by name select * from __incoming")
    con.unregister("__keys")
    con.unregister("__incoming")
