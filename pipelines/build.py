"""``mhw build``: run the SQL models of sql/cubes over the lake, incrementally, and publish the cubes.

    mhw build                                  # DuckDB, only the partitions that changed
    mhw build --full                           # recompute everything
    mhw build --engine spark                   # the same SQL on Spark, local[*]
    mhw build --engine spark --master spark://10.0.0.5:7077 --lake s3://bucket/lake
    spark-submit --master yarn pipelines/build.py --engine spark --lake s3://bucket/lake

Incremental: ``<cubes>/_manifest.json`` keeps, per raw lake partition (model, hardware, date), the
files it had (name, size, mtime) at the last build. A build lists the lake, and each model recomputes
only the partitions its inputs changed in, projected onto its own partition columns (a base model
the changed lake partitions, a daily model the changed dates); an unpartitioned model (the window
rollups) is recomputed whole, from the small daily model, whenever one of its inputs changed. A change
of any SQL file or of the sketch bounds makes the build full.

Outputs: every model lands as Parquet under ``<cubes>/<model>/date=<d>/part.parquet`` (one file per
date however fine the model's partitions: a date file whose lake partitions were only partly
recomputed keeps the other partitions' rows; all columns are inside the files), and the served ones
in the DuckDB serving file, which is rebuilt beside the live one and swapped in with ``os.replace``
(pipelines/serving.py). One build at a time per cube store (a lock file); models that do not read
each other run side by side (``--jobs``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import queue
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import alerts, changes, lakefiles, serving, sketch
from pipelines.engines import ENGINES, open_engine
from pipelines.lakefiles import PartitionKey
from pipelines.models import Model, definition_hash, load_models
from warehouse import audit, config
from warehouse.schemas import TABLES
from warehouse.writer import Lake

MANIFEST = "_manifest.json"
SCHEMA_FILE = "_schema.parquet"
BOUNDS = "sketch_bounds"
# Lake tables whose changes alone start no rebuild: the audit log changes with every command, this
# build's own entry among them, so a build over an otherwise unchanged lake would never be a no-op.
# Their cubes are recomputed with the next build that has other work (the audit trail lags by one).
PASSIVE = ("audit_log",)


@dataclass
class BuildResult:
    engine: str
    full: bool
    build_id: str
    rebuilt: dict[str, int] = field(default_factory=dict)  # model -> partitions recomputed
    rows: dict[str, int] = field(default_factory=dict)  # model -> rows written this build
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall seconds
    serving_path: str | None = None
    serving_mode: str | None = None  # fresh | patched | unchanged


def _project(key: PartitionKey, cols: tuple[str, ...], onto: tuple[str, ...]) -> PartitionKey:
    return tuple(key[cols.index(c)] for c in onto)


def _key_strings(table: pa.Table, cols: tuple[str, ...]) -> list[pa.Array]:
    arrays = []
    for c in cols:
        col = table.column(c)
        if col.null_count:
            raise ValueError(f"partition column {c} has nulls")
        arrays.append(pc.cast(col, pa.string()))
    return arrays


def _joined_keys(table: pa.Table, cols: tuple[str, ...]):
    strings = _key_strings(table, cols)
    return strings[0] if len(strings) == 1 else pc.binary_join_element_wise(*strings, "\x1f")


def partition_keys(table: pa.Table, cols: tuple[str, ...]) -> set[PartitionKey]:
    """The values of ``table``'s partition columns that occur in it (no rows are moved)."""
    if table.num_rows == 0:
        return set()
    return {tuple(k.split("\x1f")) for k in pc.unique(_joined_keys(table, cols)).to_pylist()}


def split_partitions(table: pa.Table, cols: tuple[str, ...]) -> dict[PartitionKey, pa.Table]:
    """The rows of ``table`` per value of its partition columns (one sort, no per-key scans)."""
    if table.num_rows == 0:
        return {}
    joined = _joined_keys(table, cols)
    enc = pc.dictionary_encode(joined).combine_chunks() if isinstance(joined, pa.ChunkedArray) \
        else pc.dictionary_encode(joined)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    ordered = table.combine_chunks().take(pa.array(order))  # one gather; each partition is then a slice
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    out = {}
    for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(order)]])):
        key = tuple(names[sorted_codes[s]].split("\x1f"))
        out[key] = ordered.slice(int(s), int(e - s))
    return out


