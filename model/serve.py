"""``mhw serve``: a small, real HTTP inference server for this project's checkpoints, on 127.0.0.1,
exposing Prometheus ``/metrics`` with vLLM's metric families, so the serving pipeline (``mhw scrape``,
the serving_health cube, the serving rules) is exercised end to end against a server that really runs
a model.

    mhw serve --checkpoint .mhw/checkpoints/<run>/ --port 8000 --hardware cpu-x1
    mhw serve --checkpoint ... --request-log serve.jsonl --fault-delay-ms 200 --fault-error-rate 0.2

Endpoints (JSON):

    POST /v1/completions  {"prompt": "12+7=", "max_tokens": 8}
        GPT-2 checkpoints generate greedily, a token at a time with the KV cache; BERT checkpoints
        classify the prompt (one output "token", the label). The answer carries the server's own
        timings of the request (e2e, TTFT, every inter-token gap, queue wait): the load generator's
        exact figures are the very values the histograms observed and the request log holds.
        400: no prompt, or a prompt the model's context cannot hold; 500: an injected fault.
    GET  /metrics         Prometheus text (prometheus_client): vllm:e2e_request_latency_seconds,
        vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds (histograms, in seconds),
        vllm:request_success_total{finished_reason}, vllm:prompt_tokens_total,
        vllm:generation_tokens_total, vllm:num_requests_waiting / _running,
        vllm:kv_cache_usage_perc (tokens held by running requests / --kv-budget-tokens), and
        http_requests_total{handler,method,status=2xx|4xx|5xx}, all labeled model_name; the process
        collector's process_start_time_seconds tells a scraper when the server (re)started.
    GET  /health
    POST /admin/faults    {"delay_ms": 250, "error_rate": 0.3}: the documented fault switch. Every
        inference request then holds its model slot ``delay_ms`` longer (a slow model: queues build,
        TTFT and e2e grow) and the share ``error_rate`` of them fail with 500, spread evenly (request
        k fails when floor((k+1) * rate) > floor(k * rate)). GET returns the current faults.

Requests run in ``--workers`` model slots (default 1); the rest wait in the queue that
``vllm:num_requests_waiting`` reports. Latency histograms observe successful requests only; every
request, failed or not, is counted by status and written to ``--request-log`` (JSONL, the
``serving_requests`` format: ``mhw ingest`` reads it) before its answer is sent.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector

HOST = "127.0.0.1"  # never another interface (README: servers listen on loopback only)
COMPLETIONS = "/v1/completions"
MAX_BODY = 1 << 20
# Latency buckets in seconds: vLLM's own start at 0.3 s (e2e) / 1 ms (TTFT); a tiny CPU model answers
# in milliseconds, so these are finer at the bottom and reach vLLM's range at the top.
LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                   0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
               0.25, 0.5, 1.0)


class BadRequest(ValueError):
    """A request the server answers with 400."""


@dataclass
class Faults:
    """The injected faults; changed at run time through POST /admin/faults."""

    delay_ms: float = 0.0
    error_rate: float = 0.0
    _k: int = 0  # inference requests seen (the error pattern's clock)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, delay_ms=None, error_rate=None) -> dict:
        with self._lock:
            if delay_ms is not None:
                if not isinstance(delay_ms, (int, float)) or isinstance(delay_ms, bool) or not 0 <= delay_ms <= 60_000:
                    raise BadRequest(f"delay_ms must be a number of ms in [0, 60000], got {delay_ms!r}")
                self.delay_ms = float(delay_ms)
            if error_rate is not None:
                if not isinstance(error_rate, (int, float)) or isinstance(error_rate, bool) or not 0 <= error_rate <= 1:
                    raise BadRequest(f"error_rate must be a share in [0, 1], got {error_rate!r}")
                self.error_rate = float(error_rate)
            return self.state()

    def state(self) -> dict:
        return {"delay_ms": self.delay_ms, "error_rate": self.error_rate}

    def next(self) -> tuple[float, bool]:
        """(delay in s, fail?) for the next inference request."""
        with self._lock:
            k, rate = self._k, self.error_rate
            self._k += 1
            return self.delay_ms / 1e3, math.floor((k + 1) * rate) > math.floor(k * rate)


class Metrics:
    """vLLM's metric families (the names and labels its /metrics uses), on their own registry."""

    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_start_time_seconds: when this server started
        lab = {"model_name": model_name}
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                             ["model_name"], buckets=LATENCY_BUCKETS, registry=r).labels(**lab)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.",
                              ["model_name"], buckets=LATENCY_BUCKETS, registry=r).labels(**lab)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.",
                             ["model_name"], buckets=ITL_BUCKETS, registry=r).labels(**lab)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     ["model_name"], registry=r).labels(**lab)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.",
                                         ["model_name"], registry=r).labels(**lab)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                             ["model_name"], registry=r).labels(**lab)
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution.",
                             ["model_name"], registry=r).labels(**lab)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                              ["model_name"], registry=r).labels(**lab)
        self.http = Counter("http_requests", "Total number of requests by method, status and handler.",
                            ["handler", "method", "status"], registry=r)
        self.model_name = model_name


