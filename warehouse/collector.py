"""``mhw collect``: telemetry over HTTP, for training nodes that cannot write to the lake.

    mhw collect                              # 127.0.0.1:8765 (conf/mhw.yaml collector.address)
    mhw collect --address 0.0.0.0:8765       # for a cluster: see the README (the token travels in clear)

Clients (``mhw.start_run(..., collector="http://host:8765")``, warehouse/sinks.py ``HttpSink``) post
batches of rows (the protocol is in warehouse/sinks.py). Each batch is

- authorized: ``Authorization: Bearer <token>``, compared in constant time; the token is
  ``$MHW_COLLECTOR_TOKEN`` or the file ``collector.token_file`` (default ``.mhw/collector.token``,
  written 0600 by the first start when absent; never in the repository). 401 otherwise.
- bounded: a body over ``collector.max_body_mb`` is refused (413) before it is read; at most
  ``MAX_BUSY`` bodies are read and parsed at once; a connection idle for a minute is closed.
- validated row by row with ingest's own checks (``warehouse.ingest.validate``: types, required
  fields, slugs, string bounds, fields per row), plus: the table must be one a run writes, the file
  key a slug of the row's own run (``<run_id>`` or ``<run_id>-...``; the keys of ingest, compaction
  and this collector are refused). A bad row goes to ``quarantine`` with the batch, its position,
  the field and the reason; the batch's good rows are stored all the same.
- stored in one lake transaction (warehouse/commit.py): every write merged into its key by the
  table's natural key (``Lake.merge``), the quarantined rows under the batch's own key
  (``collect-<hash of the batch id>``). The answer (200) is sent after the commit, so an
  acknowledged row is in the lake, and a retried batch (the answer lost, the collector killed before
  answering) lands once: its rows merge onto themselves, its rejects replace themselves.

Batches are stored one at a time (the lake lock serializes writers anyway); requests are read,
parsed and validated on their own threads meanwhile.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import signal
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from warehouse import audit, config as mhw_config
from warehouse.ingest import Problem, Reject, validate
from warehouse.keys import PartitionError, check_slug
from warehouse.schemas import LINE_BYTES, NAME_CHARS, RAW_HEAD, TABLES
from warehouse.sinks import BATCHES_PATH, HEALTH_PATH
from warehouse.writer import Lake, rows_table

ACCEPTED = ("runs", "train_steps", "step_metrics", "eval_results", "system_samples", "quarantine")
RESERVED_KEYS = ("ingest-", "compacted-", "collect-")  # other writers' file keys: never a client's
DEFAULT_ADDRESS = "127.0.0.1:8765"
IDLE_S = 60.0
MAX_BUSY = 8  # batches read and parsed at once (each up to collector.max_body_mb); the others wait


class BadBatch(ValueError):
    """A body that is not a batch at all (not JSON, no list of writes): refused whole, 400."""


class Collector:
    """Validates and stores batches into ``lake`` (see the module docstring)."""

    def __init__(self, lake: Lake, token: str):
        if not token:
            raise ValueError("the collector needs a token")
        self.lake, self._token = lake, token.encode()
        self._store_lock = threading.Lock()
        self.batches = self.rows = self.rejected = 0

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def apply(self, payload, peer: str) -> dict:
        """Validate one batch, store its good rows and quarantine its bad ones; the answer's
        ``rows`` counts stored rows per table, ``rejected`` the quarantined ones."""
        if not isinstance(payload, dict) or not isinstance(payload.get("writes"), list):
            raise BadBatch('a batch is a JSON object with a list "writes" (see warehouse/sinks.py)')
        batch = payload.get("batch")
        if not isinstance(batch, str) or not batch or len(batch) > NAME_CHARS:
            raise BadBatch(f'"batch" must name the batch: a string of 1-{NAME_CHARS} characters')
        source = f"collector: batch {batch} from {peer}"
        good: list[tuple[str, str, list[dict]]] = []
        rejects: list[Reject] = []
        line = 0
        for w in payload["writes"]:
            table, key, problems = _check_write(w)
            rows = w.get("rows") if isinstance(w, dict) else None
            if not isinstance(rows, list):
                line += 1
                rejects.append(Reject(source, line, table, problems or [
                    Problem("rows", "wrong type", 'a write\'s "rows" is a list of row objects')], _raw(w)))
                continue
            kept = []
            for row in rows:
                line += 1
                if problems:
                    rejects.append(Reject(source, line, table, problems, _raw(row)))
                    continue
                typed, bad = validate(TABLES[table], row)
                run_id = typed.get("run_id") if typed else None
                if typed is not None and run_id is not None and key != run_id and not key.startswith(f"{run_id}-"):
                    typed, bad = None, [Problem("run_id", "wrong key",
                                                f"file key {key!r} is not run {run_id!r}'s (<run_id> or <run_id>-...)")]
                if typed is None:
                    rejects.append(Reject(source, line, table, bad, _raw(row)))
                else:
                    kept.append(typed)
            if kept:
                good.append((table, key, kept))
        quarantined = [{"target_table": r.target_table, "source": source, "line": r.line, "field": r.problems[0].field,
                        "reason": r.reason, "raw": r.raw, "ingested_at": datetime.now(timezone.utc)} for r in rejects]
        stored: dict[str, int] = {}
        with self._store_lock, self.lake.transaction():
            for table, key, rows in good:
                self.lake.merge(table, rows_table(table, rows), key)
                stored[table] = stored.get(table, 0) + len(rows)
            if quarantined:
                self.lake.write("quarantine", rows_table("quarantine", quarantined), key=batch_key(batch))
        self.batches += 1
        self.rows += sum(stored.values())
        self.rejected += len(rejects)
        return {"batch": batch, "rows": stored, "rejected": len(rejects),
                "reasons": [r.describe() for r in rejects[:5]]}


def batch_key(batch: str) -> str:
    """The file key of a batch's quarantined rows: a retry of the batch replaces them."""
    return f"collect-{hashlib.sha1(batch.encode()).hexdigest()[:16]}"


