"""The real-run benchmark of the health diagnostics: precision and recall per rule family on real
trainings of this project's models and on labeled public logs. The yardstick of the rules.

    .venv/bin/python bench/bench_realruns.py --train             # train what the cache lacks, then score
    .venv/bin/python bench/bench_realruns.py                     # score the cached runs only
    .venv/bin/python bench/bench_realruns.py --train --split tuning --cache /work/realruns-cache
    .venv/bin/python bench/bench_realruns.py --json figures.json --export-fixtures

Two parts, each labeled in the repo (bench/realruns/):

1. ``matrix.yaml``: real CPU trainings through ``mhw train`` (configs gpt2-tiny and bert-tiny-cls), the
   faults made only by ordinary mistakes (an LR far too high, an LR in the wrong units, a tiny data set,
   a slow streaming source, fp16 without clipping, a min_lr above the LR, a resume, a SIGKILL, batch
   size 1) beside healthy twins. ``--train`` runs what the cache lacks (a run's folder is keyed by a
   hash of its spec), one run at a time, into ``<cache>/lake`` (``--lake``), and appends one JSON
   line per finished run to ``<cache>/runs.jsonl``.
2. ``public.yaml``: the public logs in ``../shared/data/real/`` (their MANIFEST.md), ingested with
   ``mhw ingest`` into ``<cache>/public-lake``.

Then ``mhw diagnose --full`` (DuckDB, the rules and conf/diagnostics.yaml of this checkout) on each
lake; a family (labels.yaml maps families to rule names; unknown names are fine) is flagged on a run
when any alert of any of its rules exists for it. The objective criteria of labels.yaml are computed
on the matrix telemetry and every run whose measured criteria disagree with its label is printed.
Scores per family: precision = flagged runs labeled with it / flagged runs; recall = labeled runs
flagged / labeled runs; a run's ``tolerated`` families count neither way. Separately for the tuning
split (thresholds may be tuned on it), the held-out split (the reported result) and all; plus every
warning/critical alert on a healthy run, and every missed or false family with its run and messages.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent / "realruns"
MATRIX, LABELS, PUBLIC = HERE / "matrix.yaml", HERE / "labels.yaml", HERE / "public.yaml"
FIXTURES = REPO / "tests" / "fixtures" / "realruns"
PUBLIC_DATA = REPO.parent / "shared" / "data" / "real"
SPLITS = ("tuning", "held-out", "fresh", "fresh2")  # fresh, fresh2: held-out sets trained after the one before was read
SPEC_KEYS = ("config", "overrides", "source", "kill_at_step", "resume")  # what a run computes


# --- the matrix spec --------------------------------------------------------------------------------

def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def matrix_runs(path: Path = MATRIX) -> list[dict]:
    runs = load_yaml(path)["runs"]
    names = [r["name"] for r in runs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{path}: duplicate run names {sorted(dup)}")
    for r in runs:
        if r.get("split") not in SPLITS:
            raise ValueError(f"{path}: run {r['name']}: split must be one of {SPLITS}")
    return runs


def spec_hash(run: dict) -> str:
    spec = {k: run.get(k) for k in SPEC_KEYS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_id_of(run: dict) -> str:
    return f"rr-{run['name']}-{spec_hash(run)[:6]}"


# --- streaming sources ------------------------------------------------------------------------------

def write_corpus(cache: Path, corpus: str) -> tuple[Path, Path]:
    """The default data sets of model/data.py as JSONL files (train, validation), as a user exports a
    corpus to stream it. Deterministic: the same files on every machine."""
    from model import data

    folder = cache / "data"
    train, val = folder / f"{corpus}-train.jsonl", folder / f"{corpus}-val.jsonl"
    if train.exists() and val.exists():
        return train, val
    folder.mkdir(parents=True, exist_ok=True)
    if corpus == "arithmetic":  # the in-memory default's sizes: 20,000 lines, 10 % held out
        rows_train = [{"text": t} for t in data.arithmetic_texts(18000, 3, random.Random(1337))]
        rows_val = [{"text": t} for t in data.arithmetic_texts(2000, 3, random.Random(1338))]
    elif corpus == "sentiment":  # bert-tiny-cls's 8,000 examples, 10 % held out
        texts, labels = data.sentiment_examples(8000, random.Random(1337))
        rows = [{"text": t, "label": y} for t, y in zip(texts, labels)]
        rows_train, rows_val = rows[800:], rows[:800]
    else:
        raise ValueError(f"unknown corpus {corpus!r} (arithmetic | sentiment)")
    for path, rows in ((train, rows_train), (val, rows_val)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return train, val


def produce(src: str, fifo: str, bytes_per_s: float | None = None, burst_bytes: int | None = None,
            pause_s: float = 0.0) -> None:
    """Feed ``src`` (over and over) into the named pipe ``fifo`` at a limited rate, as a slow network
    mount delivers a file: a steady ``bytes_per_s``, or ``burst_bytes`` at full speed then ``pause_s``
    of nothing. Ends when the reader closes the pipe."""
    data = Path(src).read_bytes()
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        out = b""
        while len(out) < n:
            piece = data[pos: pos + n - len(out)]
            out += piece
            pos = (pos + len(piece)) % len(data)
        return out

    with open(fifo, "wb", buffering=0) as f:  # blocks until the trainer opens its end
        try:
            if bytes_per_s:
                chunk = max(1, int(bytes_per_s / 50))  # 50 writes a second
                t0, sent = time.monotonic(), 0
                while True:
                    f.write(take(chunk))
                    sent += chunk
                    delay = t0 + sent / bytes_per_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            else:
                while True:
                    f.write(take(int(burst_bytes)))
                    time.sleep(pause_s)
        except BrokenPipeError:
            return


# --- training the matrix ----------------------------------------------------------------------------

def _flag(key: str, value) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    elif value is None:
        value = "null"
    return f"--{key}={value}"


def lake_records(lake: str, sql: str) -> list[dict]:
    from warehouse.query import connect

    con = connect(lake_root=lake, serving_path="")
    try:
        return con.sql(sql).arrow().read_all().to_pylist()
    except Exception as e:  # a lake without the table yet
        if "No files found" in str(e) or "does not exist" in str(e):
            return []
        raise
    finally:
        con.close()


def train_run(run: dict, cache: Path, lake: str, runs_log: Path, log=print) -> dict:
    """Train one matrix run unless its folder already holds its result. Returns the result record."""
    folder = cache / "runs" / f"{run['name']}-{spec_hash(run)}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if folder.exists():  # an attempt that did not finish: start it over
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    run_id, out = run_id_of(run), folder / "out"
    base = [sys.executable, "-m", "warehouse.cli", "train", "--config", run["config"], "--lake", lake,
            f"--trainer.out_dir={out}", "--trainer.log_interval=10"]
    flags = [_flag(k, v) for k, v in (run.get("overrides") or {}).items()]
    producer = None
    src = run.get("source")
    if src:
        train_file, val_file = write_corpus(cache, src["corpus"])
        path = train_file
        if src["via"] == "pipe":
            path = folder / "source.pipe"
            os.mkfifo(path)
            pcmd = [sys.executable, str(Path(__file__).resolve()), "produce", str(train_file), str(path)]
            pcmd += ["--bytes-per-s", str(src["bytes_per_s"])] if src.get("bytes_per_s") else \
                ["--burst-bytes", str(src["burst_bytes"]), "--pause-s", str(src["pause_s"])]
            producer = subprocess.Popen(pcmd, stdout=subprocess.DEVNULL, stderr=open(folder / "producer.log", "w"))
        elif src["via"] != "file":
            raise ValueError(f"run {run['name']}: source.via must be file or pipe")
        flags += ["--data.name=jsonl", "--data.streaming=true", f"--data.path={path}", f"--data.val_path={val_file}"]
    # one torch thread: the matrix shares the machine, and runs must not fight each other for cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONUNBUFFERED": "1"}  # the console is read line by line (kill_at_step)
    t0 = time.time()
    killed = False
    with open(folder / "train.log", "w") as console:
        p = subprocess.Popen(base + ["--run-id", run_id] + flags, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            console.write(line)
            m = re.match(r"step (\d+): loss", line)
            if run.get("kill_at_step") is not None and m and int(m[1]) >= run["kill_at_step"] and not killed:
                os.kill(p.pid, signal.SIGKILL)  # kill -9: no finally block, no last flush, no runs row update
                killed = True
        rc = p.wait()
        if producer is not None:
            producer.kill()
            producer.wait()
        if run.get("resume") and rc == 0:
            more = [_flag(k, v) for k, v in run["resume"].items()]
            console.write(f"--- resume: {' '.join(more)}\n")
            console.flush()
            rc = subprocess.run(base + ["--resume", str(out)] + flags + more, cwd=REPO, env=env, stdout=console,
                                stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    row = lake_records(lake, f"select status, steps, final_loss from runs where run_id = '{run_id}'")
    result = {"name": run["name"], "run_id": run_id, "spec_hash": spec_hash(run), "split": run["split"],
              "cause": run.get("cause"), "config": run["config"],
              "overrides": run.get("overrides") or {}, "source": src, "kill_at_step": run.get("kill_at_step"),
              "resume": run.get("resume"), "rc": rc, "killed": killed, "wall_s": round(wall, 1),
              "status": row[0]["status"] if row else None, "steps": row[0]["steps"] if row else None,
              "final_loss": row[0]["final_loss"] if row else None, "lake": lake,
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if rc != 0 and not killed:
        log(f"  {run['name']}: mhw train exited {rc}; see {folder / 'train.log'}")
    done.write_text(json.dumps(result, indent=1, default=str))
    with open(runs_log, "a") as f:
        f.write(json.dumps(result, default=str) + "\n")
    return result


def train_matrix(runs: list[dict], cache: Path, lake: str, runs_log: Path, log=print) -> list[dict]:
    order = [r for s in SPLITS for r in runs if r["split"] == s]  # tuning first: the rules need it first
    results = []
    for i, run in enumerate(order, 1):
        cached = (cache / "runs" / f"{run['name']}-{spec_hash(run)}" / "result.json").exists()
        t = time.time()
        res = train_run(run, cache, lake, runs_log, log)
        results.append(res)
        log(f"[{i}/{len(order)}] {run['name']} ({run['split']}): {res['status']}, {res['steps']} steps, "
            f"final loss {res['final_loss']}" + (" (cached)" if cached else f", {time.time() - t:.0f} s; "
                                                 f"load {os.getloadavg()[0]:.1f}"))
    return results


# --- the objective criteria (labels.yaml) -----------------------------------------------------------

def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _rolling_medians(values: list[float], w: int) -> list[float]:
    return [statistics.median(values[i: i + w]) for i in range(0, max(1, len(values) - w + 1))]


def criteria(steps: list[dict], val: list[tuple[int, float]], params: dict, twin_val: list | None = None,
             fp16: bool = False, warmup_steps: int | None = None,
             twin_steps: list | None = None, run_row: dict | None = None) -> dict[str, tuple[bool, str]]:
    """Each family's criterion measured on one run: ``{family: (met, what was measured)}``.

    ``steps``: train_steps rows in step order; ``val``: (step, validation loss) in step order;
    ``twin_val``, ``twin_steps``: the healthy twin's validation losses and steps; ``warmup_steps``: from the run's config where
    it has one; ``run_row``: its runs row. Nothing here reads an alert."""
    P, out = params, {}
    logs = [r for r in steps if r.get("loss") is not None]
    finite = [(r["step"], r["loss"]) for r in logs if math.isfinite(r["loss"])]
    first = finite[0][1] if finite else None

    bad = [r["step"] for r in logs if not math.isfinite(r["loss"])]
    out["divergence"] = (bool(bad), f"{len(bad)} non-finite losses, first at step {bad[0]}" if bad
                         else f"{len(logs)} logged losses, all finite")

    p = P["loss_spike"]
    spikes = []
    for i in range(p["min_prev"], len(finite)):
        prev = [v for _, v in finite[max(0, i - p["window"]): i]]
        med = statistics.median(prev)
        st, v = finite[i]
        if v > p["ratio"] * med and v > p["over_max"] * max(prev) and v - med >= p["min_rise_of_first"] * abs(first):
            spikes.append((st, v, med))
    top = max(spikes, key=lambda x: x[1] / x[2] if x[2] else math.inf) if spikes else None
    out["loss_spike"] = (bool(spikes), f"{len(spikes)} spikes; largest {top[1]:.4g} at step {top[0]} vs median "
                                       f"{top[2]:.4g}" if top else "no logged loss above 2x its recent median")

    p = P["exploding_gradients"]
    gn = [(r["step"], r.get("grad_norm"), r["loss"]) for r in logs if r.get("grad_norm") is not None]
    finite_gn = [(st, g, lo) for st, g, lo in gn if math.isfinite(g)]
    skip = min(p["skip_logs"], len(finite_gn) // 5)
    head = [g for _, g, _ in finite_gn[skip: skip + max(3, int(p["head_frac"] * len(finite_gn)))]]
    met, what = False, "no grad norm logged" if not gn else ""
    if head:
        base = statistics.median(head)
        run, best, lowest, start, recent = 0, 0, math.inf, None, []
        for st, g, lo in finite_gn:
            if math.isfinite(lo):
                recent = (recent + [lo])[-p["smooth"]:]
            level = statistics.median(recent) if recent else math.inf  # the loss, smoothed over batch noise
            undone = lowest < math.inf and level - lowest > p["undo"] * (start - lowest)
            hot = g > p["ratio"] * base and undone
            run = run + 1 if hot else 0
            best = max(best, run)
            if len(recent) == p["smooth"]:
                start = level if start is None else start
                lowest = min(lowest, level)
        met = best >= p["sustain"]
        what = (f"grad norm head median {base:.3g}, max {max(g for _, g, _ in finite_gn):.3g}; longest run of "
                f"logs > {p['ratio']:g}x it while the loss undoes > {p['undo']:.0%} of its progress: {best}")
    nonfinite_gn = [st for st, g, lo in gn if not math.isfinite(g)]
    if nonfinite_gn and not fp16:
        what += f"; {len(nonfinite_gn)} non-finite grad norms"
        met = met or len(nonfinite_gn) >= p["sustain"]
    out["exploding_gradients"] = (met, what)

    p = P["vanishing_gradients"]
    small = [g for _, g, _ in finite_gn if abs(g) < p["below"]]
    share = len(small) / len(finite_gn) if finite_gn else 0.0
    out["vanishing_gradients"] = (bool(finite_gn) and share >= p["share"],
                                  f"{share:.0%} of {len(finite_gn)} grad norms below {p['below']:g}")

    p = P["underfitting"]
    parts, met = [], False
    if finite:
        w = min(p["smooth"], len(finite))
        meds = _rolling_medians([v for _, v in finite], w)
        never = min(meds) >= p["never_below"] * meds[0]
        met |= never
        parts.append(f"lowest {w}-log median loss {min(meds):.4g} = "
                     + (f"{min(meds) / meds[0]:.3f}x the first" if meds[0] else "the first (0)"))
    if val and twin_val:
        st, v = val[-1]
        ref = [tv for ts, tv in twin_val if ts <= st]
        mine = [lo for s_, lo in finite if s_ <= st][-p["smooth"]:]
        theirs = [r["loss"] for r in (twin_steps or []) if r["step"] <= st and _finite(r.get("loss"))][-p["smooth"]:]
        if ref:
            ratio = v / ref[-1]
            # stuck, not memorizing: its training loss is no lower than the twin's either
            not_lower = not (mine and theirs) or statistics.median(mine) >= statistics.median(theirs)
            met |= ratio > p["twin_ratio"] and not_lower
            parts.append(f"last validation {v:.4g} at step {st} = {ratio:.2f}x the twin's {ref[-1]:.4g}"
                         + (f", training loss {statistics.median(mine):.4g} vs the twin's {statistics.median(theirs):.4g}"
                            if mine and theirs else ""))
    out["underfitting"] = (met, "; ".join(parts) or "no loss logged")

    p = P["plateau"]
    met, what = False, f"fewer than {p['min_logs']} logged losses"
    if len(finite) >= p["min_logs"]:
        tail = [v for _, v in finite][-max(p["min_logs"], int(p["tail_frac"] * len(finite))):]
        third = max(1, len(tail) // 3)
        before, after = statistics.median(tail[:third]), statistics.median(tail[-third:])
        met = before - after < p["min_gain"] * abs(before)
        what = (f"median loss {before:.4g} -> {after:.4g} over the last {len(tail)} logs "
                f"({(before - after) / abs(before):.2%} better)" if before else f"median loss {before:.4g} -> {after:.4g}")
    out["plateau"] = (met, what)

    p = P["overfitting"]
    met, what = False, "fewer than 2 validation losses"
    fval = [(st, v) for st, v in val if math.isfinite(v)]
    if len(fval) >= 2:
        m_step, m_val = min(fval, key=lambda x: x[1])
        last = fval[-1][1]
        worse = last > p["ratio"] * m_val and last - m_val >= p["min_delta"]
        at = [v for st, v in finite if st <= m_step][-p["tail"]:] or [v for _, v in finite][: p["tail"]]
        end = [v for _, v in finite][-p["tail"]:]
        falling = bool(at and end) and statistics.mean(end) < statistics.mean(at)
        met = worse and falling
        what = (f"validation min {m_val:.4g} at step {m_step}, last {last:.4g} ({last / m_val:.2f}x); train loss "
                f"{statistics.mean(at):.4g} then -> {statistics.mean(end):.4g}" if at and end else
                f"validation min {m_val:.4g} at step {m_step}, last {last:.4g}; no train loss")
    out["overfitting"] = (met, what)

    p = P["lr_schedule"]
    lrs = [(r["step"], r["lr"]) for r in steps if r.get("lr") is not None]
    met, what = False, "no LR logged"
    if lrs:
        bad_lr = [st for st, v in lrs if not math.isfinite(v) or v < 0]
        if warmup_steps is not None:  # the run's own config says where warmup ends
            start = next((i for i, (st, _) in enumerate(lrs) if st >= warmup_steps), len(lrs))
            where = f"after its {warmup_steps} warmup steps"
        else:  # a log without its config: warmup is over once the LR has decreased
            start = next((i for i in range(1, len(lrs)) if lrs[i][1] < lrs[i - 1][1]), len(lrs))
            where = "after its first decrease" if start < len(lrs) else "(it never decreases)"
        low, worst = math.inf, (1.0, None)
        for st, v in lrs[max(0, start - 1):]:
            if math.isfinite(v) and v > 0:
                if low < math.inf and v / low > worst[0]:
                    worst = (v / low, st)
                low = min(low, v)
        met = bool(bad_lr) or worst[0] > p["ratio"]
        what = (f"largest LR rise over the lowest LR before it, {where}: {worst[0]:.3g}x"
                + (f" at step {worst[1]}" if worst[1] is not None else "") + (f"; {len(bad_lr)} NaN/negative" if bad_lr else ""))
    out["lr_schedule"] = (met, what)

    p = P["data_stall"]
    pairs = [(r["data_time_ms"], r["step_time_ms"]) for r in steps
             if _finite(r.get("data_time_ms")) and _finite(r.get("step_time_ms"))]
    total = sum(s for _, s in pairs)
    share = sum(d for d, _ in pairs) / total if total else None
    out["data_stall"] = (share is not None and share > p["share"],
                         f"data wait {share:.1%} of step time" if share is not None else "no data time logged")

    p = P["throughput"]
    tps = [r["tokens_per_s"] for r in steps if _finite(r.get("tokens_per_s")) and r["tokens_per_s"] > 0]
    met, what = False, "fewer than 20 tokens/s logs"
    if len(tps) >= 20:
        ref = statistics.median(tps[: len(tps) // 2])
        w = max(10, int(p["window_frac"] * len(tps)))
        low = min(_rolling_medians(tps, w))
        met = low < p["ratio"] * ref
        what = f"lowest {w}-log median tokens/s {low:.4g} = {low / ref:.2f}x the first half's {ref:.4g}"
    out["throughput"] = (met, what)

    p = P["gpu"]
    util = [r["gpu_util"] for r in steps if _finite(r.get("gpu_util"))]
    mem = [r["gpu_mem_gb"] / r["gpu_mem_total_gb"] for r in steps
           if _finite(r.get("gpu_mem_gb")) and _finite(r.get("gpu_mem_total_gb")) and r["gpu_mem_total_gb"] > 0]
    met = bool(util) and statistics.median(util) < p["util_below"] or bool(mem) and max(mem) > p["mem_above"]
    out["gpu"] = (met, f"median GPU util {statistics.median(util):.0f} %" if util else "no GPU utilization logged")

    row = run_row or {}
    if row.get("source") != "trainer":
        out["lost"] = (False, f"an import (source {row.get('source')}): no process was watched")
    else:  # scored after its training process exited: a run still 'running' never got its ending from its
        # trainer ('lost': the diagnose of the scored copy marked it so, from its heartbeats)
        out["lost"] = (row.get("status") in ("running", "lost"),
                       f"runs row status {row.get('status')} after its process exited")
    return out


# --- reading the lakes -------------------------------------------------------------------------------

STEP_COLUMNS = ("run_id", "step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_ms", "data_time_ms",
                "gpu_util", "gpu_mem_gb", "gpu_mem_total_gb", "precision")


def telemetry(lake: str, run_ids: list[str]) -> tuple[dict, dict, dict]:
    """(steps, validation losses, runs rows) per run id. Validation: suite 'validation' where the run has
    it, else the suite with the most loss values (importers name theirs)."""
    ids = ", ".join(f"'{r}'" for r in run_ids) or "''"
    cols = lake_columns(lake, "train_steps")
    sel = ", ".join(c if c in cols else f"null as {c}" for c in STEP_COLUMNS)
    steps: dict[str, list] = {r: [] for r in run_ids}
    for row in lake_records(lake, f"select {sel} from train_steps where run_id in ({ids}) order by run_id, step"):
        steps[row["run_id"]].append(row)
    val: dict[str, dict] = {r: {} for r in run_ids}
    for row in lake_records(lake, f"select run_id, suite, checkpoint_step as step, value from eval_results where "
                                  f"run_id in ({ids}) and metric = 'loss' and checkpoint_step is not null "
                                  f"order by run_id, suite, checkpoint_step"):
        val[row["run_id"]].setdefault(row["suite"], []).append((row["step"], row["value"]))
    chosen = {}
    for r, suites in val.items():
        name = "validation" if "validation" in suites else max(suites, key=lambda k: len(suites[k]), default=None)
        chosen[r] = suites.get(name, []) if name else []
    runs = {row["run_id"]: row for row in lake_records(lake, f"select * from runs where run_id in ({ids})")}
    return steps, chosen, runs


def lake_columns(lake: str, table: str) -> set[str]:
    from warehouse.query import connect

    con = connect(lake_root=lake, serving_path="")
    try:
        return {d[0] for d in con.execute(f"select * from {table} limit 0").description}
    except Exception:
        return set()
    finally:
        con.close()


def fresh_copy(lake: str, dest: Path) -> str:
    """A copy of a lake without its alerts and diagnose state, so scoring runs a full diagnose and
    never writes into a lake others read."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(lake, dest, ignore=shutil.ignore_patterns("alerts", "_diagnose", "_tmp", "cubes"))
    return str(dest)


