"""The audit trail: one entry in the lake table ``audit_log`` per lake-changing command (who, when,
what, counts, how it ended), for every command and job that writes the lake.

An entry is written twice under one key (``audit_log/date=<started>/audit-<id>.parquet``, each write a
lake transaction of its own, warehouse/commit.py): ``status='started'`` before the command changes
anything, then rewritten whole as ``ok`` or ``failed`` once the command's own commit has succeeded or
its exception was caught. So a command killed at any point (SIGKILL) leaves ``started``, never
``ok``; ``mhw audit-log`` shows such an entry as ``running`` while its process lives, else ``killed``.
A command whose start entry cannot be written does not run: nothing changes the lake unrecorded.

The seam, for any new command (one line, plus one to report counts):

    @audit.audited("scrape")                 # on the job function or on a CLI module's run(args)
    def scrape(lake_root=None, ...):
        ...
        audit.record(rows_in=n, files_deleted=k)   # anywhere inside, on any depth of calls

or, where a decorator does not fit, ``with audit.entry(lake_root, "repair", args={...}) as e:
... e.record(rows_in=n)``. The lake is the function's ``lake_root`` (or ``lake``, or ``out``) argument,
else the configured one. Counts named ``rows_in``, ``rows_quarantined``, ``files_deleted``,
``partitions`` and ``alerts_new`` get columns of their own (the dashboard's); every count lands in the
JSON ``counts``. An audited call inside another on the same lake (a DAG task calling a job that calls
an audited function) adds its counts to the outer entry: one command, one entry. In a ``torchrun``
job only rank 0 writes entries.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import getpass
import inspect
import json
import os
import shlex
import socket
import sys
import time
import traceback
import uuid

from warehouse.commit import LakeLocked

TABLE = "audit_log"
COLUMN_COUNTS = ("rows_in", "rows_quarantined", "files_deleted", "partitions", "alerts_new")
_ARG_CHARS = 512  # one argument's value, in an entry's JSON args
_ARG_ITEMS = 20  # items of a list argument kept (and its length)
_TEXT_CHARS = 16_384  # args, counts and error, as stored

_current: contextvars.ContextVar["Entry | None"] = contextvars.ContextVar("mhw_audit_entry", default=None)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def who() -> tuple[str, str]:
    """(OS user, via): via is ``airflow <dag>.<task> <run_id>`` inside an Airflow task (Airflow exports
    its context to the environment, also to the subprocesses a task starts), else ``cli``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        user = f"uid{os.getuid()}"
    dag, task = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_TASK_ID")
    if dag and task:
        run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
        attempt = os.environ.get("AIRFLOW_CTX_TRY_NUMBER")
        return user, f"airflow {dag}.{task} {run}".strip() + (f" try {attempt}" if attempt else "")
    return user, "cli"


