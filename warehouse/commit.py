"""Commits to a local lake: one writer at a time, readers that never see half of a write, and a
write killed midway undone by whoever comes next.

The lock. ``<root>/_lake.lock`` is an ``flock``: a writer holds it exclusively for a whole
transaction (one ``mhw ingest`` call, one ``Lake.write`` of a training block, a diagnose's alerts);
a short reader holds it shared for its whole read (``mhw query``, ``mhw audit``); a long reader
(``mhw build``, ``mhw diagnose``) holds it only while it takes a snapshot: hard links, under
``<root>/_snapshots/<id>/``, of every file it will read, which a writer replacing or deleting those
paths afterwards cannot take from it. The lock is per process and thread (a thread that holds it
may take it again; a thread holding it shared may not ask for it exclusively).

The rollback journal. Before a transaction first replaces or deletes a path it hard-links the old
file into ``<root>/_txn/<id>/`` (or notes that the path did not exist) and appends the path to
``journal.jsonl``, fsynced. Commit is one unlink of the journal. A process killed mid-transaction
leaves its journal behind; the next process to take the lock puts every noted path back as it
was before reading or writing anything, so a killed ingest is seen whole or not at all.

Leftovers. Every writer stages its files in ``<root>/_tmp`` while it holds the lock exclusively, so
whatever lies there when the lock is next taken exclusively belongs to a dead process and goes.
A snapshot keeps an flock on ``<root>/_snapshots/<id>.lock`` for its life; one whose lock can be
taken belongs to a dead reader and goes too. A finished snapshot's links are removed and its empty
folder tree is kept in ``<root>/_snapshots/.pool/`` for the next snapshot to take (a new folder costs
~0.4 ms on this machine's ext4, an existing one 2.5 us: a 40 M-row lake's 3-4 k partition folders were
most of an incremental build's or diagnose's snapshot, bench/RESULTS.md); a pooled tree holds no file.

A stopped holder. A process stopped (SIGSTOP, a debugger) while it holds the lock would freeze every
writer and reader of the lake, the diagnose that is to find it hung among them. A waiter looks the
holder up (``/proc/locks``, then its ``/proc/<pid>/stat``): one that stays stopped for
``MHW_LOCK_STOPPED_S`` seconds (10) cannot finish its transaction, and the waiter raises
``LakeLocked`` naming it instead of waiting; a running holder is waited for up to ``MHW_LOCK_WAIT_S``
(3600). Killing the holder frees the lake: the next taker undoes its half-done transaction.

Object-store lakes have none of this (no flock, no hard links): each file is one atomic PUT.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
import uuid

LOCK = "_lake.lock"
JOURNALS = "_txn"
SNAPSHOTS = "_snapshots"
POOL = ".pool"  # under SNAPSHOTS: the empty folder trees of finished snapshots, for the next to reuse
POOL_KEEP = 2  # trees kept there (one per snapshot taken at once: a build and a diagnose)
STAGING = "_tmp"
JOURNAL = "journal.jsonl"

_local = threading.local()


class LakeLocked(RuntimeError):
    """The lake lock is held by a process that is stopped, or longer than a waiter waits."""


def _lock_holders(fd: int) -> list[int]:
    """The pids holding an flock on ``fd``'s file (``/proc/locks``; waiters, marked ``->``, left out)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == ident and parts[4].isdigit():
                    pids.append(int(parts[4]))
    except OSError:
        pass
    return pids