# --- the public logs ---------------------------------------------------------------------------------

def ingest_public(public: list[dict], lake: str, data_root: Path, log=print) -> dict[str, str]:
    """``mhw ingest`` each public run (its files under one run id) into ``lake``, through the CLI's
    own entry point. Returns {run id: 'ok' | why not}."""
    import contextlib
    import io

    from warehouse.importers import FORMATS
    from warehouse import cli

    status = {}
    for r in public:
        if r["format"] not in FORMATS:
            status[r["id"]] = f"not ingested: no {r['format']} importer in this checkout"
            continue
        paths = [str(data_root / f) for f in r["files"]]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            status[r["id"]] = f"not ingested: missing {missing}"
            continue
        argv = ["ingest", *paths, "--format", r["format"], "--lake", lake, "--run-id", r["id"]]
        for key in ("model", "hardware", "precision"):
            if r.get(key):
                argv += [f"--{key}", r[key]]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
        status[r["id"]] = "ok" if rc == 0 else f"mhw ingest exited {rc}: {buf.getvalue().strip()[-300:]}"
    return status


# --- scoring -------------------------------------------------------------------------------------------

def flagged_families(alerts: list[dict], family_rules: dict[str, list[str]]) -> dict[str, dict[str, list[dict]]]:
    """{run id: {family: [its alerts]}} for every run with an alert of a family's rule."""
    rule_family = {rule: fam for fam, rules in family_rules.items() for rule in rules}
    out: dict[str, dict[str, list]] = {}
    for a in alerts:
        fam = rule_family.get(a["rule"])
        if fam and a.get("run_id"):
            out.setdefault(a["run_id"], {}).setdefault(fam, []).append(a)
    return out