def summarize(value):
    """An argument as it goes into an entry: JSON-able, bounded (paths, flags and short lists whole;
    a long list cut to its first items and its length; callables and open engines by type)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, os.PathLike)):
        s = os.fspath(value)
        return s if len(s) <= _ARG_CHARS else s[:_ARG_CHARS] + f"... ({len(s)} chars)"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        out = [summarize(v) for v in items[:_ARG_ITEMS]]
        return out + [f"... {len(items)} in all"] if len(items) > _ARG_ITEMS else out
    if isinstance(value, dict):
        return {str(k): summarize(v) for k, v in list(value.items())[:_ARG_ITEMS]}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return f"<{type(value).__name__}>"


def _bounded(text: str | None, limit: int = _TEXT_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text)} chars)"


class Entry:
    """One command's audit entry, open while the command runs. ``record`` adds counts."""

    def __init__(self, lake_root: str, command: str, args: dict | None = None, via: str | None = None,
                 user: str | None = None):
        from warehouse.writer import Lake  # pyarrow: only once a command writes

        self.lake = Lake(lake_root)
        self.command = command
        self.args = {k: summarize(v) for k, v in (args or {}).items() if v is not None}
        os_user, os_via = who()
        self.user, self.via = user or os_user, via or os_via
        self.entry_id = uuid.uuid4().hex[:20]
        self.key = f"audit-{self.entry_id}"
        self.started_at = now()
        self.counts: dict = {}
        self.exit_code = 0  # what a command returns instead of raising (set by ``audited``)
        self.error: str | None = None  # why, when it returns a non-zero exit code (``audit.error``)
        self._t0 = time.monotonic()

    def record(self, **counts) -> None:
        """Add counts (numbers add up; other values replace): ``record(rows_in=n, files_deleted=k)``."""
        for k, v in counts.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(self.counts.get(k), (int, float)):
                self.counts[k] += v
            else:
                self.counts[k] = summarize(v)

    def row(self, status: str, exit_code: int | None = None, error: str | None = None) -> dict:
        ended = status != "started"
        typed = {c: self.counts[c] for c in COLUMN_COUNTS
                 if isinstance(self.counts.get(c), (int, float)) and not isinstance(self.counts.get(c), bool)}
        return {
            "entry_id": self.entry_id, "command": self.command, "status": status, "user": self.user,
            "via": self.via, "host": socket.gethostname(), "pid": os.getpid(),
            "command_line": _bounded(shlex.join(sys.argv), 4096),
            "args": _bounded(json.dumps(self.args, default=str, sort_keys=True)),
            "started_at": self.started_at,
            "ended_at": now() if ended else None,
            "duration_s": round(time.monotonic() - self._t0, 3) if ended else None,
            "exit_code": exit_code,
            **{c: int(typed[c]) if c in typed else None for c in COLUMN_COUNTS},
            "counts": _bounded(json.dumps(self.counts, default=str, sort_keys=True)) if ended else None,
            "error": _bounded(error),
        }

    def write(self, status: str, exit_code: int | None = None, error: str | None = None) -> None:
        import pyarrow as pa

        from warehouse.schemas import TABLES

        schema = pa.schema([f for f in TABLES[TABLE].schema if f.name != "date"])
        data = pa.Table.from_pylist([self.row(status, exit_code, error)], schema=schema)
        self.lake.write(TABLE, data, self.key)  # one file, one transaction: the same key replaces it


def _rank() -> str:
    """This process's rank in a torchrun job ("0" outside one)."""
    return os.environ.get("RANK", "0")


@contextlib.contextmanager
def entry(lake_root: str, command: str, args: dict | None = None, via: str | None = None,
          user: str | None = None):
    """Open an audit entry for the block: ``started`` now, ``ok`` or ``failed`` when the block ends.
    Yields the Entry (``e.record(...)`` adds counts; ``e.exit_code = n`` sets the code a command
    returns instead of raising). Inside an open entry of the same lake, yields that one."""
    outer = _current.get()
    if outer is not None and os.path.abspath(str(lake_root)) in (outer.lake.root, outer.lake.uri):
        yield outer  # the outer entry's args stand for the whole command; counts add up in it
        return
    if _rank() != "0":  # torchrun: rank 0 speaks for the job
        yield _Silent()
        return
    e = Entry(str(lake_root), command, args, via, user)
    try:
        e.write("started")
    except LakeLocked:  # a stopped process holds the lake: its own message names it
        raise
    except Exception as err:  # noqa: BLE001 - any reason the lake cannot take it: the command does not run
        raise RuntimeError(f"mhw {command}: cannot write its audit entry to {e.lake.uri}/{TABLE} ({err}); "
                           "nothing was changed") from err
    token = _current.set(e)
    try:
        yield e
    except SystemExit as x:
        code = x.code if isinstance(x.code, int) else (0 if x.code is None else 1)
        _finish(e, "ok" if code == 0 else "failed", code, None if code == 0 else f"exit {code}: {x.code}")
        raise
    except BaseException as x:
        _finish(e, "failed", 1, _describe(x))
        raise
    else:
        code = e.exit_code
        _finish(e, "ok" if not code else "failed", code,
                None if not code else f"exit code {code}" + (f": {e.error}" if e.error else ""))
    finally:
        _current.reset(token)


def _describe(x: BaseException) -> str:
    where = traceback.extract_tb(x.__traceback__)[-1] if x.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    return f"{type(x).__name__}: {x}{at}"


