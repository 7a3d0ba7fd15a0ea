"""A bounded load generator for ``mhw serve`` (127.0.0.1 only): a fixed number of requests, a fixed
concurrency, a wall-clock limit, a planned mix of good and invalid requests; and the exact figures of
what it saw, to hold the serving cube against.

    python -m model.loadgen http://127.0.0.1:8000 --requests 200 --concurrency 4 --bad-every 10

The exact figures are the load's own: counts by status from the answers, and latencies from the
timings each answer carries (the server's own measurement of that request, the values its
histograms observed and its request log holds), so a comparison with the cube tests the pipeline
(scrape, deltas, buckets, sketch), not the distance between client and server clocks. Percentiles
are nearest-rank: the value at rank ceil(p × n) of the sorted values (what a histogram bucket or a
sketch bucket brackets).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Reply:
    index: int
    bad: bool  # planned as an invalid request
    status: int  # HTTP status (0: no answer: refused, timed out)
    sent: float  # wall-clock seconds
    done: float
    e2e_ms: float | None = None  # the server's timings (successful answers)
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0


def exact_percentile(values, p: float) -> float | None:
    """The nearest-rank percentile: the value at rank ceil(p × n) of the sorted values."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(1, math.ceil(p * len(xs) - 1e-9)) - 1]


@dataclass
class LoadResult:
    replies: list[Reply]
    started: float
    ended: float

    @property
    def ok(self) -> list[Reply]:
        return [r for r in self.replies if 200 <= r.status < 300]

    def count(self, lo: int, hi: int) -> int:
        return sum(lo <= r.status < hi for r in self.replies)

    def figures(self) -> dict:
        """The load's exact figures (what the cube must reproduce)."""
        ok = self.ok
        n = len(self.replies)
        e2e = [r.e2e_ms for r in ok]
        ttft = [r.ttft_ms for r in ok]
        gaps = [g for r in ok for g in r.itl_ms]
        means = [sum(r.itl_ms) / len(r.itl_ms) for r in ok if r.itl_ms]
        out = {"n_requests": n, "n_ok": len(ok), "n_client_error": self.count(400, 500),
               "n_server_error": self.count(500, 600), "n_no_answer": self.count(0, 1),
               "error_rate": (n - len(ok)) / n if n else None,
               "seconds": self.ended - self.started, "qps": n / (self.ended - self.started) if n else None,
               "prompt_tokens": sum(r.prompt_tokens for r in ok), "output_tokens": sum(r.output_tokens for r in ok)}
        for name, xs in (("e2e", e2e), ("ttft", ttft), ("itl", gaps), ("itl_request", means)):
            for p in (0.5, 0.95, 0.99):
                out[f"{name}_p{round(p * 100)}_ms"] = exact_percentile(xs, p)
        out["itl_values"] = len(gaps)
        return out


def check_loopback(base_url: str) -> str:
    host = urlsplit(base_url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{base_url}: the load generator only sends to 127.0.0.1 (got host {host!r})")
    return base_url.rstrip("/")


def _post(url: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, {}


def set_faults(base_url: str, delay_ms: float | None = None, error_rate: float | None = None) -> dict:
    """POST /admin/faults of an mhw serve."""
    status, body = _post(f"{check_loopback(base_url)}/admin/faults",
                         {"delay_ms": delay_ms, "error_rate": error_rate}, 10)
    if status != 200:
        raise RuntimeError(f"{base_url}/admin/faults answered {status}: {body}")
    return body


def prompts(n: int, seed: int = 0) -> list[str]:
    """Arithmetic prompts like the data the demo's GPT-2 learns (any byte-level model reads them)."""
    rng = random.Random(seed)
    return [f"{rng.randrange(1000)}+{rng.randrange(1000)}=" for _ in range(n)]


def run_load(base_url: str, requests: int = 100, concurrency: int = 4, bad_every: int = 0, max_tokens: int = 8,
             timeout_s: float = 30.0, deadline_s: float = 120.0, seed: int = 0,
             rate_qps: float | None = None) -> LoadResult:
    """Send ``requests`` completions (every ``bad_every``-th one invalid: an empty prompt, a 400) with
    at most ``concurrency`` in flight; stop sending after ``deadline_s``. Closed loop by default (each
    sender sends its next request when the last one is answered); with ``rate_qps``, open loop:
    request i is due at start + i / rate_qps whatever the server's pace (a slow server then queues
    them, up to ``concurrency``), as real traffic arrives. Returns every reply."""
    base = check_loopback(base_url)
    if requests < 0 or concurrency < 1 or requests > 100_000:
        raise ValueError("requests must be in [0, 100000] and concurrency at least 1")
    texts = prompts(requests, seed)
    replies: list[Reply] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    started, t0 = time.time(), time.monotonic()
    stop_at = t0 + deadline_s

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            if rate_qps:  # open loop: wait for this request's arrival time
                pause = t0 + i / rate_qps - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            bad = bool(bad_every) and (i + 1) % bad_every == 0
            body = {"prompt": "" if bad else texts[i], "max_tokens": max_tokens}
            sent = time.time()
            status, answer = _post(f"{base}/v1/completions", body, timeout_s)
            r = Reply(i, bad, status, sent, time.time())
            t = answer.get("timings") if status == 200 else None
            if t:
                r.e2e_ms, r.ttft_ms, r.itl_ms = t["e2e_ms"], t["ttft_ms"], list(t["itl_ms"])
                r.prompt_tokens = answer["usage"]["prompt_tokens"]
                r.output_tokens = answer["usage"]["completion_tokens"]
            with lock:
                replies.append(r)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="mhw-load") as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return LoadResult(sorted(replies, key=lambda r: r.index), started, time.time())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--bad-every", type=int, default=0, help="every n-th request is invalid (0: none)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--rate", type=float, help="open loop: requests per second, whatever the server's pace")
    p.add_argument("--deadline", type=float, default=120.0, help="stop sending after this many seconds")
    args = p.parse_args(argv)
    res = run_load(args.url, args.requests, args.concurrency, args.bad_every, args.max_tokens,
                   deadline_s=args.deadline, rate_qps=args.rate)
    print(json.dumps(res.figures(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