def score(labeled: list[dict], flags: dict, families: list[str]) -> dict:
    """labeled: [{run_id, name, split, families, tolerated}]. Per split (and 'all'), per family: tp, fp,
    fn, precision, recall; plus the misses and false flags with their runs and messages."""
    out = {}
    for split in (*SPLITS, "all"):
        runs = [r for r in labeled if split == "all" or r["split"] == split]
        fams = {}
        for fam in families:
            tp = fp = fn = 0
            for r in runs:
                if fam in r["tolerated"]:
                    continue
                hit, want = fam in flags.get(r["run_id"], {}), fam in r["families"]
                tp += hit and want
                fp += hit and not want
                fn += want and not hit
            fams[fam] = {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else None,
                         "recall": tp / (tp + fn) if tp + fn else None}
        out[split] = {"runs": len(runs), "families": fams}
    errors = []
    for r in labeled:
        got = flags.get(r["run_id"], {})
        for fam in sorted(set(got) | set(r["families"])):
            if fam in r["tolerated"] or (fam in got) == (fam in r["families"]):
                continue
            kind = "false" if fam in got else "missed"
            msgs = [f"{a['rule']} [{a['severity']}] {a['message']}" for a in got.get(fam, [])]
            errors.append({"kind": kind, "family": fam, "run": r["name"], "split": r["split"], "alerts": msgs})
    out["errors"] = errors
    return out