def _check_write(w) -> tuple[str | None, str | None, list[Problem]]:
    """(table, key, problems of the write as a whole: they reject each of its rows)."""
    if not isinstance(w, dict):
        return None, None, [Problem(None, "not a JSON object", "a write is {\"table\", \"key\", \"rows\"}")]
    table, key = w.get("table"), w.get("key")
    if table not in ACCEPTED:
        return None, None, [Problem("table", "unknown table",
                                    f"{str(table)[:60]!r} is not one a run writes: {', '.join(ACCEPTED)}")]
    try:
        check_slug("key", key)
    except PartitionError as e:
        return table, None, [Problem("key", "not a slug", str(e))]
    if key.startswith(RESERVED_KEYS):
        return table, None, [Problem("key", "reserved key", f"keys starting {', '.join(RESERVED_KEYS)} are not a client's")]
    return table, key, []


def _raw(value) -> str:
    """The row as received, for repair and replay: whole up to LINE_BYTES, else its head and a note."""
    text = json.dumps(value, default=str)
    if len(text) <= LINE_BYTES:
        return text
    return f"{text[:RAW_HEAD]}... [{len(text):,} characters; the first {RAW_HEAD:,} kept]"


# --- the server -----------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client posts every few seconds on one connection
    server_version = "mhw-collect"
    timeout = IDLE_S

    def do_GET(self):
        if self.path == HEALTH_PATH:
            c = self.server.collector
            self._answer(200, {"ok": True, "batches": c.batches, "rows": c.rows, "rejected": c.rejected})
        else:
            self._answer(404, {"error": f"no such path: {self.path[:100]}"})

    def do_POST(self):
        c, limit = self.server.collector, self.server.max_body
        if self.path != BATCHES_PATH:
            return self._answer(404, {"error": f"post batches to {BATCHES_PATH}"}, close=True)
        if not c.authorized(self.headers.get("Authorization")):
            return self._answer(401, {"error": "a valid 'Authorization: Bearer <token>' is required"}, close=True)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._answer(411, {"error": "Content-Length is required"}, close=True)
        if length > limit or length < 0:
            return self._answer(413, {"error": f"the batch is {length:,} bytes; the limit is {limit:,} "
                                               f"(collector.max_body_mb)"}, close=True)
        with self.server.busy:  # bodies parsed at once are bounded: memory is
            self._batch(c, length)

    def _batch(self, c: "Collector", length: int) -> None:
        body = self.rfile.read(length)
        try:
            payload = json.loads(body)
        except ValueError as e:
            return self._answer(400, {"error": f"the body is not JSON: {e}"})
        try:
            answer = c.apply(payload, f"{self.client_address[0]}")
        except BadBatch as e:
            return self._answer(400, {"error": str(e)})
        except Exception as e:  # a full disk, an object store down: the client retries the batch
            self.log_error("batch not stored: %s: %s", type(e).__name__, e)
            return self._answer(503, {"error": f"not stored: {type(e).__name__}: {e}"})
        self._answer(200, answer)

    def _answer(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:  # the body was not read: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def log_error(self, fmt, *args):
        sys.stderr.write(f"mhw collect: {fmt % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: Collector, max_body: int, verbose: bool = False):
        super().__init__(address, Handler)
        self.collector, self.max_body, self.verbose = collector, max_body, verbose
        self.busy = threading.BoundedSemaphore(MAX_BUSY)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]") or "127.0.0.1", int(port)


def token(settings: mhw_config.Settings, create: bool = False) -> tuple[str | None, str]:
    """(the token, where it comes from): $MHW_COLLECTOR_TOKEN, else the token file, written with a
    fresh random token (0600, in a 0700 folder) when ``create`` and it does not exist."""
    if os.environ.get("MHW_COLLECTOR_TOKEN"):
        return os.environ["MHW_COLLECTOR_TOKEN"].strip(), "$MHW_COLLECTOR_TOKEN"
    path = Path(settings.path("collector", "token_file", ".mhw/collector.token"))
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        except FileExistsError:  # another collector wrote it meanwhile: use theirs
            pass
    try:
        return path.read_text().strip() or None, str(path)
    except OSError:
        return None, str(path)


# --- the command ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=f"HOST:PORT to listen on (default: collector.address, {DEFAULT_ADDRESS}; "
                                     "$MHW_COLLECTOR_ADDRESS)")
    p.add_argument("--lake", help="lake root to write (default: conf/mhw.yaml or $MHW_LAKE)")
    p.add_argument("--verbose", action="store_true", help="log every request")