class CubeStore:
    """``<cubes>/<model>/…`` Parquet outputs of the models, plus the manifest."""

    def __init__(self, where: Lake | str):
        self.location = Lake.of(where)  # the one handle: filesystem, root, URI, local or not
        self.uri, self.fs, self.root, self.local = (self.location.uri, self.location.fs, self.location.root,
                                                    self.location.local)

    def model_dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def partitions(self, model: Model) -> dict[PartitionKey, list[lakefiles.FileEntry]]:
        """The model's files by their folder's key (``model.stored_by`` values)."""
        return lakefiles.list_partitions(self.fs, self.model_dir(model.name), model.stored_by)

    def schema(self, model: Model) -> pa.Schema | None:
        try:
            with self.fs.open_input_file(f"{self.model_dir(model.name)}/{SCHEMA_FILE}") as f:
                return pq.read_schema(f)
        except (FileNotFoundError, OSError):
            return None

    def write(self, model: Model, result: pa.Table, targets: set[PartitionKey] | None) -> int:
        """Replace the rows of the ``targets`` partitions (all partitions when None) with ``result``'s
        rows of those partitions. Files hold one date each (``model.stored_by``); a date file whose
        partitions were only partly recomputed keeps its other partitions' rows."""
        d = self.model_dir(model.name)
        lakefiles.write_parquet(self.fs, f"{d}/{SCHEMA_FILE}", result.schema.empty_table(), self.local)
        if not model.partitions:
            lakefiles.write_parquet(self.fs, f"{d}/data.parquet", result, self.local)
            return result.num_rows
        target_keys = None if targets is None else pa.array(["\x1f".join(k) for k in targets], pa.string())
        if targets is not None:  # rows computed for partitions outside the targets are not this build's
            result = result.filter(pc.is_in(_joined_keys(result, model.partitions), target_keys))
        by_file = split_partitions(result, model.stored_by)
        existing = self.partitions(model)
        touched = set(by_file) if targets is None else {_project(k, model.partitions, model.stored_by) for k in targets}
        stale = set(existing) - set(by_file) if targets is None else set()

        def write_one(key: PartitionKey) -> None:
            folder = f"{d}/{lakefiles.key_dir(model.stored_by, key)}"
            rows = by_file.get(key)
            if targets is not None and key in existing:  # keep the rows of partitions not recomputed
                kept = self._read_files([f.path for f in existing[key]], result.schema)
                kept = kept.filter(pc.invert(pc.is_in(_joined_keys(kept, model.partitions), target_keys)))
                rows = kept if rows is None else pa.concat_tables([kept, rows])
            if rows is None or rows.num_rows == 0:
                lakefiles.delete_dir(self.fs, folder)  # the partition's raw rows are gone: so are its cube rows
                return
            for f in existing.get(key, []):
                if not f.path.endswith("/part.parquet"):
                    self.fs.delete_file(f.path)
            lakefiles.write_parquet(self.fs, f"{folder}/part.parquet", rows, self.local)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="mhw-write") as pool:  # Arrow frees the GIL
            list(pool.map(write_one, sorted(touched)))
        for key in stale:
            lakefiles.delete_dir(self.fs, f"{d}/{lakefiles.key_dir(model.stored_by, key)}")
        return result.num_rows

    def _read_files(self, files: list[str], schema: pa.Schema | None) -> pa.Table:
        return ds.dataset(files, filesystem=self.fs, format="parquet", schema=schema).to_table()

    def read(self, model: Model) -> pa.Table:
        files = [f.path for fs_ in self.partitions(model).values() for f in fs_]
        schema = self.schema(model)
        if not files:
            return schema.empty_table() if schema is not None else pa.table({})
        data = self._read_files(files, schema)
        return data.cast(schema) if schema is not None else data

    def manifest(self) -> dict:
        return lakefiles.read_json(self.fs, f"{self.root}/{MANIFEST}") or {}

    def remove_leftovers(self) -> int:
        """Delete the temp files of builds killed midway (``.<id>.tmp`` beside the files they were to
        replace). Only under the build lock: then no other build is writing any."""
        if not self.local or not os.path.isdir(self.root):
            return 0
        n = 0
        for parent, _, files in os.walk(self.root):
            for f in files:
                if f.startswith(".") and f.endswith(".tmp"):
                    os.unlink(os.path.join(parent, f))
                    n += 1
        return n

    def save_manifest(self, manifest: dict) -> None:
        lakefiles.write_text(self.fs, f"{self.root}/{MANIFEST}", json.dumps(manifest, indent=1), self.local)