class Engine:
    """The checkpoint and how one request runs on it: greedy generation (GPT-2) or a label (BERT).
    ``on_token(n_tokens_held)`` is called after every token, for the KV-cache gauge."""

    def __init__(self, checkpoint: str, precision: str = "fp32", threads: int = 1):
        import torch

        from model import evaluate
        from model.train import autocast_for

        torch.set_num_threads(threads)
        self.torch = torch
        self.m = evaluate.load(checkpoint, "cpu")
        self.block = int(self.m.cfg.model.block_size)
        self.precision = precision
        self.autocast = lambda: autocast_for(precision, "cpu")

    @property
    def family(self) -> str:
        return self.m.family

    def encode(self, prompt, max_tokens) -> tuple[list[int], int]:
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("'prompt' must be a non-empty string")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= self.block:
            raise BadRequest(f"'max_tokens' must be a whole number in [1, {self.block}]")
        ids = self.m.tok.encode(prompt)
        if self.m.task == "cls":
            ids = [self.m.tok.cls_id, *ids] if hasattr(self.m.tok, "cls_id") else ids
            max_tokens = 1
        if len(ids) + (max_tokens if self.m.task == "lm" else 0) > self.block:
            raise BadRequest(f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} exceeds the model's "
                             f"context of {self.block}")
        return ids, max_tokens

    def run(self, ids: list[int], max_tokens: int, on_token) -> tuple[list[int], list[float], str]:
        """The output tokens, the perf_counter time each was ready at, and the finish reason."""
        torch = self.torch
        times, out = [], []
        with torch.no_grad(), self.autocast():
            x = torch.tensor([ids])
            if self.m.task == "cls":
                logits = self.m.model(input_ids=x, attention_mask=torch.ones_like(x)).logits
                out.append(int(logits[0].float().argmax()))
                times.append(time.perf_counter())
                on_token(len(ids))
                return out, times, "stop"
            res = self.m.model(input_ids=x, use_cache=True)
            eot = getattr(self.m.tok, "eot_id", None)
            for i in range(max_tokens):
                nxt = int(res.logits[0, -1].float().argmax())
                out.append(nxt)
                times.append(time.perf_counter())
                on_token(len(ids) + len(out))
                if nxt == eot:
                    return out, times, "stop"
                if i + 1 < max_tokens:
                    res = self.m.model(input_ids=torch.tensor([[nxt]]), past_key_values=res.past_key_values,
                                       use_cache=True)
        return out, times, "length"

    def text(self, out: list[int]) -> str:
        if self.m.task == "cls":
            return str(out[0])
        return self.m.tok.decode([t for t in out if t < 256])


class Server(ThreadingHTTPServer):
    # server_close() waits for the requests in flight: a SIGTERM lets each finish, be counted and logged
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True  # a restart binds the same port at once (the scrape target stays the same)

    def __init__(self, port: int, engine: Engine, metrics: Metrics, faults: Faults, workers: int,
                 kv_budget_tokens: int, request_log: str | None, labels: dict):
        super().__init__((HOST, port), Handler)
        self.engine, self.metrics, self.faults = engine, metrics, faults
        self.slots = threading.Semaphore(workers)
        self.kv_budget = kv_budget_tokens
        self._kv_held: dict[int, int] = {}
        self._kv_lock = threading.Lock()
        self.labels = labels
        self._log = open(request_log, "a", buffering=1) if request_log else None
        self._log_lock = threading.Lock()

    def hold_kv(self, key: int, tokens: int) -> None:
        with self._kv_lock:
            if tokens:
                self._kv_held[key] = tokens
            else:
                self._kv_held.pop(key, None)
            self.metrics.kv_usage.set(min(1.0, sum(self._kv_held.values()) / self.kv_budget))

    def log_request(self, row: dict) -> None:
        if self._log is not None:
            with self._log_lock:
                self._log.write(json.dumps({**self.labels, **row}) + "\n")

    def server_close(self) -> None:
        super().server_close()
        if self._log is not None:
            self._log.close()