def healthy_alarms(labeled: list[dict], alerts: list[dict]) -> list[dict]:
    """Warning/critical alerts (any rule) on runs labeled healthy (no family but informational ones)."""
    healthy = {r["run_id"]: r for r in labeled if not set(r["families"]) - set(INFORMATIONAL)}
    return [{"run": healthy[a["run_id"]]["name"], "split": healthy[a["run_id"]]["split"], "rule": a["rule"],
             "severity": a["severity"], "message": a["message"],
             "tolerated": a["rule"] in {x for f in healthy[a["run_id"]]["tolerated"] for x in FAMILY_RULES.get(f, [])}}
            for a in alerts if a.get("run_id") in healthy and a["severity"] in ("warning", "critical")]


FAMILY_RULES: dict[str, list[str]] = {}
INFORMATIONAL = ("plateau",)  # families a healthy run may show (a converged or killed run ends flat)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def table(result: dict, title: str) -> str:
    fams = list(result["all"]["families"])
    lines = [f"{title}", "", "| family | " + " | ".join(f"{s} P | {s} R" for s in (*SPLITS, "all")) + " | tp/fp/fn (all) |",
             "|---|" + "---:|" * (2 * (len(SPLITS) + 1)) + "---|"]
    for fam in fams:
        cells = []
        for s in (*SPLITS, "all"):
            f = result[s]["families"][fam]
            cells += [_fmt(f["precision"]), _fmt(f["recall"])]
        a = result["all"]["families"][fam]
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {a['tp']}/{a['fp']}/{a['fn']} |")
    lines.append("\nruns: " + ", ".join(f"{s} {result[s]['runs']}" for s in (*SPLITS, "all")))
    return "\n".join(lines)