def _process(pid: int) -> tuple[str, str]:
    """(state letter, command line) of ``pid``; ('?', '') when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return state, cmd
    except (OSError, IndexError):
        return "?", ""


def _flock(fd: int, op: int, root: str) -> None:
    """flock ``fd`` (LOCK_EX or LOCK_SH), waiting for its holder unless it is stopped (module docstring)."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    wait_s = float(os.environ.get("MHW_LOCK_WAIT_S", "3600"))
    stopped_s = float(os.environ.get("MHW_LOCK_STOPPED_S", "10"))
    start = time.monotonic()
    stopped_since, next_look, pause = None, start, 0.002
    while True:
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now < next_look:
            continue
        next_look = now + 0.5
        holders = [(pid, *_process(pid)) for pid in _lock_holders(fd) if pid != os.getpid()]
        stopped = bool(holders) and all(state in ("T", "t") for _, state, _ in holders)
        stopped_since = (stopped_since or now) if stopped else None
        waited = now - start
        if (stopped and now - stopped_since >= stopped_s) or waited >= wait_s:
            who = "; ".join(f"pid {pid} ({'stopped' if state in ('T', 't') else 'state ' + state}): {cmd[:200]}"
                            for pid, state, cmd in holders) or "a process this one cannot see"
            raise LakeLocked(f"{root}: the lake lock has been held for {waited:.0f} s by {who}. "
                             + ("A stopped process cannot finish its write: resume it (SIGCONT) or kill it; "
                                "the next writer undoes its half-done transaction." if stopped else
                                f"Waited MHW_LOCK_WAIT_S = {wait_s:g} s."))


class Transaction:
    """The rollback journal of one writer's changes to a local lake (see the module docstring)."""

    def __init__(self, root: str, durable: bool = True):
        self.root, self.durable = root, durable
        self.dir = os.path.join(root, JOURNALS, uuid.uuid4().hex)
        self._seen: set[str] = set()
        self._journal = None
        self._n = 0
        self._mutex = threading.Lock()  # Lake.write changes partitions from several threads

    def before_change(self, path: str) -> None:
        """Keep what ``path`` is now, once per transaction, before it is replaced or deleted."""
        path = os.path.abspath(path)
        with self._mutex:
            if path in self._seen:
                return
            if self._journal is None:
                os.makedirs(self.dir)
                self._journal = open(os.path.join(self.dir, JOURNAL), "a")
            backup = None
            if os.path.isfile(path):
                backup = f"b{self._n}"
                self._n += 1
                try:
                    os.link(path, os.path.join(self.dir, backup))
                except OSError:  # a file system without hard links
                    shutil.copy2(path, os.path.join(self.dir, backup))
            self._journal.write(json.dumps({"path": path, "backup": backup}) + "\n")
            self._journal.flush()
            if self.durable:
                os.fsync(self._journal.fileno())
            self._seen.add(path)

    def commit(self) -> None:
        if self._journal is None:
            return
        self._journal.close()
        os.unlink(os.path.join(self.dir, JOURNAL))  # the commit point
        shutil.rmtree(self.dir, ignore_errors=True)

    def rollback(self) -> None:
        if self._journal is not None:
            self._journal.close()
            roll_back(self.dir, self.root)


def roll_back(journal_dir: str, root: str) -> int:
    """Put every path a transaction's journal names back as it was; drop the journal. Returns the
    paths restored. Idempotent: a recovery killed midway is finished by the next."""
    entries = []
    try:
        with open(os.path.join(journal_dir, JOURNAL)) as f:
            for line in f:
                try:
                    entries.append(json.loads(line))
                except ValueError:  # the last line of a writer killed while writing it
                    break
    except FileNotFoundError:  # committed: only the backups are left to remove
        pass
    for e in reversed(entries):
        path, backup = e["path"], e["backup"]
        if backup is not None:
            src = os.path.join(journal_dir, backup)
            if os.path.exists(src):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(src, path)
        elif os.path.lexists(path):
            os.unlink(path)
            prune_empty(os.path.dirname(path), root)
    shutil.rmtree(journal_dir, ignore_errors=True)
    return len(entries)


def prune_empty(folder: str, root: str) -> None:
    """Remove ``folder`` and its parents while they are empty, up to (not including) ``root``."""
    root = os.path.abspath(root)
    folder = os.path.abspath(folder)
    while folder.startswith(root + os.sep) and folder != root:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or already gone)
            return
        folder = os.path.dirname(folder)


