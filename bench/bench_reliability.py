"""Reliability probes: races, odd inputs, crashes and hostile SQL, each tried a bounded number of
times against a code tree, counting failures and rows lost or duplicated.

    .venv/bin/python bench/bench_reliability.py [--repo PATH] [--quick]

``--repo`` runs the probes against another checkout (e.g. the commit before a fix, in a
``git worktree``), with this venv: the figures before and after come from the same script. Every
command is a real process (``python -m warehouse.cli``, a build in its own process) and every kill a
real SIGKILL; the lake is read back with ``mhw query``. Prints one markdown table and the machine's
load average.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

T0 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
BUILD = "import sys; from pipelines.build import build; build(sys.argv[1], sys.argv[2], full=sys.argv[3] == 'full')"
PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


class Probe:
    def __init__(self, repo: Path, work: Path):
        self.repo, self.work = repo, work
        self.env = {**os.environ, "PYTHONPATH": str(repo)}

    def mhw(self, *argv, timeout=600, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "warehouse.cli", *map(str, argv)], cwd=self.repo, env=self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)

    def count(self, lake: Path, sql: str, serving: Path | None = None):
        r = self.mhw("query", sql, "--format", "json", "--lake", lake, "--serving", serving or self.work / "none.duckdb")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return list(json.loads(r.stdout.splitlines()[0]).values())[0]

    def build(self, lake: Path, serving: Path, full=True) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", BUILD, str(lake), str(serving), "full" if full else "inc"],
                                cwd=self.repo, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def latency_file(path: Path, n: int, day: int = 0, run: str = "serve-1") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"table": "latency_samples", "run_id": run, "model": "m", "hardware": "h",
                                "ts": (T0 + dt.timedelta(days=day, seconds=i)).isoformat(), "latency_ms": 10.0 + i % 7,
                                "ok": True}) + "\n")
    return path


def steps_file(path: Path, n: int, days: int, loss0: float = 5.0, run: str = "r1", start_day: int = 0) -> Path:
    with open(path, "w") as f:
        f.write(json.dumps({"table": "runs", "run_id": run, "model": "m", "hardware": "h",
                            "started_at": T0.isoformat()}) + "\n")
        for i in range(n):
            f.write(json.dumps({"table": "train_steps", "run_id": run, "model": "m", "hardware": "h", "step": i,
                                "ts": (T0 + dt.timedelta(days=start_day, seconds=i * days * 86_400 / n)).isoformat(),
                                "loss": loss0 / (1 + i / 100)}) + "\n")
    return path


def served_steps(p: Probe, lake: Path, serving: Path):
    return p.count(lake, "select sum(n_steps) from train_health_daily where agg_level = 'model,date' and model = 'm'",
                   serving)


def row(probe, trials, failures, lost=0, dup=0, note=""):
    return {"probe": probe, "trials": trials, "failures": failures, "rows lost": lost, "rows duplicated": dup,
            "note": note}


# --- probes -----------------------------------------------------------------------------------------

REINGEST = """
import shutil, subprocess, sys
src, a, b, lake, stop = sys.argv[1:6]
n = 0
while True:
    shutil.copy((a, b)[n % 2], src)
    subprocess.run([sys.executable, "-m", "warehouse.cli", "ingest", src, "--lake", lake], capture_output=True)
    n += 1
    try:
        open(stop).close()
        print(n)
        break
    except FileNotFoundError:
        pass
