"""Fleet reliability, measured: real jobs with real faults, simulated fleets for scale, and what per-rank
telemetry costs a rank.

    .venv/bin/python bench/bench_fleet.py                      # all three parts
    .venv/bin/python bench/bench_fleet.py --parts real --out /tmp/fleet-bench
    .venv/bin/python bench/bench_fleet.py --parts scale --scale-steps 100 400

Part 1, real jobs (bench/fleet_jobs.py): this project's trainer under torchrun (gloo, CPU), 1-4
ranks, one job at a time, each a few hundred steps, faults from outside once every rank logged step
``--onset``:

- ``twin``: nothing done (the healthy twins);
- ``cpu-quota``: one rank moved into a cgroup with a CPU quota of a tenth of a core (a container's
  CPU limit, CFS bandwidth control) for ``--slow-steps`` steps; ``hogs``: that rank pinned to core 1
  with two busy processes pinned there, the other ranks to core 0; ``throttle``: that rank
  SIGSTOP/SIGCONT'd at a 50 % duty cycle (cpulimit's way);
- ``sigstop``: one rank SIGSTOPped (hung: alive, no step); ``sigkill``: one rank SIGKILLed (lost);
  under ``mhw watch``, and once each without it (a process beating for itself).

While a fault lasts, ``mhw diagnose`` runs again and again (as a scheduler would, back to back here);
time to detection is from the fault to the first diagnose that names the rank (run_hung: from the fault
plus its bound), in seconds, heartbeat intervals and steps. After the matrix one last diagnose judges
every job: an alert of run_hung, run_lost, straggler or straggler_host is a true positive when it names
its job's fault and rank, a false positive otherwise (on a twin, a wrong rank, a wrong rule); recall is
faults named / faults made. The rules' thresholds are conf/diagnostics.yaml's, set before this matrix
ran (held out), except run_hung's floor and start-up bound, scaled to seconds-long jobs
(``min_wait_s`` 5, ``startup_s`` 60; heartbeats every second).

Part 2, scale (warehouse/simulate_fleet.py): fleets of 8-1024-rank jobs with planted slow hosts, job
stragglers, a hung and a lost job, beside a ``mhw simulate`` training fleet of as many train_steps rows;
full build and full diagnose, the fleet models' and rules' own seconds, then one more job appended and
both again (incremental); precision and recall of straggler and straggler_host against the ground truth.

Part 3, cost: a rank's ``rank_step`` (per-rank row) and heartbeat on the training thread, timed as
bench_client.py times ``run.log`` (a step that sleeps 5 ms with the GIL released, then the call), and
real 2-rank DDP jobs with ``telemetry.per_rank`` on and off, interleaved: median step time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fleet_jobs as fj  # noqa: E402
from pipelines.diagnose import diagnose  # noqa: E402
from warehouse.commit import LakeLocked  # noqa: E402

RULES = ("run_hung", "run_lost", "straggler", "straggler_host")
HEARTBEAT_S = 1.0
HUNG_WAIT_S = 5.0
# A straggler's fault starts once a snapshot says every rank logged --onset; a snapshot is a heartbeat old,
# and on a quiet machine the tiny job logs ~100 steps a second: the fault may start up to ~LAG_STEPS later.
# Its job is that much longer, the fault lasts until 30 steps before the end (at least --slow-steps), and
# its onset step is the first step its rank marked after the fault began.
LAG_STEPS = 150
# name, ranks, under mhw watch, fault, rank
MATRIX = [
    ("twin-2a", 2, True, None, None),
    ("twin-2b", 2, True, None, None),
    ("twin-3", 3, True, None, None),
    ("twin-4", 4, True, None, None),
    ("twin-1-alone", 1, False, None, None),
    ("quota-2", 2, True, "cpu-quota", 1),
    ("quota-3", 3, True, "cpu-quota", 2),
    ("quota-4", 4, True, "cpu-quota", 0),
    ("hogs-2", 2, True, "hogs", 1),
    ("throttle-2", 2, True, "throttle", 1),
    ("stop-2", 2, True, "sigstop", 1),
    ("stop-1", 1, True, "sigstop", 0),
    ("stop-1-alone", 1, False, "sigstop", 0),
    ("kill-2", 2, True, "sigkill", 1),
    ("kill-3", 3, True, "sigkill", 2),
    ("kill-1-alone", 1, False, "sigkill", 0),
]
EXPECTED = {"cpu-quota": "straggler", "hogs": "straggler", "throttle": "straggler", "sigkill": "run_lost"}


def expected_rule(fault: str | None, watched: bool) -> str | None:
    if fault == "sigstop":  # a stopped process beats no more on its own: without a watchdog it reads lost
        return "run_hung" if watched else "run_lost"
    return EXPECTED.get(fault)


def rules_overlay(path: Path) -> str:
    path.write_text(yaml.safe_dump({"rules": {"run_hung": {"params": {"min_wait_s": HUNG_WAIT_S, "startup_s": 60.0}}}}))
    return str(path)


def named(alerts, run_id, rule, rank):
    return [a for a in alerts if a["run_id"] == run_id and a["rule"] == rule and a["rank"] == rank]


def run_job(name, nproc, watched, fault, target, lake, work, overlay, args) -> dict:
    slowed = fault in ("cpu-quota", "hogs", "throttle")
    # a stopped or killed job is ended by its fault: long enough that the fault lands mid-run (a job without
    # a watchdog is seen at --onset from its heartbeats in the lake, a second or more late: on a quiet
    # machine its 120 steps were over by then, and the kill hit a completed run)
    steps = args.onset + args.slow_steps + 30 + LAG_STEPS if slowed else args.steps if fault is None else 5000
    end_step = steps - 30  # a slowed rank recovers here
    job = fj.launch(lake, name, work, nproc=nproc, steps=steps, watch=watched, heartbeat_s=HEARTBEAT_S,
                    hung_floor_s=30.0)
    out = {"name": name, "ranks": nproc, "watched": watched, "fault": fault, "rank": target,
           "expect": expected_rule(fault, watched)}
    undo = None
    try:
        if fault is None:
            out["exit"] = job.wait(args.timeout)
            return out
        t_onset = job.wait_step(args.onset, timeout=args.timeout) if watched else _wait_alone(job, args.onset, args)
        ranks = job.ranks()
        proc = ranks[target]
        t_fault = time.time()
        if fault == "cpu-quota":
            undo = fj.CpuLimit(f"mhw-bench-{os.getpid()}", share=0.1)
            undo.add(proc.pid)
        elif fault == "hogs":
            undo = fj.Hogs(proc.pid, core=1, n=2, others=[p.pid for r, p in ranks.items() if r != target]).start()
        elif fault == "throttle":
            undo = fj.Throttle(proc.pid, 0.5).start()
        elif fault == "sigstop":
            os.kill(proc.pid, signal.SIGSTOP)
        elif fault == "sigkill":
            os.kill(proc.pid, signal.SIGKILL)
        out["fault_at"] = t_fault
        onset_step = args.onset
        if slowed:  # the first step the rank marked under the fault (a heartbeat at most)
            while job.proc.poll() is None and time.time() < t_fault + 10 * HEARTBEAT_S:
                snap = job.progress().get(target) or {}
                if (snap.get("last_step_at") or 0) > t_fault:
                    onset_step = snap["last_step"]
                    break
                time.sleep(0.05)
        found, seen = None, 0
        deadline = t_fault + (args.timeout if out["expect"] == "straggler" else 60)
        # run_lost: its first alert (overdue heartbeats: a warning) is the detection; go on until it is
        # proven (critical: the run is marked lost)
        while (found is None or (out["expect"] == "run_lost" and "proven_at" not in out)) and time.time() < deadline:
            t_diag = time.time()
            try:
                r = diagnose(lake, notify_alerts=False, config_path=overlay)
            except LakeLocked as e:  # stopped inside a write: the lake's lock names it (warehouse/commit.py)
                out.setdefault("lake_locked_after", time.time() - t_fault)
                out["lake_locked"] = str(e)
                continue
            out["diagnose_s"] = time.time() - t_diag  # the last one's: the one that found it, if any
            seen += 1
            hits = named(r.alerts, name, out["expect"], target)
            if hits and hits[0]["severity"] == "critical" and "proven_at" not in out:
                out["proven_at"] = time.time()
            if hits and found is None:
                found = hits[0]
                out["severity"] = found["severity"]
                out["detected_at"] = time.time()
                out["diagnoses"] = seen
                out["evidence_at"] = found["end_at"].timestamp()
                prog = job.progress()
                out["detected_step"] = max((s.get("last_step") or 0) for s in prog.values()) if prog else None
                out["message"] = found["message"]
            if out["expect"] == "straggler" and job.proc.poll() is not None:
                break
            if fault == "cpu-quota" and undo is not None and _past(job, end_step):
                undo.remove()
                undo = None
        if isinstance(undo, fj.CpuLimit):
            while not _past(job, end_step) and job.proc.poll() is None:
                time.sleep(0.2)
            undo.remove()
            undo = None
        elif undo is not None:
            while not _past(job, end_step) and job.proc.poll() is None:
                time.sleep(0.2)
            undo.stop()
            undo = None
        if fault in ("sigstop",) and not watched:
            os.kill(proc.pid, signal.SIGKILL)  # nothing else will end it
        out["exit"] = job.wait(args.timeout)
        out["onset_at"], out["onset_step"] = t_onset, onset_step
        return out
    finally:
        if isinstance(undo, fj.CpuLimit):
            undo.remove()
        elif undo is not None:
            undo.stop()
        job.kill()


def _past(job, step) -> bool:
    prog = job.progress()
    return bool(prog) and min((s.get("last_step") or 0) for s in prog.values()) >= step


def _wait_alone(job, step, args) -> float:
    """A job without a watchdog has no progress folder: wait for its heartbeats in the lake."""
    import duckdb

    deadline = time.time() + args.timeout
    while time.time() < deadline:
        try:
            got = duckdb.connect().execute(
                f"select max(last_step) from read_parquet('{job.lake}/heartbeats/**/*.parquet', "
                f"hive_partitioning = true) where run_id = '{job.run_id}'").fetchall()[0][0]
        except (duckdb.IOException, duckdb.InvalidInputException):  # no file yet, or one being replaced
            got = None
        if got is not None and got >= step:
            return time.time()
        time.sleep(0.3)
    raise TimeoutError(f"{job.run_id} did not reach step {step}")


def part_real(args, root: Path) -> list[str]:
    why = fj.CpuLimit.available()
    if why:
        return [f"part 1 not run: the CPU quota needs a writable cgroup cpu controller ({why})"]
    lake, work = str(root / "real-lake"), root / "real-work"
    overlay = rules_overlay(root / "rules.yaml")
    results = []
    for spec in MATRIX:
        if args.jobs and spec[0] not in args.jobs:
            continue
        t = time.time()
        r = run_job(*spec, lake, work, overlay, args)
        r["seconds"] = time.time() - t
        results.append(r)
        print(f"  {r['name']}: {r['seconds']:.0f} s, exit {r.get('exit')}, "
              f"detected {'-' if 'detected_at' not in r else round(r['detected_at'] - r['fault_at'], 1)} s",
              flush=True)
    final = diagnose(lake, notify_alerts=False, config_path=overlay)
    alerts = [a for a in final.current if a["rule"] in RULES]
    return report_real(results, alerts)


def report_real(results, alerts) -> list[str]:
    lines = ["| job | ranks | watchdog | fault (rank) | expected | alerts of the four rules | detected after | "
             "diagnoses | of it: the finding diagnose | steps after onset |", "|---|---:|---|---|---|---|---:|---:|---:|---:|"]
    tp = fp = 0
    per_rule = {r: [0, 0] for r in RULES}  # tp, fp
    made, caught = {}, {}
    for r in results:
        mine = [a for a in alerts if a["run_id"] == r["name"]]
        for a in mine:
            ok = a["rule"] == r["expect"] and a["rank"] == r["rank"]
            tp += ok
            fp += not ok
            per_rule[a["rule"]][0 if ok else 1] += 1
        if r["expect"]:
            made[r["expect"]] = made.get(r["expect"], 0) + 1
            hit = any(a["rule"] == r["expect"] and a["rank"] == r["rank"] for a in mine)
            caught[r["expect"]] = caught.get(r["expect"], 0) + hit
        det = "-"
        if "detected_at" in r:
            secs = r["detected_at"] - r["fault_at"]
            if r["expect"] == "run_hung":
                over = secs - HUNG_WAIT_S
                det = f"{secs:.1f} s (bound {HUNG_WAIT_S:.0f} s + {over:.1f} s = {over / HEARTBEAT_S:.1f} beats)"
            elif r["expect"] == "run_lost":
                det = f"{secs:.1f} s ({secs / HEARTBEAT_S:.1f} beats, {r['severity']})"
                if "proven_at" in r and r["proven_at"] > r["detected_at"]:
                    det += f"; critical {r['proven_at'] - r['fault_at']:.1f} s"
            else:
                det = f"{secs:.1f} s"
        fault = (r["fault"] or "-") + ("" if r["rank"] is None else f" ({r['rank']})")
        found = ", ".join(sorted(f"{a['rule']} r{a['rank']}" for a in mine)) or "none"
        lines.append(f"| {r['name']} | {r['ranks']} | {'yes' if r['watched'] else 'no'} | {fault} | "
                     f"{r['expect'] or 'none'} | {found} | {det} | {r.get('diagnoses', '-')} | "
                     f"{_found_by(r)} | {_steps_after(r)} |")
    lines += ["", "| rule | true positives | false positives | precision | faults made | named | recall |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for rule, (t, f) in per_rule.items():
        m, c = made.get(rule, 0), caught.get(rule, 0)
        lines.append(f"| {rule} | {t} | {f} | {t / (t + f) if t + f else float('nan'):.2f} | {m} | {c} | "
                     f"{c / m if m else float('nan'):.2f} |")
    m, c = sum(made.values()), sum(caught.values())
    lines.append(f"| all | {tp} | {fp} | {tp / (tp + fp) if tp + fp else float('nan'):.2f} | {m} | {c} | "
                 f"{c / m if m else float('nan'):.2f} |")
    lines += ["", "Messages:"] + [f"- {r['name']}: {r['message']}" for r in results if r.get("message")]
    locked = [r for r in results if r.get("lake_locked")]
    if locked:  # the fault stopped a process inside a write: diagnoses were refused, naming it
        lines += ["", "Diagnoses refused while a stopped process held the lake lock (LakeLocked):"] + [
            f"- {r['name']}: first {r['lake_locked_after']:.1f} s after the fault: {r['lake_locked'][:300]}" for r in locked]
    return lines


def _found_by(r) -> str:
    """Seconds the diagnose that named the fault took: detection is the evidence's way to the lake plus
    up to two diagnoses (the one running when it landed, and the next)."""
    return f"{r['diagnose_s']:.1f} s" if "detected_at" in r else "-"


def _steps_after(r) -> str:
    """Steps the job logged from the fault's onset to its detection (a straggler keeps stepping)."""
    if r.get("detected_step") is None or r["expect"] != "straggler":
        return "-"
    return str(r["detected_step"] - r["onset_step"])