def recover(root: str) -> dict[str, int]:
    """Undo the transactions of dead writers and remove what dead processes left. Call only while
    holding the lock exclusively. Returns counts of what was done."""
    done = {"rolled_back": 0, "staged_removed": 0, "snapshots_removed": 0}
    journals = os.path.join(root, JOURNALS)
    for name in sorted(_listdir(journals)):
        roll_back(os.path.join(journals, name), root)
        done["rolled_back"] += 1
    staging = os.path.join(root, STAGING)
    for name in _listdir(staging):
        _remove(os.path.join(staging, name))
        done["staged_removed"] += 1
    done["snapshots_removed"] = remove_dead_snapshots(root)
    return done


def pending(root: str) -> bool:
    """True when a dead writer's journal waits to be rolled back."""
    return bool(_listdir(os.path.join(root, JOURNALS)))


def remove_dead_snapshots(root: str) -> int:
    where = os.path.join(root, SNAPSHOTS)
    n = 0
    for name in _listdir(where):
        if name.startswith("."):  # a lock being created (snapshot() renames it once it holds it)
            continue
        if not name.endswith(".lock"):
            if not os.path.exists(os.path.join(where, name + ".lock")):  # its owner died before locking
                _remove(os.path.join(where, name))
                n += 1
            continue
        lock_path = os.path.join(where, name)
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live reader's
            os.close(fd)
            continue
        _remove(lock_path[: -len(".lock")])
        os.unlink(lock_path)
        os.close(fd)
        n += 1
    return n


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _held() -> dict:
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


def recovered(root: str) -> dict[str, int] | None:
    """What taking the lock this thread holds on ``root`` undid and removed (``recover``'s counts)."""
    h = _held().get(os.path.abspath(root))
    return h["recovered"] if h else None


def _open_lock(root: str, mode: str) -> int | None:
    if mode == "shared" and not os.path.isdir(root):
        return None
    os.makedirs(root, exist_ok=True)
    try:
        return os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if mode == "exclusive":
            raise
    try:
        return os.open(os.path.join(root, LOCK), os.O_RDONLY)
    except OSError:
        return None


@contextlib.contextmanager
def locked(root: str, mode: str):
    """Hold ``root``'s lake lock ("shared" or "exclusive") for the block; yields True when this call
    took it, False when this thread already held it. Taking it exclusively first undoes what dead
    writers left (``recover``); a shared holder that finds a dead writer's journal does that too."""
    root = os.path.abspath(root)
    held = _held()
    h = held.get(root)
    if h is not None:
        if mode == "exclusive" and h["mode"] == "shared":
            raise RuntimeError(f"{root}: this thread holds the lake lock shared and asks for it exclusively")
        yield False
        return
    fd = _open_lock(root, mode)
    if fd is None:  # a reader of a lake that does not exist, or that it may not write: no writer to wait for
        held[root] = {"mode": mode, "tx": None, "recovered": None}
        try:
            yield True
        finally:
            del held[root]
        return
    try:
        recovered = None
        if mode == "exclusive":
            _flock(fd, fcntl.LOCK_EX, root)
            recovered = recover(root)
        else:
            _flock(fd, fcntl.LOCK_SH, root)
            if pending(root):
                _flock(fd, fcntl.LOCK_EX, root)
                recovered = recover(root)
                fcntl.flock(fd, fcntl.LOCK_SH)
        held[root] = {"mode": mode, "tx": None, "recovered": recovered}
        try:
            yield True
        finally:
            del held[root]
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def transaction(root: str, durable: bool = True):
    """An exclusive transaction on ``root`` (or the one this thread already has open): every change
    made through it commits at the end of the outermost block, or is rolled back if it raises."""
    root = os.path.abspath(root)
    with locked(root, "exclusive") as fresh:
        entry = _held()[root]
        if not fresh:
            if entry["tx"] is None:
                raise RuntimeError(f"{root}: this thread holds the lake lock without a transaction")
            yield entry["tx"]
            return
        tx = entry["tx"] = Transaction(root, durable)
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
        tx.commit()


