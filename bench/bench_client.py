"""What does ``run.log`` cost a training loop, and how much can one ``mhw collect`` take?

    .venv/bin/python bench/bench_client.py [--steps 4000] [--reps 3] [--clients 4] [--seconds 10]

Part 1, the training thread. A loop of ``--steps`` steps, each "computing" for ``--step-ms`` in a
call that releases the GIL (as torch's kernels and CUDA waits do; ``time.sleep`` here), then logging
one step: 8 train_steps columns, and in the ``+4 extra`` arms 4 more names (step_metrics rows).
Only the log call is timed (perf_counter around it), so the figure is what the training thread
pays, including any wait for the GIL held by the sink's background thread. Arms, interleaved rep by
rep so load on this shared machine hits them alike:

- ``dict only``: building the metrics and calling a function that does nothing (the floor);
- ``other rank``: ``mhw.start_run`` on a rank other than 0 (every call a no-op);
- ``before: BufferedWriter``: what ``Telemetry.step`` did before the client (a row appended to
  warehouse.writer.BufferedWriter, blocks written on its thread);
- ``lake sink``: ``mhw.start_run(lake=...)``, rows merged into a local lake every second;
- ``http sink``: ``mhw.start_run(collector=...)`` posting every second to a real ``mhw collect``
  (another process, 127.0.0.1).

Per arm: the median and p99 of the per-call times over all reps, and the training thread's CPU time
per step (thread_time, the loop's own compute excluded: sleep costs none). On a loaded machine a
single timed call also carries the scheduler's preemptions and the timer's own cost, so each arm is
measured a second way too: batches of 200 back-to-back calls (the sinks' threads running as usual,
flushing every 0.2 s), the mean per call of each batch, and the best and median batch.

Part 2, the collector. ``--clients`` threads, each a run of its own posting batches of ``B`` step
rows (the next steps of its run, merged into its block) as fast as the collector answers, for
``--seconds``; the collector is a real ``mhw collect`` process writing a local lake. Prints batches
and rows stored per second and the p50 / p99 time to an acknowledgement, for B = 50 and 500.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mhw  # noqa: E402
from warehouse.telemetry import utcnow  # noqa: E402
from warehouse.writer import BufferedWriter, Lake  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def start_collector(lake: str, token: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "mhw", "collect", "--address", "127.0.0.1:0", "--lake", lake],
                         cwd=REPO, env={**os.environ, "MHW_COLLECTOR_TOKEN": token}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(line + p.stdout.read())
    return p, line.split("listening on ")[1].split(",")[0]


def metrics(step: int, extra: bool) -> dict:
    m = {"loss": 2.5 - step * 1e-4, "lr": 3e-4, "grad_norm": 0.8, "tokens_per_s": 5.2e4, "samples_per_s": 101.0,
         "step_time_ms": 41.0, "data_time_ms": 0.4, "epoch": step / 1e4}
    if extra:
        m.update(mean_token_accuracy=0.41, num_tokens=step * 4096.0, z_loss=1e-4, moe_aux_loss=0.01)
    return m


def nothing(step, **m):
    pass


def one_arm(name: str, steps: int, step_s: float, extra: bool, ctx: dict) -> tuple[list[float], float]:
    """(per-call seconds, training-thread CPU seconds per step) of one arm's loop."""
    tmp = tempfile.mkdtemp(prefix="mhw-bench-client-")
    run_id = f"bench-{name.split()[0].replace(':', '')}-{secrets.token_hex(3)}"
    close = lambda: None  # noqa: E731
    if name == "dict only":
        log = nothing
    elif name == "other rank":
        os.environ["RANK"] = "1"
        try:
            log = mhw.start_run("bench", run_id=run_id, lake=tmp).log
        finally:
            del os.environ["RANK"]
    elif name == "before: BufferedWriter":
        w = BufferedWriter(Lake(tmp), "train_steps", f"{run_id}-steps", flush_rows=2000, flush_seconds=1.0)
        const = {"run_id": run_id, "model": "bench", "hardware": "bench-box", "precision": "bf16"}

        def log(step, **m):
            w.append({**const, "step": step, "ts": utcnow(), **m})
        close = w.close
    else:
        kw = {"lake": tmp} if name == "lake sink" else {"collector": ctx["url"], "token": ctx["token"]}
        run = mhw.start_run("bench", run_id=run_id, hardware="bench-box", precision="bf16", flush_seconds=1.0,
                            system_interval_s=1.0, **kw)
        log, close = run.log, run.end
    times = []
    cpu = 0.0
    for step in range(steps):
        time.sleep(step_s)  # the step's compute, GIL released
        m = metrics(step, extra)
        c0 = time.thread_time()
        t0 = time.perf_counter()
        log(step, **m)
        times.append(time.perf_counter() - t0)
        cpu += time.thread_time() - c0
    close()
    return times, cpu / steps


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def part1(args, ctx) -> None:
    arms = ["dict only", "other rank", "before: BufferedWriter", "lake sink", "http sink"]
    print(f"\n== Part 1: run.log on the training thread: {args.steps} steps x {args.reps} reps per arm, "
          f"{args.step_ms} ms of GIL-free compute per step ==")
    for extra in (False, True):
        got = {a: ([], []) for a in arms}
        for rep in range(args.reps):
            order = arms if rep % 2 == 0 else arms[::-1]
            for a in order:
                if extra and a == "before: BufferedWriter":
                    continue  # it had no place for other names
                t, c = one_arm(a, args.steps, args.step_ms / 1e3, extra, ctx)
                got[a][0].extend(t)
                got[a][1].append(c)
        print(f"\n{'8 columns' + (' +4 extra' if extra else ''):<14} {'arm':<24} {'median us':>10} {'p99 us':>8} "
              f"{'thread CPU us/step':>19}")
        floor = statistics.median(got["dict only"][0]) * 1e6
        for a in arms:
            t, c = got[a]
            if not t:
                continue
            med = statistics.median(t) * 1e6
            print(f"{'':<14} {a:<24} {med:>10.2f} {pct(t, 0.99) * 1e6:>8.2f} {statistics.median(c) * 1e6:>19.2f}"
                  + (f"   (+{med - floor:.2f} over the floor)" if a != "dict only" else ""))


