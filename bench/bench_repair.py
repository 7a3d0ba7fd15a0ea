"""The closed-loop repair on real faulty runs: how many it heals, with how many attempts and how much
extra compute, and how long from an alert to its verdict.

    .venv/bin/python -u bench/bench_repair.py --cache /work/repair-bench            # train, diagnose, repair
    .venv/bin/python -u bench/bench_repair.py --cache /work/repair-bench --set held-out --json out.json

The runs are bench/realruns/matrix.yaml's (the real-run benchmark of the diagnostics): real CPU
trainings of gpt2-tiny and bert-tiny-cls, 300 steps, each fault an ordinary mistake (an LR 100x too
high without warmup or clipping, an LR in the wrong units, min_lr left above a lowered LR, a
64-example data set, batch size 1 or 2), and healthy seeds of each model, which are the faulty runs'
peers and must be left alone. Two sets: "first" (8 faults, 4 healthy runs), the runs the policies
were first run on, and "held-out" (the matrix's fresh split: 6 faults of other seeds and magnitudes,
2 healthy runs), added after the first run's figures had been read. Runs streaming from a pipe
(data_stall) are left out: the child of a stalled run would need the slow source again, which the
bench does not keep alive. Trained with bench_realruns' own trainer into ``<cache>/lake`` (one torch
thread each, one at a time; a cached run is not trained again); then, in a fresh copy of that lake
(``<cache>/repair``: no alerts, repairs or children yet), ``mhw diagnose --full`` and the equivalent
of ``mhw repair --min-severity warning --apply`` on every run with an alert (the matrix's faults
raise warnings, none critical), the policies of conf/repair.yaml as shipped.

Figures: per fault, the alert answered, each attempt (patch, verdict, the child's end loss against
its reference) and the final verdict; then the share healed, the attempts and the extra training
compute per healed run (the children's step time over the parent's), the time from the alert's
detection to the verdict (repairs run one after another, so later ones include the queue) and the
repair's own wall time, and every repair started on a healthy run (a false repair). As a check
independent of the verdict: each healed child's last validation loss over its healthy twin's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_spec = importlib.util.spec_from_file_location("bench_realruns", Path(__file__).resolve().parent / "bench_realruns.py")
realruns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realruns)

# name -> (set, its healthy twin) (matrix.yaml names). "first": the faults the policies were first
# run on; "held-out": the matrix's fresh split, added after the first run's figures had been read.
FAULTS = {
    "gpt2-lr0.3-s1": ("first", "gpt2-healthy-s1"),      # LR 100x too high, no warmup, no clipping
    "gpt2-lr1e-7-s1": ("first", "gpt2-healthy-s1"),     # LR in the wrong units, min_lr left at 3e-4
    "gpt2-minlr-s1": ("first", "gpt2-healthy-s1"),      # LR lowered, min_lr above it: the cosine climbs
    "gpt2-n64-s1": ("first", "gpt2-healthy-s1"),        # 64 examples: memorized
    "gpt2-bs1-s1": ("first", "gpt2-healthy-s1"),        # batch size 1
    "bert-lr0.3-s4": ("first", "bert-healthy-s1"),      # LR 300x too high, no warmup, no clipping
    "bert-n64-s1": ("first", "bert-healthy-s1"),        # 64 examples: memorized
    "bert-minlr-s3": ("first", "bert-healthy-s1"),      # LR lowered, min_lr above it
    "gpt2-lr0.2-s7": ("held-out", "gpt2-healthy-s7"),   # LR 67x too high, no warmup, no clipping
    "bert-lr0.1-s7": ("held-out", "bert-healthy-s7"),   # LR 100x too high, no warmup, no clipping
    "gpt2-lr3e-7-s7": ("held-out", "gpt2-healthy-s7"),  # LR in the wrong units, min_lr lowered with it
    "gpt2-bs2-s7": ("held-out", "gpt2-healthy-s7"),     # batch size 2
    "gpt2-n96-s7": ("held-out", "gpt2-healthy-s7"),     # 96 examples: memorized
    "bert-minlr-s7": ("held-out", "bert-healthy-s7"),   # LR lowered, min_lr above it
}
HEALTHY = {"first": ["gpt2-healthy-s1", "gpt2-healthy-s2", "bert-healthy-s1", "bert-healthy-s2"],
           "held-out": ["gpt2-healthy-s7", "bert-healthy-s7"]}


def fmt(x, spec=".4g") -> str:
    return "–" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/mhw-repair-bench", help="trainings, lake and checkpoints")
    ap.add_argument("--set", dest="sets", action="append", choices=["first", "held-out"],
                    help="which faults (repeatable; default both)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    lake = str(cache / "lake")  # the trained runs, cached; every repair runs in a fresh copy of it
    work = cache / "repair"
    sets = args.sets or ["first", "held-out"]
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    t_start = time.time()
    load_start = os.getloadavg()

    # 1. the matrix's runs: the faults and the healthy twins, as bench_realruns trains them
    by_name = {r["name"]: r for r in realruns.matrix_runs()}
    healthy = [h for s in sets for h in HEALTHY[s]]
    names = healthy + [f for f, (s, _) in FAULTS.items() if s in sets]
    results = {}
    for i, name in enumerate(names, 1):
        t = time.time()
        res = realruns.train_run(by_name[name], cache, lake, cache / "runs.jsonl", log=print)
        results[name] = res
        print(f"[train {i}/{len(names)}] {name}: {res['status']}, {res['steps']} steps ({time.time() - t:.0f} s)",
              flush=True)
    t_trained = time.time()

    # 2. in a fresh copy of the trained runs (no alerts, repairs or children yet): diagnose, then repair
    # every run with an alert at warning or above, one after another
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(lake, work / "lake", ignore=shutil.ignore_patterns(
        "alerts", "repairs", "_diagnose", "cubes", "_tmp", "_txn", "_snapshots", "_repair"))
    lake = str(work / "lake")
    os.environ.update({"MHW_LAKE": lake, "MHW_SERVING": str(work / "serving.duckdb"),
                       "MHW_CHECKPOINTS": str(work / "checkpoints")})
    from pipelines import repair
    from pipelines.diagnose import diagnose
    from warehouse.query import connect
    from warehouse.writer import Lake

    diagnose(lake, full=True, notify_alerts=False)
    r = repair.repairer(lake, min_severity="warning", log=lambda m: print(f"  {m}", flush=True))
    state = repair.read_state(Lake(lake))
    found = repair.candidates(state, r.pol, "warning")
    walls = {}
    for c in found:
        t = time.time()
        r.advance(c.parent_run_id)
        walls[c.parent_run_id] = time.time() - t
    t_done = time.time()

    # 3. figures, from the lake
    con = connect(lake_root=lake, serving_path="")
    rows = [dict(zip([d[0] for d in con.description], row)) for row in
            con.execute("select * from repairs order by parent_run_id, attempt").fetchall()] \
        if con.execute("select count(*) from repairs").fetchone()[0] else []
    compute = dict(con.execute("select run_id, sum(step_time_ms) / 1e3 from train_steps group by run_id").fetchall())
    last_val = dict(con.execute("""select run_id, arg_max(value, checkpoint_step) from eval_results
                                   where suite = 'validation' and metric = 'loss' group by run_id""").fetchall())
    name_of = {res["run_id"]: name for name, res in results.items()}
    per_run = {}
    for row in rows:
        per_run.setdefault(row["parent_run_id"], []).append(row)
    lines = ["| run | set | alert answered | attempts (patch: verdict, child end loss vs reference) | final | "
             "extra compute | alert -> verdict | child val / twin val |", "|---|---|---|---|---|---:|---:|---:|"]
    healed, faults_seen, false_repairs, figures = [], 0, [], []
    for name in names:
        run_id = results[name]["run_id"]
        mine = per_run.get(run_id, [])
        if name in healthy:
            if mine:
                false_repairs.append((name, mine[0]["rule"], mine[-1]["verdict"]))
            continue
        faults_seen += 1
        fault_set, twin_name = FAULTS[name]
        if not mine:
            lines.append(f"| {name} | {fault_set} | (no alert at warning or above) | | not repaired | | | |")
            figures.append({"run": name, "set": fault_set, "final": None})
            continue
        final = mine[-1]
        attempts = [m for m in mine if m["action"] in ("retrain", "mark_best")]
        steps_txt = "; ".join(f"{m['patch']}: {m['verdict']}" + (f" ({fmt(m['observed'])} vs {fmt(m['expected'])})"
                                                                  if m["observed"] is not None else "")
                              for m in attempts) or final["reason"][:80]
        extra = sum(compute.get(m["child_run_id"], 0.0) for m in attempts if m["child_run_id"])
        ratio = extra / compute[run_id] if compute.get(run_id) else None
        twin = results[twin_name]["run_id"]
        check = None
        if final["verdict"] == "healed":
            mine_val = last_val.get(final["child_run_id"]) if final["child_run_id"] else final["observed"]
            check = mine_val / last_val[twin] if mine_val is not None and last_val.get(twin) else None
            healed.append({"run": name, "set": fault_set, "attempts": len(attempts), "extra_compute_x": ratio,
                           "to_verdict_s": final["seconds_to_verdict"], "wall_s": walls.get(run_id), "val_vs_twin": check})
        lines.append(f"| {name} | {fault_set} | {final['rule']} ({final['severity']}) | {steps_txt} | {final['verdict']} | "
                     f"{fmt(ratio, '.2f')}x | {fmt(final['seconds_to_verdict'], '.0f')} s | {fmt(check, '.3f')} |")
        figures.append({"run": name, "set": fault_set, "rule": final["rule"], "final": final["verdict"],
                        "attempts": len(attempts),
                        "patches": [m["patch"] for m in attempts], "extra_compute_x": ratio,
                        "to_verdict_s": final["seconds_to_verdict"], "wall_s": walls.get(run_id),
                        "reason": final["reason"], "val_vs_twin": check})
    print("\n## repairs of the faulty runs\n")
    print("\n".join(lines))
    n_healed = len(healed)
    summary = {
        "faulty_runs": faults_seen, "healed": n_healed, "share_healed": n_healed / faults_seen if faults_seen else None,
        "attempts_per_healed": statistics.mean(h["attempts"] for h in healed) if healed else None,
        "extra_compute_per_healed_x": statistics.mean(h["extra_compute_x"] for h in healed
                                                      if h["extra_compute_x"] is not None) if healed else None,
        "median_alert_to_verdict_s": statistics.median(f["to_verdict_s"] for f in figures if f.get("to_verdict_s"))
        if any(f.get("to_verdict_s") for f in figures) else None,
        "median_repair_wall_s": statistics.median(walls.values()) if walls else None,
        "escalated": sum(f["final"] == "escalated" for f in figures),
        "false_repairs": false_repairs,
        "train_matrix_s": round(t_trained - t_start), "repair_s": round(t_done - t_trained),
        "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    print("\n## summary\n")
    for s in sets:
        mine = [f for f in figures if f["set"] == s]
        print(f"{s}: {len(mine)} faulty runs, healed {sum(f['final'] == 'healed' for f in mine)}, escalated "
              f"{sum(f['final'] == 'escalated' for f in mine)}, not repaired {sum(f['final'] is None for f in mine)}")
    print(f"faulty runs {faults_seen}; healed {n_healed} ({fmt(summary['share_healed'], '.0%')}); escalated "
          f"{summary['escalated']}; attempts per healed run {fmt(summary['attempts_per_healed'], '.2f')}; extra "
          f"training compute per healed run {fmt(summary['extra_compute_per_healed_x'], '.2f')}x the parent's; "
          f"alert -> verdict median {fmt(summary['median_alert_to_verdict_s'], '.0f')} s (queue included); a "
          f"repair's own wall time median {fmt(summary['median_repair_wall_s'], '.0f')} s")
    print(f"repairs started on healthy runs: {false_repairs or 'none'}")
    print(f"wall: training {summary['train_matrix_s']} s, repairing {summary['repair_s']} s; load average "
          f"{summary['load_start']} -> {summary['load_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": figures, "rows": rows}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