@contextlib.contextmanager
def snapshot(root: str, tables: list[str], files: tuple[str, ...] = ()):
    """Hard links of every data file of ``tables`` under ``<root>/_snapshots/<id>/<table>/…`` (the
    same relative paths, sizes and mtimes), and of ``files`` (paths under the root; those that
    exist), taken under the shared lock. Yields the snapshot's root;
    read ``<it>/<table>`` where you would read ``<root>/<table>``. When the block ends its links are
    removed and its folders pooled for the next snapshot (empty folders: no reader sees them)."""
    root = os.path.abspath(root)
    where = os.path.join(root, SNAPSHOTS)
    sid = uuid.uuid4().hex
    snap = os.path.join(where, sid)
    os.makedirs(where, exist_ok=True)
    creating = os.path.join(where, f".{sid}.lock")
    own = os.open(creating, os.O_RDWR | os.O_CREAT, 0o644)
    linked: list[str] = []
    try:
        fcntl.flock(own, fcntl.LOCK_EX)  # alive while held: recover() leaves this snapshot alone
        os.rename(creating, f"{snap}.lock")  # seen under its name only once locked
        with locked(root, "shared"):
            remove_dead_snapshots(root)
            if not _take_pooled(where, snap):
                os.makedirs(snap)
            for table in tables:
                _link_tree(os.path.join(root, table), os.path.join(snap, table), linked)
            for rel in files:
                _link_file(os.path.join(root, rel), os.path.join(snap, rel), linked)
        try:
            yield snap
        finally:
            _release(where, snap, linked)
            os.unlink(f"{snap}.lock")
    finally:
        os.close(own)


def _take_pooled(where: str, snap: str) -> bool:
    """Move a pooled folder tree to ``snap``; False when the pool is empty (or others took them all)."""
    pool = os.path.join(where, POOL)
    for name in _listdir(pool):
        try:
            os.rename(os.path.join(pool, name), snap)  # atomic: of two takers, one gets it
            return True
        except OSError:
            continue
    return False


def _release(where: str, snap: str, linked: list[str]) -> None:
    """Remove a finished snapshot's links, then pool its folders (or remove them: pool full, or
    something unlinked failed). Killed midway, the snapshot is a dead one: the next snapshot removes it."""
    try:
        for path in linked:
            os.unlink(path)
        pool = os.path.join(where, POOL)
        if len(_listdir(pool)) >= POOL_KEEP:
            raise OSError("pool full")
        os.makedirs(pool, exist_ok=True)
        os.rename(snap, os.path.join(pool, os.path.basename(snap)))
    except OSError:
        shutil.rmtree(snap, ignore_errors=True)


def _link_tree(src: str, dst: str, linked: list[str]) -> None:
    """Hard-link every ``*.parquet`` under ``src`` to the same place under ``dst`` (appending each
    link to ``linked``); folders and files whose names start with ``_`` or ``.`` are not data
    (pipelines/lakefiles.py) and are skipped."""
    for parent, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        names = [f for f in files if f.endswith(".parquet") and not f.startswith(("_", "."))]
        if not names:
            continue
        target = os.path.join(dst, os.path.relpath(parent, src))
        os.makedirs(target, exist_ok=True)  # a pooled tree has most of them: 2.5 us, not 0.4 ms
        for f in names:
            _link_file(os.path.join(parent, f), os.path.join(target, f), linked)


def _link_file(src: str, dst: str, linked: list[str]) -> None:
    """Hard-link ``src`` at ``dst`` (a copy where the file system has no hard links; nothing where
    ``src`` does not exist), appending the link to ``linked``."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        if not os.path.exists(src):  # gone (a foreign process deleted it), or never there
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)
    linked.append(dst)