def batched(args, ctx) -> None:
    print(f"\n== Part 1b: the same calls back to back, batches of 200, {args.batches} batches per arm ==")
    print(f"{'arm':<34} {'best us':>8} {'median us':>10}")
    for extra in (False, True):
        for name in ("dict only", "before: BufferedWriter", "lake sink", "http sink"):
            if extra and name == "before: BufferedWriter":
                continue
            tmp = tempfile.mkdtemp(prefix="mhw-bench-client-")
            run_id = f"batched-{secrets.token_hex(3)}"
            close = lambda: None  # noqa: E731
            if name == "dict only":
                log = nothing
            elif name == "before: BufferedWriter":
                w = BufferedWriter(Lake(tmp), "train_steps", f"{run_id}-steps", flush_rows=2000, flush_seconds=0.2)
                const = {"run_id": run_id, "model": "bench", "hardware": "bench-box", "precision": "bf16"}

                def log(step, **m):
                    w.append({**const, "step": step, "ts": utcnow(), **m})
                close = w.close
            else:
                kw = {"lake": tmp} if name == "lake sink" else {"collector": ctx["url"], "token": ctx["token"]}
                run = mhw.start_run("bench", run_id=run_id, hardware="bench-box", flush_seconds=0.2,
                                    system_interval_s=1.0, **kw)
                log, close = run.log, run.end
            per_call = []
            for b in range(args.batches):
                ms = [metrics(b * 200 + i, extra) for i in range(200)]
                t0 = time.perf_counter()
                for i in range(200):
                    log(b * 200 + i, **ms[i])
                per_call.append((time.perf_counter() - t0) / 200)
                time.sleep(0.002)  # the step's compute: the sink's thread runs
            close()
            print(f"{name + (' +4 extra' if extra else ''):<34} {min(per_call) * 1e6:>8.2f} "
                  f"{statistics.median(per_call) * 1e6:>10.2f}")


def part2(args, ctx) -> None:
    print(f"\n== Part 2: mhw collect, {args.clients} concurrent clients posting for {args.seconds:.0f} s each size ==")
    t_start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    for batch_rows in (50, 500):
        lat: list[float] = []
        stored = [0]
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def client(i: int):
            conn = http.client.HTTPConnection(ctx["host"], ctx["port"], timeout=120)
            run = f"tput-{batch_rows}-{i}-{secrets.token_hex(2)}"
            step, seq = 0, 0
            headers = {"Authorization": f"Bearer {ctx['token']}", "Content-Type": "application/json"}
            while time.monotonic() < stop:
                rows = [{"run_id": run, "model": "bench", "hardware": "bench-box", "step": s,
                         "ts": (t_start + timedelta(seconds=s)).isoformat(), **metrics(s, False)}
                        for s in range(step, step + batch_rows)]
                body = json.dumps({"batch": f"{run}-{seq}", "writes": [
                    {"table": "train_steps", "key": f"{run}-steps-b{step // 2000:09d}", "rows": rows}]}).encode()
                t0 = time.perf_counter()
                conn.request("POST", "/v1/batches", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                with lock:
                    lat.append(dt)
                    stored[0] += batch_rows
                step += batch_rows
                seq += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        print(f"batches of {batch_rows:>3} rows: {len(lat) / wall:7.1f} batches/s, {stored[0] / wall:9.0f} rows/s stored; "
              f"acknowledged in p50 {pct(lat, 0.5) * 1e3:6.1f} ms, p99 {pct(lat, 0.99) * 1e3:6.1f} ms "
              f"({len(lat)} batches)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=0.5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    lake = tempfile.mkdtemp(prefix="mhw-bench-collector-")
    token = secrets.token_urlsafe(16)
    proc, url = start_collector(lake, token)
    host, port = url.removeprefix("http://").split(":")
    ctx = {"url": url, "token": token, "host": host, "port": int(port)}
    try:
        if args.part in ("1", "both"):
            part1(args, ctx)
            batched(args, ctx)
        if args.part in ("2", "both"):
            part2(args, ctx)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
