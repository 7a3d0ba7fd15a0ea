"""Labeled benchmark of the health diagnostics: precision and recall per rule against planted incidents.

    .venv/bin/python bench/bench_diagnostics.py                      # seeds 101 202, magnitudes 0.8 1.5
    .venv/bin/python bench/bench_diagnostics.py --seeds 5 --magnitudes 1 --rows 500000

For each seed × magnitude, ``mhw simulate`` writes a fleet with incidents planted in half the training
runs (one per run-level rule, at random onsets) and ``--fleet-incidents`` of each fleet incident type,
with ground truth in ``<lake>/_ground_truth/incidents.parquet``; ``mhw diagnose --full`` (DuckDB, the
default rules config) computes the alerts; each alert is matched to the truth:

- run rules: an alert of rule R on run X is a true positive when X carries a planted R incident;
- fleet rules: an alert of rule R is a true positive when a planted R incident has the same model and
  hardware (and precision / suite where the incident names one) and the alert starts on or after the
  incident's onset date.

precision = true-positive alerts / alerts of the rule; recall = incidents with at least one matching
alert / incidents planted. ``clean`` counts alerts on runs without any incident and fleet alerts on
model × hardware pairs without any fleet incident (the target is zero). Targets: precision ≥ 0.95 and
recall ≥ 0.90 per rule. The tests (tests/pipelines/test_diagnose*.py) use other seeds (0-9) and
magnitude 1.0; the thresholds in conf/diagnostics.yaml were tuned on seeds 1-9 at magnitudes 0.4, 0.6 and
1.0, so report on other seeds and magnitudes (bench/RESULTS.md: 101 202 303 404 at 0.5 0.8 1.5).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.diagnose import diagnose, load_rules  # noqa: E402
from warehouse.simulate import FLEET_INCIDENTS, RUN_INCIDENTS, simulate  # noqa: E402

TARGET_PRECISION, TARGET_RECALL = 0.95, 0.90


def score(truth: list[dict], alerts: list[dict]) -> dict[str, dict]:
    """Per rule: alerts, true positives, incidents, detected incidents, alerts on clean subjects."""
    out = {r: {"alerts": 0, "tp": 0, "incidents": 0, "detected": 0, "clean": 0} for r in RUN_INCIDENTS + FLEET_INCIDENTS}
    run_truth = {(t["incident"], t["run_id"]) for t in truth if t["level"] == "run"}
    # a loss frozen from its onset (plateau) also ends above the run's peers: underfitting says so rightly
    run_truth |= {("underfitting", run_id) for incident, run_id in run_truth if incident == "plateau"}
    incident_runs = {t["run_id"] for t in truth if t["level"] == "run"}
    fleet_truth = [t for t in truth if t["level"] == "fleet"]
    fleet_pairs = {(t["model"], t["hardware"]) for t in fleet_truth}
    detected = set()

    def fleet_match(t: dict, a: dict) -> bool:
        return (t["incident"] == a["rule"] and t["model"] == a["model"] and t["hardware"] == a["hardware"]
                and (t["precision"] is None or t["precision"] == a["precision"])
                and (t["suite"] is None or t["suite"] == a["suite"])
                and a["start_at"].date() >= t["onset_date"])

    for a in alerts:
        s = out.setdefault(a["rule"], {"alerts": 0, "tp": 0, "incidents": 0, "detected": 0, "clean": 0})
        s["alerts"] += 1
        if a["scope"] == "run":
            if (a["rule"], a["run_id"]) in run_truth:
                s["tp"] += 1
                detected.add(("run", a["rule"], a["run_id"]))
            elif a["run_id"] not in incident_runs:
                s["clean"] += 1
        else:
            hits = [i for i, t in enumerate(fleet_truth) if fleet_match(t, a)]
            if hits:
                s["tp"] += 1
                detected.update(("fleet", i) for i in hits)
            elif (a["model"], a["hardware"]) not in fleet_pairs:
                s["clean"] += 1
    for t in truth:
        if t["level"] == "run":
            out[t["incident"]]["incidents"] += 1
            out[t["incident"]]["detected"] += ("run", t["incident"], t["run_id"]) in detected
    for i, t in enumerate(fleet_truth):
        out[t["incident"]]["incidents"] += 1
        out[t["incident"]]["detected"] += ("fleet", i) in detected
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def table(stats: dict[str, dict], title: str) -> str:
    lines = [title, "",
             "| rule | level | alerts | true pos. | precision | incidents | detected | recall | alerts on clean | meets target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rule, s in stats.items():
        p, r = _ratio(s["tp"], s["alerts"]), _ratio(s["detected"], s["incidents"])
        ok = (p is None or p >= TARGET_PRECISION) and (r is None or r >= TARGET_RECALL) and s["clean"] == 0
        level = "run" if rule in RUN_INCIDENTS else "fleet"
        fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {rule} | {level} | {s['alerts']} | {s['tp']} | {fmt(p)} | {s['incidents']} | {s['detected']} "
                     f"| {fmt(r)} | {s['clean']} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_500_000, help="train_steps rows per simulated lake")
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 202])
    p.add_argument("--magnitudes", type=float, nargs="+", default=[0.8, 1.5])
    p.add_argument("--incident-rate", type=float, default=0.5)
    p.add_argument("--fleet-incidents", type=int, default=4, help="planted incidents of each fleet type per lake")
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--engine", default="duckdb")
    p.add_argument("--workdir", help="where the lakes go (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    assert set(load_rules()) == set(RUN_INCIDENTS + FLEET_INCIDENTS), "every rule needs a planted incident type"

    total: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    per_magnitude: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for m in args.magnitudes:
            per_magnitude[m] = defaultdict(lambda: defaultdict(int))
            for seed in args.seeds:
                lake = os.path.join(tmp, f"lake-{seed}-{m}")
                t0 = time.perf_counter()
                simulate(lake, args.rows, seed=seed, days=args.days, incident_rate=args.incident_rate,
                         magnitude=m, fleet_incidents=args.fleet_incidents)
                t1 = time.perf_counter()
                res = diagnose(lake, engine=args.engine, full=True, notify_alerts=False,
                               config_path=None)
                t2 = time.perf_counter()
                truth = pq.read_table(os.path.join(lake, "_ground_truth", "incidents.parquet")).to_pylist()
                stats = score(truth, res.alerts)
                for rule, s in stats.items():
                    for k, v in s.items():
                        total[rule][k] += v
                        per_magnitude[m][rule][k] += v
                print(f"seed {seed} magnitude {m}: simulate {t1 - t0:.1f}s, diagnose {t2 - t1:.1f}s, "
                      f"{len(res.alerts)} alerts, {len(truth)} planted incidents", file=sys.stderr)
    order = RUN_INCIDENTS + FLEET_INCIDENTS
    print(f"rows {args.rows:,} per lake; seeds {args.seeds}; magnitudes {args.magnitudes}; "
          f"incident rate {args.incident_rate}; fleet incidents {args.fleet_incidents} per type; "
          f"engine {args.engine}; {dt.date.today().isoformat()}\n")
    print(table({r: total[r] for r in order}, "All seeds and magnitudes:"))
    for m, stats in per_magnitude.items():
        print()
        print(table({r: stats[r] for r in order}, f"Magnitude {m}:"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
