"""Nothing lost or duplicated when writers and readers meet (warehouse/commit.py): a build while the
same file is re-ingested, one file under several paths, pipes and FIFOs, writers killed mid-commit,
and what killed processes leave behind. Real processes, real signals, real DuckDB; counts exact."""
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.build import build
from warehouse import cli
from warehouse.query import connect
from warehouse.writer import Lake

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
T0 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def mhw(*argv, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warehouse.cli", *map(str, argv)], env=env or ENV, capture_output=True,
                          text=True, **kw)


def q(lake, sql):
    """What ``mhw query`` sees: the lake read under its lock (which undoes a dead writer's half first)."""
    with Lake(lake).read_lock():
        return connect(lake_root=str(lake), serving_path="").execute(sql).fetchall()


def latency_file(path: Path, n: int, day: int = 0, run: str = "serve-1") -> Path:
    """``n`` latency_samples lines (a table without a key: kept per source file)."""
    with open(path, "w") as f:
        for i in range(n):
            ts = T0 + dt.timedelta(days=day, seconds=i)
            f.write(json.dumps({"table": "latency_samples", "run_id": run, "model": "m", "hardware": "h",
                                "ts": ts.isoformat(), "latency_ms": 10.0 + i % 7, "ok": True}) + "\n")
    return path


def steps_file(path: Path, n: int, days: int = 1, run: str = "r1", loss0: float = 5.0, start_day: int = 0) -> Path:
    """A run's ``n`` train_steps lines spread over ``days`` date partitions, and its runs row."""
    with open(path, "w") as f:
        f.write(json.dumps({"table": "runs", "run_id": run, "model": "m", "hardware": "h",
                            "started_at": T0.isoformat()}) + "\n")
        for i in range(n):
            ts = T0 + dt.timedelta(days=start_day, seconds=i * days * 86_400 / n)
            f.write(json.dumps({"table": "train_steps", "run_id": run, "model": "m", "hardware": "h", "step": i,
                                "ts": ts.isoformat(), "loss": loss0 / (1 + i / 100)}) + "\n")
    return path


def leftovers(lake: Path) -> list[str]:
    """What a killed writer or reader could leave: staged files, journals, snapshots (the pool of
    finished snapshots' folder trees is no leftover while it holds no file)."""
    left = [p for d in ("_tmp", "_txn", "_snapshots") if (lake / d).exists() for p in (lake / d).iterdir()
            if p.name != ".pool"]
    left += [p for p in (lake / "_snapshots" / ".pool").rglob("*") if not p.is_dir()]
    return sorted(str(p.relative_to(lake)) for p in left)


# --- one file, one source ---------------------------------------------------------------------------

@pytest.mark.slow  # six ingest processes
def test_links_and_copies_of_an_ingested_file_are_not_ingested_again(tmp_path):
    lake = tmp_path / "lake"
    f = latency_file(tmp_path / "lat.jsonl", 8000)
    (tmp_path / "sym.jsonl").symlink_to(f)
    os.link(f, tmp_path / "hard.jsonl")
    (tmp_path / "copy.jsonl").write_bytes(f.read_bytes())
    for p in (f, tmp_path / "sym.jsonl", tmp_path / "hard.jsonl", tmp_path / "copy.jsonl"):
        assert mhw("ingest", p, "--lake", lake).returncode == 0
        assert q(lake, "select count(*) from latency_samples") == [(8000,)]
    # the same file named twice in one call is read once
    r = mhw("ingest", f, tmp_path / "hard.jsonl", "--lake", lake)
    assert r.returncode == 0 and "ingested once" in r.stdout
    assert q(lake, "select count(*) from latency_samples") == [(8000,)]
    # an edited file replaces its own rows, reached through its symlink too
    latency_file(tmp_path / "new.jsonl", 5000).replace(f)
    assert mhw("ingest", tmp_path / "sym.jsonl", "--lake", lake).returncode == 0
    assert q(lake, "select count(*) from latency_samples") == [(5000,)]