def _bounds_version() -> str:
    return f"growth={sketch.GROWTH};b={sketch.B_MIN}..{sketch.B_MAX}"


def _counts(r: BuildResult) -> dict:
    return {"partitions": sum(r.rebuilt.values()), "rows": sum(r.rows.values()), "models": len(r.rebuilt),
            "full": r.full, "engine": r.engine, "serving": r.serving_mode, "build_id": r.build_id}


@audit.audited("build", counts=_counts)
def build(lake_root: Lake | str | None = None, serving_path: str | None = None, engine="duckdb",
          full: bool = False, master: str | None = None, conf: dict[str, str] | None = None,
          cubes_root: Lake | str | None = None, log=None, jobs: int | None = None,
          sql_dir: str | None = None) -> BuildResult:
    """Bring the cubes and the serving file up to date with the lake. Returns what was rebuilt.

    ``lake_root`` and ``cubes_root`` are handles (warehouse.writer.Lake) or paths/URIs (default: the
    config's lake, and ``cubes`` inside it). ``engine`` is "duckdb", "spark", or an engine already open
    (it is then left open, so one SparkSession can serve several builds). ``sql_dir`` replaces sql/ (a
    pinned copy of the models)."""
    settings = config.load()
    lake = Lake.of(lake_root or settings.lake_root)
    serving_path = serving_path or settings.serving_path
    store = CubeStore(cubes_root or lake.under("cubes"))
    say = log or (lambda *_: None)
    t_start = time.perf_counter()

    with _exclusive(store), _serving_lock(serving_path), contextlib.ExitStack() as reading:  # later builds wait
        store.remove_leftovers()
        return _build(lake, serving_path, engine, full, master, conf, store, say, jobs, t_start, sql_dir, reading)