def check_labels(labeled: list[dict], measured: dict[str, dict]) -> list[str]:
    """Runs whose measured criteria disagree with their labels (tolerated families aside)."""
    out = []
    for r in labeled:
        m = measured.get(r["run_id"])
        if m is None:
            continue
        met = {f for f, (ok, _) in m.items() if ok} - set(r["tolerated"])
        want = set(r["families"]) - set(r["tolerated"])
        if met != want:
            extra, lack = sorted(met - want), sorted(want - met)
            detail = "; ".join(f"{f}: {m[f][1]}" for f in extra + lack)
            out.append(f"{r['name']}: criteria say {sorted(met)}, labeled {sorted(want)}"
                       + (f" (measured but not labeled: {extra})" if extra else "")
                       + (f" (labeled but not measured: {lack})" if lack else "") + f" -- {detail}")
    return out


# Step columns no rule or cube reads, left out of the fixtures to keep them small: the sampler's
# process readings (cpu_util, host_mem_gb), samples_per_s (tokens_per_s / tokens per sample) and
# epoch (step x batch / data set size).
FIXTURE_DROP = {"train_steps": {"cpu_util", "host_mem_gb", "samples_per_s", "epoch"}}


def export_fixtures(results: list[dict], lake: str, dest: Path = FIXTURES) -> list[tuple[str, int]]:
    """Each matrix run's rows (runs, train_steps, eval_results) as JSONL that `mhw ingest` reads: the
    stored values as they are; null columns, the derived `date` and FIXTURE_DROP left out; step and
    eval times as epoch seconds (the microseconds the lake keeps), to keep the files small."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for res in results:
        rid = res["run_id"]
        lines = []
        for table_name, order in (("runs", "run_id"), ("train_steps", "step"), ("eval_results", "checkpoint_step, metric")):
            drop = FIXTURE_DROP.get(table_name, set())
            for row in lake_records(lake, f"select * exclude (date) from {table_name} where run_id = '{rid}' order by {order}"):
                out = {"table": table_name}
                for k, v in row.items():
                    if v is None or k in drop:
                        continue
                    if isinstance(v, dt.datetime):
                        v = v.isoformat() if table_name == "runs" else round(v.timestamp(), 6)
                    out[k] = v
                lines.append(json.dumps(out, separators=(",", ":")))
        path = dest / f"{res['name']}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        written.append((path.name, path.stat().st_size))
    return written


def measure(labeled: list[dict], steps: dict, val: dict, runs: dict, params: dict, twin_ids: dict,
            measured_families: tuple = ()) -> dict[str, dict]:
    """The criteria of every labeled run ({run id: criteria()}); the families labeled by measurement
    (labels.yaml: measured_on_matrix) are set on ``labeled`` from what was measured."""
    measured = {}
    for r in labeled:
        if not steps.get(r["run_id"]) and not val.get(r["run_id"]):
            continue
        cfg = json.loads((runs.get(r["run_id"]) or {}).get("config_json") or "{}")
        trainer = cfg.get("trainer") or {}
        fp16 = trainer.get("precision") == "fp16" or any(s.get("precision") == "fp16" for s in steps[r["run_id"]][:1])
        twin = twin_ids.get(r["run_id"])
        m = measured[r["run_id"]] = criteria(steps[r["run_id"]], val[r["run_id"]], params,
                                             twin_val=val.get(twin) if twin else None, fp16=fp16,
                                             warmup_steps=trainer.get("warmup_steps"),
                                             twin_steps=steps.get(twin) if twin else None,
                                             run_row=runs.get(r["run_id"]))
        for fam in measured_families:
            if fam in r["tolerated"] or fam not in m:
                continue
            r["families"] = sorted(set(r["families"]) - {fam} | ({fam} if m[fam][0] else set()))
    return measured


def twins_of(done: list[dict], runs: list[dict]) -> dict[str, str]:
    """{matrix run name: its twin's run id} for the runs of ``done`` that name a twin."""
    by_name = {r["name"]: r for r in runs}
    return {r["name"]: run_id_of(by_name[r["twin"]]) for r in done if r.get("twin")}


def criteria_text(r: dict, m: dict) -> str:
    """A labeled run's measured criteria, one line each under its labels (``*``: met)."""
    met = sorted(f for f, (ok, _) in m.items() if ok)
    return (f"  {r['name']} [{r['split']}] labeled {r['families']} tolerated {r['tolerated']}; criteria met {met}\n"
            + "".join(f"      {'*' if ok else ' '} {f}: {what}\n" for f, (ok, what) in m.items()))


def print_criteria(runs: list[dict], cache: Path, lake: str, params: dict, split: str | None) -> int:
    """The measured criteria of the cached matrix runs of ``split``, read from the lake as trained."""
    done = [r for r in runs if (not split or r["split"] == split)
            and (cache / "runs" / f"{r['name']}-{spec_hash(r)}" / "result.json").exists()]
    labeled = labeled_matrix(done)
    twins = twins_of(done, runs)
    twin_ids = {r["run_id"]: twins.get(r["name"]) for r in labeled}
    steps, val, meta = telemetry(lake, sorted({r["run_id"] for r in labeled} | set(twins.values())))
    measured = measure(labeled, steps, val, meta, params, twin_ids)
    sys.stdout.write("".join(criteria_text(r, measured.get(r["run_id"], {})) for r in labeled))
    return 0


def evaluate(part: str, labeled: list[dict], lake: str, params: dict, fam_rules: dict, work: Path,
             twins: dict | None = None, measured_families: tuple = (), log=print) -> dict:
    """Diagnose a copy of ``lake``, measure the criteria, score the part."""
    from pipelines.diagnose import diagnose

    copy = fresh_copy(lake, work / f"{part}-diagnosed")
    t0 = time.time()
    res = diagnose(copy, engine="duckdb", full=True, notify_alerts=False)
    ids = [r["run_id"] for r in labeled]
    alerts = [a for a in res.alerts if a.get("run_id") in set(ids)]
    log(f"{part}: diagnose --full on {len(ids)} runs: {len(res.alerts)} alerts ({len(alerts)} on labeled runs), "
        f"{time.time() - t0:.1f} s; by rule {res.by_rule}")
    twin_ids = {r["run_id"]: (twins or {}).get(r["name"]) for r in labeled}
    steps, val, runs = telemetry(copy, sorted(set(ids) | {t for t in twin_ids.values() if t}))
    measured = measure(labeled, steps, val, runs, params, twin_ids, measured_families)
    flags = flagged_families(alerts, fam_rules)
    result = score(labeled, flags, list(fam_rules))
    other = sorted({a["rule"] for a in alerts} - {x for v in fam_rules.values() for x in v})
    return {"score": result, "alerts": alerts, "measured": measured, "steps": steps, "val": val, "runs": runs,
            "healthy_alarms": healthy_alarms(labeled, alerts), "disagreements": check_labels(labeled, measured),
            "rules_outside_families": other, "by_rule": res.by_rule}


def labeled_matrix(runs: list[dict]) -> list[dict]:
    return [{"run_id": run_id_of(r), "name": r["name"], "split": r["split"], "families": list(r.get("families") or []),
             "tolerated": list(r.get("tolerated") or []), "cause": r.get("cause")} for r in runs]


def labeled_public(public: list[dict]) -> list[dict]:
    return [{"run_id": r["id"], "name": r["id"], "split": r["split"], "families": list(r.get("families") or []),
             "tolerated": list(r.get("tolerated") or []), "cause": r.get("shows")} for r in public]


def run_table(ev: dict, labeled: list[dict]) -> str:
    """One line per run: its labels, the criteria it met, the families its alerts flagged, last losses."""
    flags = flagged_families(ev["alerts"], FAMILY_RULES)
    lines = ["| run | split | labeled | tolerated | criteria met | flagged | last loss | last validation |",
             "|---|---|---|---|---|---|---:|---:|"]
    for r in labeled:
        m = ev["measured"].get(r["run_id"], {})
        steps = [x["loss"] for x in ev["steps"].get(r["run_id"], []) if x.get("loss") is not None]
        val = ev["val"].get(r["run_id"], [])
        lines.append(f"| {r['name']} | {r['split']} | {', '.join(r['families']) or 'healthy'} | "
                     f"{', '.join(r['tolerated'])} | {', '.join(f for f, (ok, _) in m.items() if ok)} | "
                     f"{', '.join(sorted(flags.get(r['run_id'], {})))} | "
                     f"{steps[-1]:.4g} | " .replace("nan", "NaN") if steps else f"| {r['name']} | {r['split']} | "
                     f"{', '.join(r['families']) or 'healthy'} | {', '.join(r['tolerated'])} | "
                     f"{', '.join(f for f, (ok, _) in m.items() if ok)} | {', '.join(sorted(flags.get(r['run_id'], {})))} | – | ")
        lines[-1] += (f"{val[-1][1]:.4g} @{val[-1][0]} |" if val else "– |")
    return "\n".join(lines)


def report(part: str, ev: dict, labeled: list[dict], out) -> None:
    w = out.write
    w(f"## {part}: runs\n\n{run_table(ev, labeled)}\n\n")
    w(table(ev["score"], f"## {part}: precision (P) and recall (R) per family") + "\n\n")
    if ev["rules_outside_families"]:
        w(f"alerts of rules in no family (not scored): {ev['rules_outside_families']}\n\n")
    w(f"warning/critical alerts on healthy {part} runs: {len(ev['healthy_alarms'])}\n")
    for a in ev["healthy_alarms"]:
        w(f"  {a['run']} ({a['split']}): {a['rule']} [{a['severity']}] {a['message']}"
          + (" (tolerated family)" if a["tolerated"] else "") + "\n")
    errs = ev["score"]["errors"]
    w(f"\nmissed or false families on {part} runs: {len(errs)}\n")
    for e in errs:
        w(f"  {e['kind']:6s} {e['family']:20s} {e['run']} ({e['split']})"
          + (": " + " | ".join(e["alerts"][:3]) + (f" (+{len(e['alerts']) - 3} more)" if len(e["alerts"]) > 3 else "")
             if e["alerts"] else "") + "\n")
    w(f"\n{part} runs whose measured criteria disagree with their labels: {len(ev['disagreements'])}\n")
    for d in ev["disagreements"]:
        w(f"  {d}\n")
    w("\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["produce"]:
        p = argparse.ArgumentParser(prog="bench_realruns.py produce")
        p.add_argument("src")
        p.add_argument("fifo")
        p.add_argument("--bytes-per-s", type=float)
        p.add_argument("--burst-bytes", type=int)
        p.add_argument("--pause-s", type=float, default=0.0)
        a = p.parse_args(argv[1:])
        produce(a.src, a.fifo, a.bytes_per_s, a.burst_bytes, a.pause_s)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="train the matrix runs the cache lacks")
    p.add_argument("--cache", default=str(REPO / ".mhw" / "realruns"), help="run folders, corpora, lakes")
    p.add_argument("--lake", help="lake of the matrix runs (default <cache>/lake)")
    p.add_argument("--split", choices=SPLITS, help="train only this split")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these runs")
    p.add_argument("--no-score", action="store_true", help="train, do not score")
    p.add_argument("--public-data", default=str(PUBLIC_DATA), help="the labeled public logs (MANIFEST.md)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--export-fixtures", action="store_true",
                   help=f"write each trained matrix run's rows to {FIXTURES.relative_to(REPO)}/<name>.jsonl")
    p.add_argument("--criteria", action="store_true", help="print every run's measured criteria")
    p.add_argument("--criteria-only", action="store_true",
                   help="print the measured criteria of the cached matrix runs (of --split) and stop: no diagnose, "
                        "no alert read (to label a new split before its alerts are seen)")
    args = p.parse_args(argv)
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    lake = args.lake or str(cache / "lake")
    runs = matrix_runs()
    labels = load_yaml(LABELS)
    params = {f: c for f, c in labels["criteria"].items()}
    FAMILY_RULES.update(labels["families"])
    if args.train:
        todo = [r for r in runs if (not args.split or r["split"] == args.split) and (not args.only or r["name"] in args.only)]
        train_matrix(todo, cache, lake, cache / "runs.jsonl")
    if args.no_score:
        return 0
    if args.criteria_only:
        return print_criteria(runs, cache, lake, params, args.split)

    done = [r for r in runs if (cache / "runs" / f"{r['name']}-{spec_hash(r)}" / "result.json").exists()]
    if len(done) < len(runs):
        print(f"note: {len(runs) - len(done)} matrix runs are not in the cache yet (--train trains them): "
              f"{', '.join(r['name'] for r in runs if r not in done)}", file=sys.stderr)
    results = [json.loads((cache / "runs" / f"{r['name']}-{spec_hash(r)}" / "result.json").read_text()) for r in done]
    if args.export_fixtures:
        for name, size in export_fixtures(results, lake):
            print(f"fixture {name}: {size / 1e3:.0f} kB", file=sys.stderr)
    work = cache / "score"
    work.mkdir(exist_ok=True)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    matrix_labeled = labeled_matrix(done)
    twins = twins_of(done, runs)
    ev_m = evaluate("matrix", matrix_labeled, lake, params, FAMILY_RULES, work, twins,
                    measured_families=tuple(labels.get("measured_on_matrix") or ()), log=say) if done else None

    public = load_yaml(PUBLIC)["runs"]
    plake = work / "public-lake"
    if plake.exists():
        shutil.rmtree(plake)
    ingested = ingest_public(public, str(plake), Path(args.public_data), log=say)
    for rid, st in ingested.items():
        if st != "ok":
            say(f"public {rid}: {st}")
    pub_labeled = [r for r in labeled_public(public) if ingested.get(r["run_id"]) == "ok"]
    ev_p = evaluate("public", pub_labeled, str(plake), params, FAMILY_RULES, work, log=say) if pub_labeled else None

    out = sys.stdout
    out.write(f"# Real-run benchmark, {dt.date.today().isoformat()}: matrix {len(done)}/{len(runs)} runs, public "
              f"{len(pub_labeled)}/{len(public)} runs ingested; load average {os.getloadavg()[0]:.1f}\n\n")
    for part, ev, lab in (("matrix", ev_m, matrix_labeled), ("public", ev_p, pub_labeled)):
        if ev:
            report(part, ev, lab, out)
            if args.criteria:
                out.write(f"measured criteria ({part}):\n")
                out.write("".join(criteria_text(r, ev["measured"].get(r["run_id"], {})) for r in lab) + "\n")
    if args.json:
        figures = {"date": dt.date.today().isoformat(), "load_average": os.getloadavg(),
                   "ingested": ingested, "matrix_runs": results}
        for part, ev in (("matrix", ev_m), ("public", ev_p)):
            if ev:
                figures[part] = {"score": ev["score"], "healthy_alarms": ev["healthy_alarms"],
                                 "disagreements": ev["disagreements"], "by_rule": ev["by_rule"],
                                 "criteria": {rid: {f: {"met": ok, "measured": what} for f, (ok, what) in m.items()}
                                              for rid, m in ev["measured"].items()},
                                 "alerts": [{k: a.get(k) for k in ("rule", "run_id", "severity", "message", "step_start",
                                                                   "step_end")} for a in ev["alerts"]]}
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