@pytest.mark.slow  # five ingest processes, fed through pipes
def test_pipes_are_read_once_whole_and_keyed_by_content_or_name(tmp_path):
    lake = tmp_path / "lake"
    a = latency_file(tmp_path / "a.jsonl", 8000)  # > 64 KiB: more than format detection reads
    b = latency_file(tmp_path / "b.jsonl", 3000, day=1, run="serve-2")
    assert a.stat().st_size > 1 << 16
    cmd = f"{sys.executable} -m warehouse.cli ingest --lake {lake}"
    for src, want in ((a, 8000), (b, 11000), (a, 11000)):  # another pipe adds; the same bytes again do not
        r = subprocess.run(["bash", "-c", f"{cmd} <(cat {src})"], env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert q(lake, "select count(*) from latency_samples") == [(want,)]
    # stdin, under a name of the user's: ingesting the name again replaces what it gave
    for n in (4000, 2500):
        feed = latency_file(tmp_path / "feed.jsonl", n, day=2, run="serve-3")
        r = subprocess.run(["bash", "-c", f"cat {feed} | {cmd} - --source-name nightly"], env=ENV,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert q(lake, "select count(*) from latency_samples where run_id = 'serve-3'") == [(n,)]
    assert q(lake, "select count(*) from latency_samples") == [(11000 + 2500,)]


def test_a_fifo_is_read_once_and_does_not_hang(tmp_path):
    lake = tmp_path / "lake"
    src = latency_file(tmp_path / "a.jsonl", 8000)
    fifo = tmp_path / "steps.jsonl"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(src.read_bytes()))
    writer.start()
    r = mhw("ingest", fifo, "--lake", lake, timeout=120)
    writer.join(10)
    assert r.returncode == 0, r.stderr
    assert q(lake, "select count(*) from latency_samples") == [(8000,)]


# --- writers and readers at once --------------------------------------------------------------------

REINGEST = """
import subprocess, sys, time
lake, a, b, stop = sys.argv[1:5]
n = 0
while True:
    for f in (a, b):
        if subprocess.run([sys.executable, "-m", "warehouse.cli", "ingest", f, "--source-name", "steps",
                           "--lake", lake], capture_output=True).returncode != 0:
            sys.exit(f"ingest {n} failed")
        n += 1
        try:
            open(stop).close()
            print(n)
            sys.exit(0)
        except FileNotFoundError:
            pass
"""


@pytest.mark.slow  # six builds racing a re-ingest loop
def test_builds_while_the_same_file_is_reingested_never_fail_nor_double(tmp_path):
    """Two versions of one source alternate back to back (their rows on disjoint dates, so each
    re-ingest deletes the 20 files the other wrote) while builds run: every build succeeds and
    serves one version whole."""
    lake, serving = tmp_path / "lake", tmp_path / "serving.duckdb"
    a = steps_file(tmp_path / "a.jsonl", 3000, days=20)
    b = steps_file(tmp_path / "b.jsonl", 2000, days=20, loss0=4.0, start_day=20)
    assert mhw("ingest", a, "--source-name", "steps", "--lake", lake).returncode == 0
    build(str(lake), str(serving), full=True)
    stop = tmp_path / "stop"
    script = tmp_path / "reingest.py"
    script.write_text(REINGEST)
    loop = subprocess.Popen([sys.executable, str(script), lake, a, b, stop], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    failures, seen = [], set()
    try:
        for i in range(6):
            try:
                r = build(str(lake), str(serving), full=i % 2 == 0)
            except Exception as e:  # noqa: BLE001 - counted: the test asserts there are none
                failures.append(repr(e))
                continue
            served = connect(lake_root=str(lake), serving_path=str(serving)).execute(
                "select sum(n_steps) from train_health_daily where agg_level = 'model,date'").fetchall()[0][0]
            seen.add(served)
            assert r.serving_mode in ("fresh", "patched", "unchanged")
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=300)
    assert loop.returncode == 0, err
    assert int(out.strip()) >= 2, "the ingests did not overlap the builds; the test proved nothing"
    assert failures == []
    assert seen <= {3000, 2000}, seen  # one version or the other, never both, never part
    r = build(str(lake), str(serving))
    final = q(lake, "select count(*) from train_steps")[0][0]
    assert final in (3000, 2000)
    assert connect(lake_root=str(lake), serving_path=str(serving)).execute(
        "select sum(n_steps) from train_health_daily where agg_level = 'model,date'").fetchall() == [(final,)]
    assert leftovers(lake) == []


def newer_file(folder: Path, since_ns: int) -> bool:
    for parent, _, files in os.walk(folder):
        for f in files:
            try:
                if os.stat(os.path.join(parent, f)).st_mtime_ns > since_ns:
                    return True
            except FileNotFoundError:
                pass
    return False


KILLED_INGEST = """
import sys
from warehouse import cli
sys.exit(cli.main(["ingest", sys.argv[1], "--lake", sys.argv[2]]))
"""


@pytest.mark.slow  # six ingests of 60,000 rows, killed mid-commit
def test_an_ingest_killed_mid_commit_is_seen_whole_or_not_at_all(tmp_path):
    """SIGKILL while an ingest publishes (just after its first new file lands) a run's rows over 40
    date partitions: a reader afterwards sees the old version or the new one, every row of it, and
    the next command leaves no staged file, journal or snapshot behind."""
    lake = tmp_path / "lake"
    old = steps_file(tmp_path / "old.jsonl", 40_000, days=40)
    assert mhw("ingest", old, "--source-name", "run", "--lake", lake).returncode == 0
    new = steps_file(tmp_path / "run.jsonl", 60_000, days=40, loss0=3.0)
    script = tmp_path / "ingest.py"
    script.write_text(KILLED_INGEST)
    rng = random.Random(13)
    outcomes = []
    for trial in range(6):
        start = time.time_ns()
        proc = subprocess.Popen([sys.executable, str(script), new, lake], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and not newer_file(lake / "train_steps", start):
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows = q(lake, "select count(*), count(distinct step), round(max(loss), 3) from train_steps")[0]
        assert rows in ((40_000, 40_000, 5.0), (60_000, 60_000, 3.0)), rows
        outcomes.append("killed" if proc.returncode == -signal.SIGKILL else "finished")
        assert leftovers(lake) == []  # the reader took the lock and cleaned up after the dead writer
        if rows[0] == 60_000:  # put the old version back for the next trial
            assert mhw("ingest", old, "--source-name", "run", "--lake", lake).returncode == 0
    assert "killed" in outcomes, "no trial killed the ingest; the test proved nothing"


KILLED_BUILD = """
import sys
from pipelines.build import build
print("start", flush=True)
build(sys.argv[1], sys.argv[2], full=True)
"""


@pytest.mark.slow  # one build timed, three killed at 20, 50 and 80 % of its time
def test_a_killed_build_leaves_nothing_the_next_build_keeps(tmp_path):
    """SIGKILL a full build part-way through (the kill points scale with this machine's speed: a
    fixed delay outlived the whole build on a fast CI machine); the next build keeps nothing from it."""
    lake, serving = tmp_path / "lake", tmp_path / "serving.duckdb"
    assert mhw("ingest", steps_file(tmp_path / "a.jsonl", 5000, days=5), "--lake", lake).returncode == 0
    build(str(lake), str(serving), full=True)
    script = tmp_path / "build.py"
    script.write_text(KILLED_BUILD)

    def start():
        proc = subprocess.Popen([sys.executable, str(script), lake, serving], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "start"
        return proc, time.monotonic()

    proc, t0 = start()
    assert proc.wait(300) == 0
    took = time.monotonic() - t0
    killed = 0
    for fraction in (0.2, 0.5, 0.8):
        proc, t0 = start()
        time.sleep(max(0.0, t0 + fraction * took - time.monotonic()))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
    assert killed, "no build was killed; the test proved nothing"
    build(str(lake), str(serving))
    assert leftovers(lake) == []
    cubes = lake / "cubes"
    assert [p for p in cubes.rglob("*") if p.name.endswith(".tmp")] == []
    assert connect(lake_root=str(lake), serving_path=str(serving)).execute(
        "select sum(n_steps) from train_health_daily where agg_level = 'model,date'").fetchall() == [(5000,)]


@pytest.mark.slow  # a writer process waiting on a reader
def test_a_reader_holds_the_lake_still_and_a_writer_waits(tmp_path):
    """``Lake.read_lock``: a writer that starts during a read commits after it, so the read sees one
    state; the lock is per process, so the writer is another process."""
    lake = tmp_path / "lake"
    assert mhw("ingest", latency_file(tmp_path / "a.jsonl", 1000), "--lake", lake).returncode == 0
    b = latency_file(tmp_path / "b.jsonl", 500, run="serve-2")
    with Lake(lake).read_lock():
        writer = subprocess.Popen([sys.executable, "-m", "warehouse.cli", "ingest", b, "--lake", lake], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        assert writer.poll() is None  # waiting for the lock
        assert q(lake, "select count(*) from latency_samples") == [(1000,)]
    assert writer.wait(60) == 0
    assert q(lake, "select count(*) from latency_samples") == [(1500,)]


@pytest.mark.parametrize("kind", ["write", "delete"])
def test_rollback_puts_back_what_a_killed_transaction_changed(tmp_path, kind):
    """The journal by itself: a transaction that raises halfway leaves the lake as it was."""
    import pyarrow as pa

    lake = Lake(tmp_path / "lake")
    rows = pa.table({"run_id": ["r"] * 3, "step": [0, 1, 2], "ts": [T0] * 3, "model": ["m"] * 3,
                     "hardware": ["h"] * 3})
    lake.write("train_steps", rows, "k1")
    before = sorted(p.read_bytes() for p in (tmp_path / "lake" / "train_steps").rglob("*.parquet"))
    with pytest.raises(RuntimeError):
        with lake.transaction():
            if kind == "write":
                lake.write("train_steps", rows.slice(0, 1), "k1")
                lake.write("train_steps", rows, "k2")
            else:
                for p in list((tmp_path / "lake" / "train_steps").rglob("*.parquet")):
                    lake.delete(str(p))
            raise RuntimeError("killed")
    after = sorted(p.read_bytes() for p in (tmp_path / "lake" / "train_steps").rglob("*.parquet"))
    assert after == before
    assert leftovers(tmp_path / "lake") == []


def test_a_snapshot_reuses_a_finished_one_s_folders_and_sees_only_the_lake_of_its_own_instant(tmp_path):
    """A finished snapshot's folders are pooled, holding no file, and the next snapshot takes them:
    it sees the files of its own instant (a replaced file's new rows, nothing of a partition gone
    since), and a snapshot's files stay whole while a writer replaces their paths. The pool keeps at
    most ``commit.POOL_KEEP`` trees, however many snapshots ran at once."""
    import pyarrow as pa

    from warehouse import commit

    root = tmp_path / "lake"
    lake = Lake(root)

    def rows(run, day, n):
        return pa.table({"run_id": [run] * n, "step": list(range(n)), "ts": [T0 + dt.timedelta(days=day)] * n,
                         "model": ["m"] * n, "hardware": ["h"] * n})

    def seen(snap):  # (run, date, rows) of every file under a snapshot's train_steps
        import pyarrow.parquet as pq
        return sorted((p.stem, p.parent.name, pq.read_metadata(p).num_rows)
                      for p in Path(snap, "train_steps").rglob("*.parquet"))

    lake.write("train_steps", rows("a", 0, 3), "a")
    lake.write("train_steps", rows("b", 1, 2), "b")
    pool = root / "_snapshots" / commit.POOL
    with lake.snapshot(["train_steps"]) as first:
        folder = Path(first, "train_steps", "model=m", "hardware=h", "date=2026-11-03")
        inode = folder.stat().st_ino
        assert seen(first) == [("a", "date=2026-11-02", 3), ("b", "date=2026-11-03", 2)]
        lake.write("train_steps", rows("a", 0, 5), "a")  # replaced while the snapshot is read
        assert seen(first) == [("a", "date=2026-11-02", 3), ("b", "date=2026-11-03", 2)]
    assert [p for p in pool.rglob("*") if not p.is_dir()] == [] and len(list(pool.iterdir())) == 1
    for p in list((root / "train_steps").rglob("b.parquet")):
        lake.delete(str(p))
    with lake.snapshot(["train_steps"]) as second:
        assert Path(second, "train_steps", "model=m", "hardware=h", "date=2026-11-03").stat().st_ino == inode
        assert seen(second) == [("a", "date=2026-11-02", 5)]
        assert connect(lake_root=second, serving_path="").execute(
            "select count(*), max(step) from train_steps").fetchall() == [(5, 4)]
    with lake.snapshot(["train_steps"]), lake.snapshot(["train_steps"]), lake.snapshot(["train_steps"]):
        assert list(pool.iterdir()) == []  # all three took a tree: the pooled one, and two new
    assert len(list(pool.iterdir())) == commit.POOL_KEEP
    assert leftovers(root) == []


def test_a_reingest_that_moves_rows_to_other_dates_leaves_no_empty_folders(tmp_path):
    lake = tmp_path / "lake"
    for start in (0, 5):
        f = steps_file(tmp_path / f"v{start}.jsonl", 500, days=3, start_day=start)
        assert mhw("ingest", f, "--source-name", "run", "--lake", lake).returncode == 0
    dates = sorted(p.name for p in (lake / "train_steps" / "model=m" / "hardware=h").iterdir())
    assert dates == ["date=2026-11-07", "date=2026-11-08", "date=2026-11-09"]
    tables = [d for d in lake.iterdir() if d.is_dir() and not d.name.startswith("_")]
    assert [str(d) for t in tables for d in t.rglob("*") if d.is_dir() and not any(d.iterdir())] == []
    assert q(lake, "select count(*) from train_steps") == [(500,)]


HOLDER = """
import sys, time
from warehouse import commit
with commit.locked(sys.argv[1], "exclusive"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow  # a lock holder stopped with SIGSTOP, three commands that must not wait for it forever
def test_a_stopped_lock_holder_is_named_instead_of_waited_for_forever(tmp_path):
    """A writer stopped (SIGSTOP) while it holds the lake lock would freeze every reader and writer,
    the diagnose that is to find it hung among them: they fail naming it (exit 75), and once it is
    killed the lake is whole and free again. A running holder is waited for."""
    lake = tmp_path / "lake"
    assert mhw("ingest", latency_file(tmp_path / "a.jsonl", 100), "--lake", lake).returncode == 0
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), lake], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**ENV, "MHW_LOCK_STOPPED_S": "1"}
        # running: a reader waits for it (and here gives up after MHW_LOCK_WAIT_S, naming it)
        r = mhw("query", "select count(*) from latency_samples", "--lake", lake,
                env={**env, "MHW_LOCK_WAIT_S": "2"}, timeout=60)
        assert r.returncode == 75 and f"pid {holder.pid} (state S)" in r.stderr and "Waited" in r.stderr, r.stderr
        os.kill(holder.pid, signal.SIGSTOP)
        for argv in (("query", "select count(*) from latency_samples"), ("diagnose", "--no-notify"),
                     ("ingest", latency_file(tmp_path / "b.jsonl", 50, run="serve-2"))):
            t0 = time.monotonic()
            r = mhw(*argv, "--lake", lake, env=env, timeout=60)
            assert r.returncode == 75, (argv, r.returncode, r.stderr[-500:])
            assert f"pid {holder.pid} (stopped)" in r.stderr and "holder.py" in r.stderr, r.stderr
            assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()
    assert mhw("ingest", tmp_path / "b.jsonl", "--lake", lake).returncode == 0
    assert q(lake, "select count(*) from latency_samples") == [(150,)]