def part_scale(args, root: Path) -> list[str]:
    from pipelines.build import build
    from warehouse.simulate import simulate
    from warehouse.simulate_fleet import simulate_fleet

    lines = ["| rank rows | train_steps rows | full build s | of it: rank_base, rank_health, straggler_hosts, "
             "run_liveness s | full diagnose s | of it: straggler, straggler_host, live s | + one job: diagnose s | "
             "build s | straggler P / R | straggler_host P / R | hung, lost found |",
             "|---:|---:|---:|---|---:|---|---:|---:|---|---|---|"]
    for steps in args.scale_steps:
        lake = str(root / f"scale-{steps}")
        shutil.rmtree(lake, ignore_errors=True)
        sim = simulate_fleet(lake, jobs=args.scale_jobs, steps=steps, seed=3)
        n_train = simulate(lake, sim["rank_rows"], seed=3)["train_steps"] if args.with_train_steps else 0
        serving = str(root / f"scale-{steps}.duckdb")
        b = build(lake, serving, full=True)
        d = diagnose(lake, notify_alerts=False, full=True, now=sim["now"])
        fleet_models = "rank_base rank_health_window straggler_hosts_window liveness_current".split()
        cube_s = ", ".join(f"{b.seconds.get(m, 0):.2f}" for m in fleet_models)
        rule_s = ", ".join(f"{d.seconds.get(k, 0):.2f}" for k in ("straggler", "straggler_host", "live_processes"))
        # one more job lands: incremental diagnose and build
        more = simulate_fleet(str(root / f"scale-{steps}-more"), jobs=1, steps=steps, seed=99, now=sim["now"])
        _copy_tables(str(root / f"scale-{steps}-more"), lake)
        t = time.perf_counter()
        d2 = diagnose(lake, notify_alerts=False, now=sim["now"])
        d2_s = time.perf_counter() - t
        t = time.perf_counter()
        build(lake, serving)
        b2_s = time.perf_counter() - t
        truth = sim["truth"]
        st = {(t["run_id"], t["rank"]) for t in truth if t["kind"] == "straggler"}
        got = {(a["run_id"], a["rank"]) for a in d.alerts if a["rule"] == "straggler"}
        slow = {t["host"] for t in truth if t["kind"] == "slow_host"}
        hosts = {a["host"] for a in d.alerts if a["rule"] == "straggler_host"}
        live = {(t["kind"], t["run_id"]) for t in truth if t["kind"] in ("hung", "lost")}
        live_got = {(a["rule"][4:], a["run_id"]) for a in d.alerts if a["rule"] in ("run_hung", "run_lost")}
        pr = lambda g, w: f"{len(g & w) / len(g) if g else float('nan'):.2f} / {len(g & w) / len(w) if w else float('nan'):.2f}"  # noqa: E731
        lines.append(f"| {sim['rank_rows']:,} | {n_train:,} | {b.seconds['total']:.1f} | {cube_s} | "
                     f"{d.seconds['total']:.1f} | {rule_s} | {d2_s:.1f} | {b2_s:.1f} | {pr(got, st)} ({len(st)} planted) | "
                     f"{pr(hosts, slow)} ({len(slow)} planted) | {len(live & live_got)} of {len(live)} |")
        print(lines[-1], flush=True)
        del more
    return lines