def _finish(e: Entry, status: str, code: int | None, error: str | None) -> None:
    """The end entry. The command has already committed (or failed): if the lake cannot take the
    entry now, say so and leave ``started`` (shown as killed), never a false ``ok``."""
    try:
        e.write(status, code, error)
    except Exception as err:  # noqa: BLE001
        print(f"mhw {e.command}: warning: could not complete its audit entry {e.entry_id} ({err}); "
              "it stays 'started'", file=sys.stderr)


class _Silent:
    """The entry of a process that does not audit (a torchrun rank other than 0)."""
    exit_code = 0
    error = None

    def record(self, **counts) -> None:
        pass


def record(**counts) -> None:
    """Add counts to the entry open in this context (none open: nothing happens). Lets a command's
    inner code report what it did without passing the entry down."""
    e = _current.get()
    if e is not None:
        e.record(**counts)


def error(message: str) -> None:
    """Say why the open entry's command is about to return a non-zero exit code (no entry: nothing)."""
    e = _current.get()
    if e is not None:
        e.error = message


def current() -> Entry | None:
    return _current.get()


def _lake_of(bound: inspect.BoundArguments, lake) -> str:
    if callable(lake):
        root = lake(bound.arguments)
    else:
        args = bound.arguments
        ns = args.get("args")  # a CLI module's run(args): argparse's namespace
        root = None
        for name in ("lake_root", "lake", "out"):
            v = args.get(name) if name in args else getattr(ns, name, None)
            if v is not None and not hasattr(v, "root"):
                root = v
                break
            if v is not None:  # a Lake
                root = v.uri
                break
    if root:
        return str(root)
    from warehouse import config

    ns = bound.arguments.get("args")
    return config.load(getattr(ns, "config", None)).lake_root


def _args_of(bound: inspect.BoundArguments) -> dict:
    args = dict(bound.arguments)
    ns = args.pop("args", None)
    if ns is not None and hasattr(ns, "__dict__"):  # argparse.Namespace
        args.update({k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"})
    return {k: v for k, v in args.items() if not callable(v) and k not in ("log", "kw", "kwargs")}


def audited(command: str, lake=None, counts=None):
    """Decorate a command (a CLI module's ``run(args)``, or a job function) so that each call leaves
    one audit entry. ``lake``: a callable of the call's arguments giving the lake root (default: the
    ``lake_root``/``lake``/``out`` argument, else the config's). ``counts``: a callable of the return
    value giving counts to record. A ``run(args)`` returning a non-zero int ends the entry ``failed``
    with that exit code."""
    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*a, **kw):
            bound = sig.bind(*a, **kw)
            outer = _current.get()
            with entry(_lake_of(bound, lake), command, _args_of(bound)) as e:
                out = fn(*a, **kw)
                if counts is not None and out is not None:
                    e.record(**counts(out))
                if isinstance(out, int) and not isinstance(out, bool) and e is not outer:
                    e.exit_code = out  # the command's own exit code, not an inner call's
                return out
        return call
    return wrap


def read(lake_root: str) -> list[dict]:
    """Every entry of the lake's audit log, oldest first (partition column included)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from warehouse.schemas import TABLES
    from warehouse.writer import Lake

    lake = Lake(lake_root)
    files = [p for paths in lake.list_files(TABLE).values() for p in paths]
    if not files:
        return []
    schema = TABLES[TABLE].schema
    part = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
    with lake.read_lock():
        data = ds.dataset(files, filesystem=lake.fs, format="parquet", partitioning=part,
                          partition_base_dir=lake.table_dir(TABLE), schema=schema).to_table()
    return sorted(data.to_pylist(), key=lambda r: (r["started_at"], r["entry_id"]))


def outcome(e: dict) -> str:
    """An entry's status as a person reads it: ``started`` becomes ``running`` while its process
    (same host, same pid, started before the entry) lives, else ``killed`` (or ``unfinished`` when it
    ran on another host, which this one cannot check)."""
    if e["status"] != "started":
        return e["status"]
    if e.get("host") != socket.gethostname():
        return "unfinished"
    return "running" if _alive(e.get("pid"), e.get("started_at")) else "killed"


def _alive(pid: int | None, started_at: dt.datetime | None) -> bool:
    """Process ``pid`` exists and began before ``started_at`` (a reused pid began later)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        try:
            os.kill(int(pid), 0)
        except (OSError, ValueError):
            return False
        return True
    began = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started_at is None or began <= started_at.timestamp() + 1.0