class Handler(BaseHTTPRequestHandler):
    server: Server  # HTTP/1.0: one request per connection, so a stop never waits on an idle keep-alive

    def log_message(self, format, *args):  # one line per request on stderr is noise under load
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode())

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise BadRequest(f"body over {MAX_BODY} bytes")
        try:
            return json.loads(self.rfile.read(n) or b"null")
        except ValueError as e:
            raise BadRequest(f"body is not JSON: {e}") from None

    def do_GET(self):
        if self.path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/admin/faults":
            self._json(200, self.server.faults.state())
        else:
            self._json(404, {"error": f"no {self.path}"})

    def do_POST(self):
        if self.path == "/admin/faults":
            try:
                body = self._body()
                if not isinstance(body, dict):
                    raise BadRequest("body must be a JSON object")
                self._json(200, self.server.faults.set(body.get("delay_ms"), body.get("error_rate")))
            except BadRequest as e:
                self._json(400, {"error": str(e)})
        elif self.path == COMPLETIONS:
            self._complete()
        else:
            self._json(404, {"error": f"no {self.path}"})

    def _complete(self) -> None:
        s, m = self.server, self.server.metrics
        arrival_wall, t0 = time.time(), time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        row = {"request_id": rid, "ts": dt.datetime.fromtimestamp(arrival_wall, dt.timezone.utc).isoformat()}
        try:
            body = self._body()
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            ids, max_tokens = s.engine.encode(body.get("prompt"), body.get("max_tokens", 16))
        except BadRequest as e:
            self._finish(400, {"error": str(e)}, row, t0)
            return
        delay, fail = s.faults.next()
        m.waiting.inc()
        s.slots.acquire()
        m.waiting.dec()
        m.running.inc()
        queued = time.perf_counter()
        key = threading.get_ident()
        try:
            if delay:
                time.sleep(delay)  # the injected slowdown holds the slot, as a slow model would
            if fail:
                raise RuntimeError("injected fault")
            out, times, reason = s.engine.run(ids, max_tokens, lambda n: s.hold_kv(key, n))
        except Exception as e:  # noqa: BLE001 - any engine failure is a 500 for this request only
            self._finish(500, {"error": f"inference failed: {e}"}, row, t0)
            return
        finally:
            s.hold_kv(key, 0)
            m.running.dec()
            s.slots.release()
        e2e = time.perf_counter() - t0
        ttft = times[0] - t0
        gaps = [b - a for a, b in zip(times, times[1:])]
        m.e2e.observe(e2e)
        m.ttft.observe(ttft)
        for g in gaps:
            m.itl.observe(g)
        m.success.labels(model_name=m.model_name, finished_reason=reason).inc()
        m.prompt_tokens.inc(len(ids))
        m.generation_tokens.inc(len(out))
        timings = {"e2e_ms": e2e * 1e3, "ttft_ms": ttft * 1e3, "itl_ms": [g * 1e3 for g in gaps],
                   "queue_ms": (queued - t0) * 1e3}
        answer = {"id": rid, "object": "text_completion", "model": m.model_name,
                  "choices": [{"index": 0, "text": s.engine.text(out), "finish_reason": reason}],
                  "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out)}, "timings": timings}
        row.update(ttft_ms=timings["ttft_ms"], itl_ms=(sum(timings["itl_ms"]) / len(gaps)) if gaps else None,
                   prompt_tokens=len(ids), output_tokens=len(out))
        self._finish(200, answer, row, t0, e2e)

    def _finish(self, code: int, answer: dict, row: dict, t0: float, e2e: float | None = None) -> None:
        """Count, log, then answer: a request is in /metrics and the log before its client hears back."""
        e2e = time.perf_counter() - t0 if e2e is None else e2e
        self.server.metrics.http.labels(handler=COMPLETIONS, method="POST", status=f"{code // 100}xx").inc()
        self.server.log_request({**row, "status": code, "e2e_ms": e2e * 1e3})
        self._json(code, answer)


def start(checkpoint: str, port: int = 0, model: str | None = None, hardware: str = "cpu",
          precision: str = "fp32", workers: int = 1, request_log: str | None = None,
          kv_budget_tokens: int | None = None, faults: Faults | None = None, threads: int = 1) -> Server:
    """A server bound to 127.0.0.1:``port`` (0: any free port), not yet serving: call
    ``serve_forever()`` (tests run it on a thread)."""
    from warehouse.writer import slugify

    engine = Engine(checkpoint, precision, threads)
    name = slugify(model or engine.m.slug)
    server = Server(port, engine, Metrics(name), faults or Faults(), workers,
                    kv_budget_tokens or workers * engine.block, request_log,
                    {"model": name, "hardware": slugify(hardware), "precision": precision})
    return server


def spawn(checkpoint: str, port: int, log_path: str, *, model: str | None = None, hardware: str = "cpu",
          precision: str = "fp32", workers: int = 1, request_log: str | None = None, extra: tuple = (),
          timeout_s: float = 180.0, wait: bool = True):
    """``mhw serve`` in its own process (and process group), once it answers /health (``wait``; else
    at once: call ``wait_ready``); its output goes to ``log_path``. For the demo, the tests and the
    benchmarks; stop it with ``stop``."""
    import subprocess

    cmd = [sys.executable, "-m", "mhw", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--hardware", hardware, "--precision", precision, "--workers", str(workers), *extra]
    cmd += ["--model", model] if model else []
    cmd += ["--request-log", str(request_log)] if request_log else []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        wait_ready(proc, port, log_path, timeout_s)
    return proc


def wait_ready(proc, port: int, log_path: str, timeout_s: float = 180.0) -> None:
    """Until a ``spawn``ed server answers /health (RuntimeError if it exits or outstays ``timeout_s``)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mhw serve exited with {proc.returncode}; its log: {log_path}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"mhw serve did not answer on port {port} in {timeout_s:.0f} s; its log: {log_path}")
        time.sleep(0.2)


def stop(proc, timeout_s: float = 30.0) -> int:
    """SIGTERM to a ``spawn``ed server's group (it finishes the requests in flight), SIGKILL if it
    outstays ``timeout_s``. Returns its exit code."""
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a ckpt-*.pt of mhw train, or its folder (the latest)")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free one, printed)")
    p.add_argument("--model", help="model name for /metrics' model_name and the log (default: the checkpoint's)")
    p.add_argument("--hardware", default="cpu", help="hardware name written to the request log")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision on CPU")
    p.add_argument("--workers", type=int, default=1, help="requests run at once; the rest queue")
    p.add_argument("--threads", type=int, default=1, help="torch threads per request")
    p.add_argument("--kv-budget-tokens", type=int, help="KV-cache capacity in tokens (default workers × context)")
    p.add_argument("--request-log", help="append one JSON line per request here (serving_requests format)")
    p.add_argument("--fault-delay-ms", type=float, default=0.0, help="injected slowdown per request (POST /admin/faults)")
    p.add_argument("--fault-error-rate", type=float, default=0.0, help="injected share of 500s (POST /admin/faults)")


def run(args: argparse.Namespace) -> int:
    faults = Faults()
    try:
        faults.set(args.fault_delay_ms, args.fault_error_rate)
    except BadRequest as e:
        print(f"mhw serve: {e}", file=sys.stderr)
        return 2
    server = start(args.checkpoint, args.port, args.model, args.hardware, args.precision, args.workers,
                   args.request_log, args.kv_budget_tokens, faults, args.threads)
    stopping = threading.Event()

    def stop(*_):  # SIGTERM: finish the requests in flight, then exit
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"mhw serve: {server.metrics.model_name} ({server.engine.family}) on http://{HOST}:{server.server_address[1]} "
          f"(pid {os.getpid()})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