def _copy_tables(src: str, dst: str) -> None:
    for table in ("rank_steps", "runs", "heartbeats"):
        for path in Path(src, table).rglob("*.parquet"):
            target = Path(dst, table, path.relative_to(Path(src, table)))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def part_cost(args, root: Path) -> list[str]:
    from warehouse.telemetry import Telemetry

    lines = ["| arm | median us | p99 us |", "|---|---:|---:|"]
    arms = {}
    for arm in ("dict only", "rank_step (per-rank row)", "rank_step + step (rank 0: both rows)"):
        lake = str(root / f"cost-{len(arms)}")
        tel = Telemetry(lake, "cost", "m", "cpu-x", "fp32", enabled=arm.endswith("both rows)"), per_rank=True,
                        ranks=(0, 0, 8), heartbeat_s=1.0, flush_seconds=1.0, system_interval_s=1.0)
        times = []
        for step in range(args.cost_steps):
            time.sleep(0.005)
            m = {"step_time_ms": 5.1, "data_time_ms": 0.1, "compute_ms": 4.0, "comm_wait_ms": 1.0}
            t = time.perf_counter()
            if arm == "dict only":
                _noop(step, m)
            else:
                tel.rank_step(step, m)
                if tel.enabled:
                    tel.step(step, loss=1.0, lr=1e-3, step_time_ms=5.1)
            times.append((time.perf_counter() - t) * 1e6)
        tel.close()
        times.sort()
        arms[arm] = (statistics.median(times), times[int(0.99 * len(times))])
        lines.append(f"| {arm} | {arms[arm][0]:.2f} | {arms[arm][1]:.2f} |")
    # real DDP jobs, per-rank telemetry on and off, interleaved
    lines += ["", "| 2-rank DDP job | rep | median step ms (rank 0) | median step ms (rank 1) |", "|---|---:|---:|---:|"]
    import duckdb
    med = {True: [], False: []}
    for rep in range(args.cost_reps):
        for per_rank in (False, True):
            lake = str(root / f"ddp-{rep}-{per_rank}")
            job = fj.launch(lake, f"cost-{rep}-{int(per_rank)}", root / "cost-work", nproc=2, steps=args.cost_job_steps,
                            extra=[f"--telemetry.per_rank={str(per_rank).lower()}", "--telemetry.flush_seconds=30"])
            job.wait(args.timeout)
            # the trainer's console is rank 0's; both ranks' step times come from rank_steps when on,
            # from train_steps (rank 0) when off
            q = ("select rank, median(step_time_ms) from read_parquet('{l}/rank_steps/**/*.parquet') group by rank"
                 if per_rank else "select 0, median(step_time_ms) from read_parquet('{l}/train_steps/**/*.parquet')")
            got = dict(duckdb.sql(q.format(l=lake)).fetchall())
            med[per_rank].append(got[0])
            lines.append(f"| per_rank {'on' if per_rank else 'off'} | {rep} | {got[0]:.1f} | "
                         f"{got.get(1, float('nan')):.1f} |")
    on, off = statistics.median(med[True]), statistics.median(med[False])
    lines.append(f"\nmedian over reps, rank 0: off {off:.1f} ms, on {on:.1f} ms ({100 * (on - off) / off:+.1f} %)")
    return lines


