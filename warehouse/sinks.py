"""Where a run's telemetry goes: straight into a lake, or to a collector (``mhw collect``) over HTTP.

Both sinks work alike, so a run behaves the same whichever it uses:

- ``writer(table, prefix, block_rows)`` gives a table's writer; its ``append(row)`` is a deque append
  on the caller's thread (the training loop pays a few hundred nanoseconds, never I/O, never a lock
  wait). A row belongs to a block, whose file key is ``<prefix>-b<block>`` (warehouse/keys.py).
- One background thread per sink drains the deque every ``flush_seconds`` (sooner once
  ``batch_rows`` rows wait, or on ``flush``), groups the rows by file key and delivers them as one
  batch, retried with exponential backoff (and jitter) until it is stored. ``flush(wait=True)``
  returns once what was queued before it is stored.
- Every delivery is a merge by the table's natural key (``Lake.merge``): a retried batch lands once,
  and a run resumed from a checkpoint replaces the steps it logs again while the block's earlier
  steps stay (where the block started before the checkpoint).
- Memory is bounded: past ``max_rows`` waiting rows (the lake or the collector down for long), new
  rows are dropped, counted and warned about; the training loop is never blocked.
- A crash of the process loses the rows not yet stored: at most one flush interval in normal
  running, plus what an outage held back.

``LakeSink`` merges each batch into the lake in one lake transaction: for nodes that can write to
the shared lake (a folder, or an object store such as ``s3://bucket/prefix``). ``HttpSink`` posts
it to ``mhw collect`` (warehouse/collector.py), which validates the rows, merges them the same way
and answers once its transaction has committed: acknowledged means stored. The protocol (one POST
per batch, JSON with NaN/Infinity tokens, ``Authorization: Bearer <token>``)::

    POST /v1/batches
    {"batch": "<client>-<seq>",       # names the batch's quarantined rows: a retry replaces them
     "writes": [{"table": "train_steps", "key": "<run>-steps-b000000000",
                 "rows": [{"run_id": ..., "step": 0, "ts": "2025-01-01T00:00:00+00:00", ...}, ...]}, ...]}
    -> 200 {"batch": ..., "rows": {"train_steps": 120}, "rejected": 0, "reasons": []}
"""
from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import random
import threading
import time
import urllib.parse
import uuid
from datetime import datetime

from warehouse.keys import block_key, block_of, check_slug

log = logging.getLogger("mhw")

BATCHES_PATH = "/v1/batches"
HEALTH_PATH = "/v1/health"


class Refused(Exception):
    """A batch that retrying cannot store (a bad token, rows the lake cannot take): given up, loudly."""


class Writer:
    """One table's rows for a sink. ``append`` only queues; the row's block (and ``prepare``, when
    set: a function turning a queued row into ``(writer, row)`` pairs) is worked out on the sink's
    thread, off the caller's."""

    def __init__(self, sink: "QueueSink", table: str, prefix: str, block_rows: int):
        self.sink, self.table, self.prefix = sink, table, check_slug("key prefix", prefix)
        self.block_rows = block_rows
        self.prepare = None

    def append(self, row: dict, block: int | None = None) -> None:
        self.sink._append(self, block, row)

    def flush(self, wait: bool = False) -> None:
        pass  # the sink delivers every writer's rows together

    def close(self) -> None:
        pass