"""


def build_during_reingest(p: Probe, trials: int, sim_rows: int) -> dict:
    """Builds back to back while one file is re-ingested back to back, its two versions on disjoint
    dates (20 days each): every re-ingest deletes the 20 files the other version wrote."""
    lake, serving = p.work / "race", p.work / "race.duckdb"
    src = p.work / "race-steps.jsonl"
    a = steps_file(p.work / "race-a.jsonl", 4000, 20)
    b = steps_file(p.work / "race-b.jsonl", 3000, 20, 4.0, start_day=20)
    shutil.copy(a, src)
    # beside it, a fleet's telemetry, so that a build reads raw rows for seconds, as in production
    p.mhw("simulate", "--rows", sim_rows, "--out", lake, "--seed", 1)
    p.mhw("ingest", src, "--lake", lake)
    p.build(lake, serving).wait()
    stop = p.work / "race-stop"
    script = p.work / "race-loop.py"
    script.write_text(REINGEST)
    loop = subprocess.Popen([sys.executable, str(script), src, a, b, lake, stop], cwd=p.repo, env=p.env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    failures, wrong, errors = 0, 0, []
    for t in range(trials):
        proc = p.build(lake, serving, full=t % 2 == 0)
        proc.wait()
        if proc.returncode != 0:
            failures += 1
            lines = proc.stderr.read().strip().splitlines()
            errors.append(next((ln for ln in reversed(lines) if "Error" in ln), "?").strip()[:140])
            continue
        served = served_steps(p, lake, serving)
        if served not in (4000, 3000):
            wrong += min(abs(served - 4000), abs(served - 3000))
    stop.touch()
    n = int(loop.communicate(timeout=600)[0].strip() or 0)
    note = f"{n} re-ingests during the builds" + (f"; e.g. `{errors[0]}`" if errors else "")
    return row("build while the same file is re-ingested", trials, failures, dup=wrong, note=note)


def links_and_copies(p: Probe) -> dict:
    lake = p.work / "links"
    f = latency_file(p.work / "lat.jsonl", 8000)
    (p.work / "lat-sym.jsonl").symlink_to(f)
    os.link(f, p.work / "lat-hard.jsonl")
    shutil.copy(f, p.work / "lat-copy.jsonl")
    p.mhw("ingest", f, "--lake", lake)
    failures, dup = 0, 0
    for other in ("lat-sym.jsonl", "lat-hard.jsonl", "lat-copy.jsonl"):
        p.mhw("ingest", p.work / other, "--lake", lake)
        extra = p.count(lake, "select count(*) from latency_samples") - 8000 - dup
        failures += extra > 0
        dup += extra
    return row("one file under another path (symlink, hard link, copy)", 3, failures, dup=dup, note="8,000 rows each")


def pipes(p: Probe) -> dict:
    lake = p.work / "pipes"
    a = latency_file(p.work / "pipe-a.jsonl", 8000)
    b = latency_file(p.work / "pipe-b.jsonl", 3000, day=1, run="serve-2")
    failures, lost, dup, expected = 0, 0, 0, 0
    for f, n in ((a, 8000), (b, 3000)):
        subprocess.run(["bash", "-c", f"{sys.executable} -m warehouse.cli ingest --lake {lake} <(cat {f})"],
                       cwd=p.repo, env=p.env, capture_output=True, timeout=300)
        expected += n
        got = p.count(lake, "select count(*) from latency_samples")
        failures += got != expected
        lost += max(0, expected - got)
        dup += max(0, got - expected)
        expected = got  # judge the next pipe on its own
    return row("`mhw ingest <(cat f)`, two pipes", 2, failures, lost, dup, "8,000 then 3,000 rows")


def fifos(p: Probe, trials: int) -> dict:
    lake = p.work / "fifo"
    src = latency_file(p.work / "fifo-src.jsonl", 8000)
    failures, lost = 0, 0
    for t in range(trials):
        fifo = p.work / f"fifo-{t}.jsonl"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_bytes(src.read_bytes()), daemon=True)
        writer.start()
        try:
            p.mhw("ingest", fifo, "--lake", lake, timeout=60)
            got = p.count(lake, "select count(*) from latency_samples") if (lake / "latency_samples").exists() else 0
        except subprocess.TimeoutExpired:
            got = 0
            try:  # let the blocked writer go
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
        failures += got != 8000
        lost += max(0, 8000 - got)
        fifo.unlink()
        shutil.rmtree(lake, ignore_errors=True)
    return row("`mkfifo` input (60 s limit)", trials, failures, lost, note="a hang counts as a failure")


def killed_ingest(p: Probe, trials: int, rows: int) -> dict:
    """SIGKILL at random moments of an ingest replacing a run's rows over 40 date partitions; a
    reader then must see the old version or the new one whole."""
    lake = p.work / "killed"
    old = steps_file(p.work / "killed-old.jsonl", rows, 40)
    new = steps_file(p.work / "killed-new.jsonl", rows * 3 // 2, 40, 3.0)
    src = p.work / "killed-run.jsonl"
    shutil.copy(old, src)
    p.mhw("ingest", src, "--lake", lake)
    rng = random.Random(7)
    failures, partial, killed = 0, 0, 0
    for _ in range(trials):
        shutil.copy(new, src)
        start = time.time_ns()
        proc = subprocess.Popen([sys.executable, "-m", "warehouse.cli", "ingest", str(src), "--lake", str(lake)],
                                cwd=p.repo, env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill while the ingest publishes: just after its first new file appears in the partitions
        while proc.poll() is None and not _newer_file(lake / "train_steps", start):
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
        got = p.count(lake, "select count(*) from train_steps")
        valid = (rows, rows * 3 // 2)
        if got not in valid:
            failures += 1
            partial += min(abs(got - v) for v in valid)
        shutil.copy(old, src)
        p.mhw("ingest", src, "--lake", lake)
    return row(f"ingest SIGKILLed mid-way ({rows:,} -> {rows * 3 // 2:,} rows)", trials, failures, dup=partial,
               note=f"{killed} killed before they finished; rows: distance from a whole version")


def _newer_file(folder: Path, since_ns: int) -> bool:
    for parent, _, files in os.walk(folder):
        for f in files:
            try:
                if os.stat(os.path.join(parent, f)).st_mtime_ns > since_ns:
                    return True
            except FileNotFoundError:
                pass
    return False


def killed_build_leftovers(p: Probe, trials: int) -> dict:
    lake, serving = p.work / "kb", p.work / "kb.duckdb"
    p.mhw("ingest", steps_file(p.work / "kb.jsonl", 5000, 5), "--lake", lake)
    p.build(lake, serving).wait()
    rng = random.Random(3)
    for _ in range(trials):
        there = set(p.work.glob("kb.duckdb.*.tmp"))
        proc = p.build(lake, serving, full=True)
        # kill while it writes the next serving file: as soon as its temp file exists
        while proc.poll() is None and not set(p.work.glob("kb.duckdb.*.tmp")) - there:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def left() -> list[Path]:
        found = [q for q in p.work.glob("kb.duckdb.*") if q.name != "kb.duckdb.lock"]
        found += [q for q in (lake / "cubes").rglob("*") if q.name.endswith(".tmp")]
        found += [q for d in ("_tmp", "_snapshots", "_txn") if (lake / d).exists() for q in (lake / d).iterdir()
                  if q.name != ".pool"]  # the finished snapshots' empty folder trees, kept for reuse
        found += [q for q in (lake / "_snapshots" / ".pool").rglob("*") if not q.is_dir()]
        return found

    before = len(left())
    p.build(lake, serving).wait()
    after = left()
    return row(f"build SIGKILLed mid-way, then one more build", trials, int(bool(after)),
               note=f"leftover temp files: {before} after the kills, {len(after)} after the next build")


def hostile_query(p: Probe) -> dict:
    lake, serving = p.work / "hq", p.work / "hq.duckdb"
    p.mhw("ingest", steps_file(p.work / "hq.jsonl", 2000, 2), "--lake", lake)
    p.build(lake, serving).wait()

    def digest() -> str:
        h = hashlib.sha1()
        for f in sorted(x for x in lake.rglob("*") if x.is_file() and "_lake.lock" not in x.name):
            h.update(str(f.relative_to(lake)).encode() + f.read_bytes())
        h.update(serving.read_bytes())
        return h.hexdigest()

    before = digest()
    part = next((lake / "train_steps").rglob("*.parquet")).parent
    attacks = [
        f"copy (select * from train_steps) to '{part}/evil.parquet' (format parquet)",
        f"detach serving; attach '{serving}' as w; delete from w.train_health_daily",
        "select * from read_csv('/etc/passwd')",
        f"copy (select 1) to '{serving}.wal'",
        "set enable_external_access = true; select * from read_csv('/etc/passwd')",
        f"attach '{p.work}/new.duckdb' as x; create table x.t as select 1",
    ]
    succeeded = [a for a in attacks if p.mhw("query", a, "--lake", lake, "--serving", serving).returncode == 0]
    wal = Path(f"{serving}.wal")
    changed = digest() != before or wal.exists() or (p.work / "new.duckdb").exists()
    return row("`mhw query` writes and host reads", len(attacks), len(succeeded),
               note=("lake or serving file changed" if changed else "lake and serving file byte-identical") +
                    (f"; ran: {', '.join(a.split()[0] for a in succeeded)}" if succeeded else ""))


def oversized_field(p: Probe, mb: int) -> dict:
    lake, serving = p.work / "big", p.work / "big.duckdb"
    f = p.work / "big.jsonl"
    steps_file(f, 1000, 2)
    with open(f, "a") as out:
        out.write('{"table": "train_steps", "run_id": "')
        chunk = "x" * (1 << 20)
        for _ in range(mb):
            out.write(chunk)
        out.write(f'", "model": "m", "hardware": "h", "step": 1, "ts": "{T0.isoformat()}", "loss": 1.0}}\n')
    p.mhw("ingest", f, "--lake", lake)
    stored = p.count(lake, "select count(*) from train_steps")
    quarantined = p.count(lake, "select count(*) from quarantine")
    r = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-c", BUILD, str(lake), str(serving), "full"],
                       cwd=p.repo, env=p.env, capture_output=True, text=True, timeout=600)
    peak_mb = int(r.stdout.strip().splitlines()[-1]) / 1024
    return row(f"one row with a {mb} MB run_id", 1, int(stored != 1000 or quarantined != 1),
               dup=max(0, stored - 1000),
               note=f"train_steps {stored}, quarantined {quarantined}; next build peak RSS {peak_mb:,.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="code tree to probe")
    ap.add_argument("--quick", action="store_true", help="fewer trials")
    ap.add_argument("--only", help="comma-separated probes: race, links, pipes, fifo, killed-ingest, killed-build, "
                                   "query, oversized")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mhw-reliability-") as tmp:
        p = Probe(repo, Path(tmp))
        quick = args.quick
        probes = {
            "race": lambda: build_during_reingest(p, 3 if quick else 8, 300_000),
            "links": lambda: links_and_copies(p),
            "pipes": lambda: pipes(p),
            "fifo": lambda: fifos(p, 1 if quick else 2),
            "killed-ingest": lambda: killed_ingest(p, 4 if quick else 10, 100_000),
            "killed-build": lambda: killed_build_leftovers(p, 3 if quick else 5),
            "query": lambda: hostile_query(p),
            "oversized": lambda: oversized_field(p, 20),
        }
        chosen = args.only.split(",") if args.only else list(probes)
        rows = [probes[name]() for name in chosen]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# Reliability probes on {repo.name} at {commit}, {dt.date.today()}; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end; {time.perf_counter() - t0:.0f} s\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if c in ("probe", "note") else "---:" for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