def _noop(step, m):
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["real", "scale", "cost"], choices=["real", "scale", "cost"])
    p.add_argument("--out", help="working folder (default a temp folder, removed)")
    p.add_argument("--jobs", nargs="*", help="only these jobs of the matrix")
    p.add_argument("--steps", type=int, default=120, help="steps of a twin, a hung or a lost job")
    p.add_argument("--onset", type=int, default=30, help="the fault starts once every rank logged this step")
    p.add_argument("--slow-steps", type=int, default=120, help="steps a slowed rank stays slowed")
    p.add_argument("--timeout", type=float, default=400)
    p.add_argument("--scale-steps", type=int, nargs="+", default=[100, 400])
    p.add_argument("--scale-jobs", type=int, default=24)
    p.add_argument("--with-train-steps", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cost-steps", type=int, default=3000)
    p.add_argument("--cost-reps", type=int, default=3)
    p.add_argument("--cost-job-steps", type=int, default=200)
    args = p.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="mhw-fleet-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"# bench_fleet {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()}", flush=True)
    try:
        for part in args.parts:
            t = time.time()
            lines = {"real": part_real, "scale": part_scale, "cost": part_cost}[part](args, root)
            print(f"\n## {part} ({time.time() - t:.0f} s)\n")
            print("\n".join(lines), flush=True)
    finally:
        print(f"\nload at the end {os.getloadavg()}")
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
