"""The serving file: one DuckDB file that dashboards and ``mhw query`` open read-only.

Each served model is a table named after the model; each ``serve:`` name in the SQL headers is a view
over the union of its models (``train_health`` = ``train_health_daily`` ∪ ``train_health_window``).
A build never writes the live file: it writes ``<serving>.<build>.tmp`` beside it (a fresh file, or
a copy of the live one with only the rebuilt partitions replaced) and swaps it in with ``os.replace``.
A reader that opened the old file keeps reading the old inode to the end of its query; a reader that
opens after the swap sees the new build whole. Nobody sees half a cube.

Nothing writes the live file in place, so its side files are never ours: a ``<serving>.wal`` (read-only
opens replay it over the file) is removed when a build starts and around every swap, and the temp
files of crashed builds (``<serving>.<build>.tmp`` and their ``.tmp.wal``) when the next build starts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa

from pipelines import sketch
from warehouse.readonly import remove_wal
from warehouse.sqltext import literal

BUILD_INFO = "build_info"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def live_build_id(serving_path: str) -> str | None:
    if not os.path.exists(serving_path):
        return None
    con = duckdb.connect()
    try:
        con.execute(f"attach {literal(serving_path)} as live (read_only)")
        return con.execute(f"select build_id from live.main.{BUILD_INFO}").fetchall()[0][0]
    except (duckdb.Error, IndexError):
        return None
    finally:
        con.close()


class Publisher:
    """Writes the next serving file while the build runs: ``add`` hands over each served model's rows as
    soon as the model is built, and one writer thread loads them into ``<serving>.<build>.tmp`` while
    the next models compute (DuckDB writes a table mostly on one core; the build's queries rarely fill
    both). ``finish`` loads what is left (views, bounds, build info), checkpoints and swaps the file in.
    It returns 'fresh', 'patched' or 'unchanged' (nothing served was rebuilt: no file is written)."""

    def __init__(self, serving_path: str, models, store, full: bool, build_id: str,
                 previous_build_id: str | None):
        self.path, self.store, self.full, self.build_id = serving_path, store, full, build_id
        self.served = [m for m in models if m.serve]
        self.tmp = f"{serving_path}.{build_id}.tmp"
        remove_leftovers(serving_path, keep=self.tmp)  # before the live file is read: no WAL replayed
        live_id = live_build_id(serving_path)
        self.patchable = not full and live_id is not None and live_id == previous_build_id
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mhw-serve")
        self._con: duckdb.DuckDBPyConnection | None = None
        self._pending: list = []
        self._loaded: set[str] = set()

    def _open(self) -> duckdb.DuckDBPyConnection:  # on the writer thread
        if self._con is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            if self.patchable:
                shutil.copyfile(self.path, self.tmp)
            elif os.path.exists(self.tmp):
                os.unlink(self.tmp)
            self._con = duckdb.connect(self.tmp)
            self._con.execute("set TimeZone = 'UTC'")
        return self._con

    def _load(self, m, data: pa.Table, targets) -> None:
        con = self._open()
        if self.patchable:
            _patch(con, m, data, targets)
        else:
            _replace(con, m.name, data)
        self._loaded.add(m.name)

    def add(self, m, data: pa.Table, targets) -> None:
        """Model ``m`` was rebuilt: ``data`` are its rows of the ``targets`` partitions (None = all)."""
        if not m.serve:
            return
        if not self.full and not self.patchable:  # a fresh file from partial outputs: read whole at finish
            return
        self._pending.append(self._pool.submit(self._load, m, data, targets))

    def finish(self, info: dict) -> str:
        try:
            for f in self._pending:
                f.result()
            if self.patchable and not self._loaded:  # no served model was rebuilt
                return "unchanged"
            return self._pool.submit(self._finish, info).result()
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown()

    def _finish(self, info: dict) -> str:
        con = self._open()
        for m in self.served:
            if m.name not in self._loaded and not self.patchable:
                _replace(con, m.name, self.store.read(m))
        for view, members in _views(self.served).items():
            union = " union all ".join(f"select * from {_q(n)}" for n in members)
            con.execute(f"create or replace view {_q(view)} as {union}")
        _replace(con, "sketch_bounds", sketch.bounds_table())
        _replace(con, BUILD_INFO, pa.table({
            "build_id": [self.build_id], "info": [json.dumps(info)],
            "served": [json.dumps(sorted(_views(self.served)))]}))
        con.execute("checkpoint")
        con.close()
        self._con = None
        remove_wal(self.path)  # the old file's WAL must not be replayed over the new file
        os.replace(self.tmp, self.path)
        remove_wal(self.path)  # nor one written between the first removal and the swap
        return "patched" if self.patchable else "fresh"

    def abort(self) -> None:
        """Drop the half-written file (the live one is untouched)."""
        for f in self._pending:
            f.cancel()
        def close():
            if self._con is not None:
                self._con.close()
                self._con = None
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        try:
            self._pool.submit(close).result()
        except RuntimeError:  # pool already shut down
            close()
        self._pool.shutdown(wait=False)


def remove_leftovers(serving_path: str, keep: str) -> list[str]:
    """Remove ``<serving>.wal`` and every ``<serving>.<build>.tmp`` / ``.tmp.wal`` but ``keep``'s: the
    files of builds killed mid-write. Called by a build holding the serving file's lock
    (pipelines/build.py ``_serving_lock``), so no other build is writing one now."""
    folder, name = os.path.split(os.path.abspath(serving_path))
    temp = re.compile(re.escape(name) + r"\..+\.tmp(\.wal)?")
    removed = [serving_path + ".wal"] if remove_wal(serving_path) else []
    own = {os.path.basename(keep), os.path.basename(keep) + ".wal"}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for n in names:
        if temp.fullmatch(n) and n not in own:
            try:
                os.unlink(os.path.join(folder, n))
                removed.append(os.path.join(folder, n))
            except FileNotFoundError:
                pass
    return removed


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