@audit.audited("collect")  # one entry per collector run: 'started' (running) while it serves
def run(args: argparse.Namespace) -> int:
    settings = mhw_config.load(getattr(args, "config", None))
    section = settings.section("collector")
    host, port = parse_address(args.address or os.environ.get("MHW_COLLECTOR_ADDRESS")
                               or section.get("address") or DEFAULT_ADDRESS)
    secret, where = token(settings, create=True)
    if not secret:
        print(f"mhw collect: no token: set MHW_COLLECTOR_TOKEN or write one into {where}", file=sys.stderr)
        return 2
    lake = Lake(args.lake or settings.lake_root)
    server = Server((host, port), Collector(lake, secret), int(float(section.get("max_body_mb", 16)) * 2**20),
                    verbose=args.verbose)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mhw collect: listening beyond this machine ({host}): the token travels in clear text; put the "
              "collector behind TLS or keep it on a private network", file=sys.stderr)
    bound = server.server_address
    print(f"mhw collect: listening on http://{bound[0]}:{bound[1]}, writing to {lake.uri} (token: {where})",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    c = server.collector
    c._store_lock.acquire()  # a batch being stored finishes (and is answered); no other starts
    print(f"mhw collect: stopped after {c.batches} batches, {c.rows} rows stored, {c.rejected} quarantined", flush=True)
    audit.record(rows_in=c.rows, rows_quarantined=c.rejected, batches=c.batches)
    return 0