@contextlib.contextmanager
def _exclusive(store: CubeStore):
    if not store.local:  # object stores have no locks: run one build per cube store (the scheduler's job)
        yield
        return
    os.makedirs(store.root, exist_ok=True)
    with open(f"{store.root}/_build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _serving_lock(serving_path: str):
    """One build at a time per serving file too (two cube stores may publish to one file): a build
    removes the temp files of killed builds beside it, which must not be a live build's."""
    os.makedirs(os.path.dirname(os.path.abspath(serving_path)), exist_ok=True)
    with open(f"{serving_path}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(lake: Lake, serving_path, engine, full, master, conf, store, say, jobs, t_start, sql_dir,
           reading: contextlib.ExitStack) -> BuildResult:
    models = load_models(Path(sql_dir)) if sql_dir else load_models()
    by_name = {m.name: m for m in models}
    definition = definition_hash(models, _bounds_version())
    old = store.manifest()
    full = bool(full or old.get("definition") != definition)
    own_engine = isinstance(engine, str)
    engine_name = engine if own_engine else engine.name
    result = BuildResult(engine=engine_name, full=full, build_id=uuid.uuid4().hex[:12])

    # 1. What changed in the lake since the last build, per raw partition (pipelines/changes.py). The
    # build reads a snapshot (hard links taken under the lake lock, warehouse/commit.py): an ingest
    # committing meanwhile replaces and deletes files the build listed without taking them from it.
    t = time.perf_counter()
    raw_tables = sorted({s for m in models for s in m.sources if s in TABLES})
    lake_path = reading.enter_context(lake.snapshot(raw_tables, [alerts.CHECKPOINT] if alerts.TABLE in raw_tables else []))
    listing = changes.Listing(lake, lake_path, raw_tables)
    listings = listing.partitions
    # every alert in one file, where the alerts' checkpoint holds exactly the files listed (pipelines/alerts.py)
    alerts_file = alerts.checkpoint_covering(lake.fs, lake_path, [f for files in listings[alerts.TABLE].values()
                                                                  for f in files]) if alerts.TABLE in listings else None
    recorded = old.get("sources", {})
    changed = {name: listing.changed(name, recorded.get(name)) for name in raw_tables}
    records = {name: listing.record(name) for name in raw_tables}
    if not any(v for name, v in changed.items() if name not in PASSIVE):
        for name in PASSIVE:  # kept as changed (the record keeps the old listing) for the next build
            if name in changed:
                changed[name], records[name] = set(), recorded.get(name, {})
    result.seconds["list"] = time.perf_counter() - t

    eng = open_engine(engine, master=master, conf=conf, filesystem=lake.engine_filesystem) \
        if own_engine else engine
    bounds = sketch.bounds_table()
    # The next serving file is written while the models run: each served model as soon as it is built.
    publisher = serving.Publisher(serving_path, models, store, full, result.build_id, old.get("build_id"))

    def run_model(m: Model, release) -> None:
        t = time.perf_counter()
        targets = None if full else _targets(m, by_name, changed)
        if targets is not None and not targets:
            changed[m.name] = set()
            release()
            return
        session = eng.session()  # its own temp views: models run side by side
        session.register_arrow(BOUNDS, bounds)
        _register_inputs(session, m, by_name, store, listings, lake_path, targets, alerts_file)
        try:
            out = session.query(m.sql)
        finally:
            release()  # the next model reading raw rows may start while this one writes
        result.seconds[f"{m.name}:query"] = time.perf_counter() - t
        result.rows[m.name] = store.write(m, out, targets)
        publisher.add(m, out, targets)
        written = partition_keys(out, m.partitions) if m.partitions else {()}
        changed[m.name] = written | (targets or set())
        result.rebuilt[m.name] = len(changed[m.name]) if m.partitions else 1
        result.seconds[m.name] = time.perf_counter() - t
        say(f"{m.name}: {result.rebuilt[m.name]} partition(s), {out.num_rows} rows "
            f"({result.seconds[m.name]:.2f}s)")

    try:
        # 2. Every model after the models it reads, over only what its inputs changed. Independent
        # models run side by side (`jobs`): Spark fills its executors with several small queries.
        if not jobs:  # DuckDB: one query already uses every core; Spark: keep the executors busy
            local = getattr(eng, "local_cores", None)
            jobs = 3 if engine_name == "duckdb" else max(2, local) if local else 4
        # In process, two scans of raw rows at once only fight over the same cores and memory
        # bandwidth (DuckDB parallelizes each one already): the models reading raw rows take turns,
        # biggest first, while the small rollups run beside them.
        raw_readers = {m.name for m in models if any(s in TABLES for s in m.sources)} \
            if engine_name == "duckdb" else set()
        _run_dag(models, run_model, jobs, _priority(models, listings), raw_readers)
    except BaseException:
        publisher.abort()
        raise
    finally:
        if own_engine:
            eng.close()
        reading.close()  # the snapshot goes as soon as no model reads raw rows

    # 3. Publish: the new serving file (already holding the served models) is completed and swapped in.
    t = time.perf_counter()
    result.serving_path = serving_path
    result.serving_mode = publisher.finish(info={
        "engine": engine_name, "full": full,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "lake": lake.uri})
    result.seconds["serve"] = time.perf_counter() - t
    if result.serving_mode == "unchanged":  # nothing was rebuilt: the live build stays current
        result.build_id = old["build_id"]

    store.save_manifest({"version": 1, "definition": definition, "build_id": result.build_id,
                         "engine": engine_name, "sources": records})
    result.seconds["total"] = time.perf_counter() - t_start
    return result


def _priority(models: list[Model], listings: dict) -> dict[str, tuple]:
    """Start order among ready models: models that others read before models nobody reads (their
    rollups then run beside the next scans instead of after the last one), and within each, the ones
    reading the most raw bytes first; then file order."""
    size = {t: sum(f.size for fs_ in parts.values() for f in fs_) for t, parts in listings.items()}
    read = {s for m in models for s in m.sources}
    return {m.name: (m.name not in read, -sum(size.get(s, 0) for s in m.sources)) for m in models}


def _run_dag(models: list[Model], run, jobs: int, priority: dict[str, tuple],
             one_at_a_time: set[str] = frozenset()) -> None:
    """Run ``run(model, release)`` for every model after the models it reads, ``jobs`` at a time,
    starting ready models by ``priority`` (lowest first). Of the ``one_at_a_time`` models, one holds
    the turn until it calls ``release()`` (after its query: its writes overlap the next one's query).
    A model is submitted only once it can run, so no worker sits waiting; the first failure stops new
    submissions and is raised once the running models finish."""
    names = {m.name for m in models}
    upstream = {m.name: {s for s in m.sources if s in names} for m in models}
    order = {m.name: i for i, m in enumerate(models)}
    by_name = {m.name: m for m in models}
    events: queue.SimpleQueue = queue.SimpleQueue()
    done: set[str] = set()
    waiting, running, turn, failure = set(names), 0, None, None

    def task(name: str) -> None:
        try:
            run(by_name[name], lambda: events.put(("released", name, None)))
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling thread
            events.put(("failed", name, e))
        else:
            events.put(("done", name, None))

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mhw-build") as pool:
        while running or (waiting and failure is None):
            if failure is None:
                ready = sorted((n for n in waiting if upstream[n] <= done), key=lambda n: (priority[n], order[n]))
                for n in ready:
                    if running >= jobs:
                        break
                    if n in one_at_a_time:
                        if turn is not None:
                            continue
                        turn = n
                    waiting.discard(n)
                    running += 1
                    pool.submit(task, n)
                if not running:
                    raise RuntimeError(f"models wait on each other: {sorted(waiting)}")
            kind, name, error = events.get()
            if turn == name:  # released after its query, or ended before releasing
                turn = None
            if kind == "done":
                running -= 1
                done.add(name)
            elif kind == "failed":
                running -= 1
                failure = failure or error
    if failure is not None:
        raise failure


def _targets(m: Model, by_name: dict[str, Model], changed: dict[str, set]) -> set[PartitionKey] | None:
    """The partitions of ``m`` to recompute: its inputs' changed partitions projected onto its own
    partition columns; {()} for an unpartitioned model with a changed input; None = all."""
    targets: set[PartitionKey] = set()
    for s in m.sources:
        if s == BOUNDS:
            continue
        ch = changed.get(s, set())
        if not ch:
            continue
        if not m.partitions:
            return {()}
        s_cols = TABLES[s].partition_by if s in TABLES else by_name[s].partitions
        if not set(m.partitions) <= set(s_cols):
            return None  # cannot tell which of m's partitions an input change touches
        targets |= {_project(k, s_cols, m.partitions) for k in ch}
    return targets


def _register_inputs(eng, m: Model, by_name: dict[str, Model], store: CubeStore, listings: dict,
                     lake_path: str, targets: set[PartitionKey] | None, alerts_file: str | None = None) -> None:
    """Views of ``m``'s sources: the lake tables' files (of the target partitions), the cubes'; a model
    that reads every alert reads ``alerts_file`` (the alerts' checkpoint, when it holds just those files)."""
    for s in m.sources:
        if s == BOUNDS:
            continue
        if s in TABLES:
            cols, parts, schema = TABLES[s].partition_by, listings[s], TABLES[s].schema
            base_dir = f"{lake_path}/{s}"
        else:
            src = by_name[s]
            cols, parts, base_dir = src.stored_by, store.partitions(src), store.model_dir(s)
            schema = store.schema(src)
            if schema is None:
                raise RuntimeError(f"{m.name} reads {s}, which has never been built")
        common = tuple(c for c in m.partitions if c in cols)
        if targets is not None and common:  # the files that can hold rows of the target partitions
            wanted = {_project(t, m.partitions, common) for t in targets}
            parts = {k: v for k, v in parts.items() if _project(k, cols, common) in wanted}
        if s == alerts.TABLE and alerts_file and parts is listings[s]:  # the partition columns are in the file
            eng.register_files(s, [alerts_file], schema)
            continue
        files = [f.path for k in sorted(parts) for f in parts[k]]
        eng.register_files(s, files, schema, cols if s in TABLES else (), base_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="duckdb", help="engine that runs the SQL")
    p.add_argument("--full", action="store_true", help="recompute every partition")
    p.add_argument("--master", help="Spark master URL (default local[*], or spark-submit's)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--serving", help="serving DuckDB file (default from config)")
    p.add_argument("--cubes", help="where cube Parquet lands (default <lake>/cubes)")
    p.add_argument("--jobs", type=int, help="models run side by side (default: 3 on DuckDB, 4 on a Spark cluster, its cores on local Spark)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    conf = dict(kv.split("=", 1) for kv in args.conf)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    r = build(args.lake, args.serving, engine=args.engine, full=args.full, master=args.master,
              conf=conf, cubes_root=args.cubes, log=log, jobs=args.jobs)
    kind = "full" if r.full else "incremental"
    print(f"mhw build: {kind} build {r.build_id} on {r.engine} in {r.seconds['total']:.2f}s; "
          f"{sum(r.rebuilt.values())} partition(s) recomputed across {len(r.rebuilt)} model(s); "
          f"serving file {r.serving_mode}: {r.serving_path}")
    return 0


if __name__ == "__main__":  # spark-submit pipelines/build.py --engine spark … (package installed)
    ns = argparse.ArgumentParser(prog="build")
    add_arguments(ns)
    sys.exit(run(ns.parse_args()))