class QueueSink:
    """The queue, the background thread, batching and retries; ``_deliver`` stores a batch."""

    def __init__(self, flush_seconds: float = 5.0, batch_rows: int = 5000, max_rows: int = 200_000,
                 close_timeout_s: float = 60.0, backoff_s: tuple[float, float] = (0.25, 30.0)):
        self.flush_seconds, self.batch_rows, self.max_rows = flush_seconds, batch_rows, max_rows
        self.close_timeout_s, self.backoff_s = close_timeout_s, backoff_s
        self.client_id = uuid.uuid4().hex[:16]
        # (writer, block, row), ("put", table, key, rows) or an Event (a flush marker), in order
        self._q: collections.deque = collections.deque()
        self._wake, self._closing = threading.Event(), threading.Event()
        self._deadline = math.inf  # set by close(): past it, nothing more is retried
        self._seq = 0
        self._lost = False  # a batch since the last flush marker was given up
        self.stored = self.dropped = self.given_up = self.rejected = 0  # rows
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"mhw-{type(self).__name__}", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------------

    def writer(self, table: str, prefix: str, block_rows: int, flush_seconds: float | None = None) -> Writer:
        return Writer(self, table, prefix, block_rows)

    def _append(self, writer: Writer, block: int, row: dict) -> None:
        q = self._q
        n = len(q)
        if n >= self.max_rows:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100_000 == 0:
                log.warning("mhw: %d telemetry rows dropped: %d rows already wait for %r (%s)", self.dropped, n,
                            self, self.last_error or "it is slow")
            return
        q.append((writer, block, row))
        if n % self.batch_rows == self.batch_rows - 1:
            self._wake.set()

    def put(self, table: str, rows: list[dict], key: str) -> None:
        """Queue whole rows under ``key`` (a run's ``runs`` row), merged like the rest."""
        self._q.append(("put", table, key, [dict(r) for r in rows]))
        self._wake.set()

    def flush(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Deliver what is queued now; with ``wait``, return once it is stored (True), or once
        ``timeout`` (default ``close_timeout_s``) passed or it was given up (False)."""
        done = threading.Event()
        self._q.append(done)
        self._wake.set()
        if not wait:
            return True
        ok = done.wait(self.close_timeout_s if timeout is None else timeout) and not getattr(done, "lost", False)
        if not ok:
            log.warning("mhw: %r has not stored the rows flushed %.0f s ago (%s)", self,
                        self.close_timeout_s if timeout is None else timeout, self.last_error or "no answer")
        return ok

    def close(self, timeout: float | None = None) -> None:
        """Deliver everything queued, waiting up to ``timeout`` (default ``close_timeout_s``); what is
        still not stored then is reported, and the thread stops."""
        timeout = self.close_timeout_s if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        done = threading.Event()
        self._q.append(done)
        self._wake.set()
        done.wait(timeout)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        left = sum(1 for item in list(self._q) if isinstance(item, tuple) and item[0] != "put")
        if left or self.given_up or self.dropped:
            log.error("mhw: %r did not store %d telemetry rows (%d still queued after %.0f s, %d given up, "
                      "%d dropped while full): %s", self, left + self.given_up + self.dropped, left, timeout,
                      self.given_up, self.dropped, self.last_error or "no error seen")
        self._closed()

    def _closed(self) -> None:
        pass

    # -- the background thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            while self._q:
                if self._closing.is_set() and time.monotonic() > self._deadline:
                    return
                try:
                    self._send_some()
                except Exception:  # a bug, not a glitch: say so, and keep the thread (and the next rows) alive
                    log.exception("mhw: %r could not prepare a batch; its rows are not stored", self)
            if self._closing.is_set():
                return

    def _send_some(self) -> None:
        """Take up to ``batch_rows`` rows (stopping at a flush marker), deliver them until stored or
        given up, then release the marker."""
        items, markers, n = [], [], 0
        q = self._q
        while q and n < self.batch_rows:
            item = q.popleft()
            if isinstance(item, threading.Event):
                markers.append(item)
                break
            items.append(item)
            n += item[0] != "put"
        stored = False
        try:
            stored = not items or self._store(items, n)
        finally:
            for m in markers:  # a flush waiting on rows given up is told so
                m.lost, self._lost = not stored or self._lost, False
                m.set()

    def _store(self, items: list, n: int) -> bool:
        """Deliver one batch until stored (True) or given up (False)."""
        writes, groups = [], {}
        for item in items:
            if item[0] == "put":
                writes.append({"table": item[1], "key": item[2], "rows": item[3]})
                continue
            writer, block, row = item
            for w, r in writer.prepare(row) if writer.prepare is not None else ((writer, row),):
                b = block if block is not None and w is writer else block_of(w.table, r, w.block_rows)
                g = groups.get((w, b))
                if g is None:
                    g = groups[(w, b)] = {"table": w.table, "key": block_key(w.prefix, b), "rows": []}
                    writes.append(g)
                g["rows"].append(r)
        self._seq += 1
        batch = f"{self.client_id}-{self._seq:09d}"
        delay = self.backoff_s[0]
        while True:
            try:
                self.rejected += self._deliver(batch, writes)
                self.stored += n
                self.last_error = None
                return True
            except Refused as e:
                self.last_error = str(e)
                self.given_up += n
                self._lost = True
                log.error("mhw: %r refused batch %s for good (%s): its %d rows are not stored", self, batch, e, n)
                return False
            except Exception as e:  # unreachable, reset, timed out, a full disk: retried
                self.last_error = f"{type(e).__name__}: {e}"
            if self._closing.is_set() and time.monotonic() > self._deadline:
                self.given_up += n
                self._lost = True
                return False
            pause = delay * (0.5 + random.random())  # jitter: clients that lost the collector together
            if self._deadline < math.inf:             # do not all come back in the same instant
                pause = min(pause, max(0.0, self._deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, self.backoff_s[1])

    def _deliver(self, batch: str, writes: list[dict]) -> int:
        """Store one batch; return the rows rejected (quarantined). Raise ``Refused`` if retrying
        cannot help, any other exception to be retried."""
        raise NotImplementedError


class LakeSink(QueueSink):
    """Batches merged into the lake by this process, one lake transaction each."""

    def __init__(self, root: str, **kw):
        from warehouse.writer import Lake  # pyarrow: only the sink that writes Parquet pays for it

        self.lake = Lake(root)
        super().__init__(**kw)

    def __repr__(self) -> str:
        return f"LakeSink({self.lake.uri!r})"

    def _deliver(self, batch: str, writes: list[dict]) -> int:
        import pyarrow as pa

        from warehouse.writer import rows_table

        try:
            tables = [(w["table"], rows_table(w["table"], w["rows"]), w["key"]) for w in writes]
        except (ValueError, TypeError, pa.ArrowException) as e:  # rows no retry can convert: a bug, not a glitch
            raise Refused(f"{type(e).__name__}: {e}") from e
        with self.lake.transaction():
            for table, data, key in tables:
                self.lake.merge(table, data, key)
        return 0


class HttpSink(QueueSink):
    """Batches posted to ``mhw collect``; acknowledged = stored in the lake."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0, max_body: int = 8 << 20, **kw):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"collector URL {url!r}: expected http://host:port")
        if not token:
            raise ValueError("a collector needs a token: MHW_COLLECTOR_TOKEN, or the token file `mhw collect` writes")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._conn_args = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.timeout_s, self.max_body = timeout_s, max_body
        self._conn: http.client.HTTPConnection | None = None
        super().__init__(**kw)

    def __repr__(self) -> str:
        return f"HttpSink({self.url!r})"

    def _deliver(self, batch: str, writes: list[dict]) -> int:
        body = json.dumps({"batch": batch, "writes": writes}, default=_jsonable).encode()
        if len(body) > self.max_body and (len(writes) > 1 or len(writes[0]["rows"]) > 1):
            # over what a collector reads (collector.max_body_mb): two halves, named after the batch,
            # so a retry splits the same way and lands on the same keys
            a, b = _halves(writes)
            return self._deliver(f"{batch}a", a) + self._deliver(f"{batch}b", b)
        status, answer = self._post(body)
        if status == 200:
            rejected = answer.get("rejected", 0) if isinstance(answer, dict) else 0
            if rejected:
                log.warning("mhw: the collector quarantined %d rows of batch %s: %s", rejected, batch,
                            "; ".join(answer.get("reasons", [])[:3]))
            return rejected
        if status in (400, 401, 403, 404, 413):
            raise Refused(f"HTTP {status}: {answer}")
        raise ConnectionError(f"HTTP {status}: {answer}")

    def _post(self, body: bytes) -> tuple[int, object]:
        scheme, host, port = self._conn_args
        try:
            if self._conn is None:
                cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
                self._conn = cls(host, port, timeout=self.timeout_s)
            self._conn.request("POST", BATCHES_PATH, body=body, headers=self._headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):  # refused, reset, timed out: a new connection next time
            self._closed()
            raise
        if resp.will_close:
            self._closed()
        try:
            return resp.status, json.loads(data) if data else {}
        except ValueError:
            return resp.status, data[:200].decode(errors="replace")

    def _closed(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _halves(writes: list[dict]) -> tuple[list[dict], list[dict]]:
    if len(writes) > 1:
        return writes[: len(writes) // 2], writes[len(writes) // 2:]
    (w,) = writes
    half = len(w["rows"]) // 2
    return [{**w, "rows": w["rows"][:half]}], [{**w, "rows": w["rows"][half:]}]


def _jsonable(v):
    """JSON for what a row may hold beyond JSON's types: times as ISO-8601, numpy or torch numbers as
    floats; NaN and inf go as JSON's NaN / Infinity tokens, which the collector reads as such."""
    if isinstance(v, datetime):
        return v.isoformat()
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
