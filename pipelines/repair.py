"""``mhw repair``: closed-loop repair of training runs. From an alert to a healed run, measured.

    mhw repair                               # the plan: each run with an open alert at or above min_severity
    mhw repair --run RUN --apply             # carry it out: children trained until healed or escalated
    mhw repair --min-severity warning --apply
    mhw repair --status                      # the repairs table

A repair answers one alert of one training run (the parent; the run's first alert in the policies'
``priority`` order). Each attempt applies the next patch of the rule's policy (conf/repair.yaml,
pipelines/repair_policy.py) to the parent's config and trains a child: a new run (``parent_run_id``
the parent) forked from the parent's checkpoint before the onset, or from scratch, through the job
the train_model DAG runs (``pipelines.jobs.train``); then the diagnostics are re-run (the child's own
rows in the lake) and a verdict is written:

- ``healed``: the child completed past the step where the parent failed, every loss finite, the
  answered rule silent on it, and its loss at the end within the policies' margin of its healthy peers
  at the same steps (else of the parent's own loss before the onset);
- ``not_healed``: the next attempt applies the next patch;
- ``escalated``: no policy for the rule, the patches exhausted, ``max_attempts`` reached or the
  compute budget spent: a person must look;
- ``advised``: a run imported from another trainer (HF, MLPerf, ...) gets the plan and the advice, not a
  restart.

Overfitting's first patch trains nothing: it keeps the parent's best checkpoint (``best.pt``, chosen by
validation loss while it trained; model/checkpoint.py) and records it.

The ``repairs`` lake table holds one row per attempt, keyed by a hash of the alert and the attempt
number, so a retried step rewrites its own row and trains the same child (its run id comes from the same
key; the trainer resumes it from its checkpoints). Never two repairs of one run at once: a process works
on a run only while it holds that run's lock (an flock, released by the kernel when the process dies);
an attempt left ``running`` by a dead process is taken over by the next, which resumes its child.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.alerts import read_alerts, read_rows
from pipelines.notify import jsonable, rank
from pipelines.repair_policy import Patch, Policies, PolicyError, apply_patch, get_key, load_policies
from warehouse import audit, config
from warehouse.output import write_rows
from warehouse.schemas import REPAIRS, RUN_ID_CHARS
from warehouse.writer import Lake, slugify

TABLE = REPAIRS.name
FINAL = ("healed", "escalated", "advised")  # a repair with one of these is over
_CKPT = re.compile(r"^ckpt-(\d+)\.pt$")  # model/checkpoint.py's names (read here without importing torch)
BEST_INFO = "best.json"
SHOWN = ["started_at", "verdict", "rule", "parent_run_id", "attempt", "patch", "child_run_id", "observed",
         "expected", "seconds_to_verdict", "reason"]


def _hash(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


def repair_id(parent_run_id: str, alert_id: str) -> str:
    return _hash("repair", parent_run_id, alert_id)


def attempt_id(rid: str, attempt: int) -> str:
    return _hash(rid, attempt)


def child_run_id(parent_run_id: str, attempt: int, aid: str) -> str:
    """The child's run id: the parent's, the attempt and the attempt key, so a retry trains (resumes)
    the same child."""
    return slugify(f"{parent_run_id[:60]}-fix{attempt}-{aid[:8]}", RUN_ID_CHARS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def default_owner() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


# --- what the lake says -----------------------------------------------------------------------------

@dataclass
class State:
    """The runs, alerts and repairs a decision reads, read once (small tables)."""
    runs: dict[str, dict]
    alerts: list[dict]
    repairs: list[dict]

    def attempts(self, rid: str) -> list[dict]:
        return sorted((r for r in self.repairs if r["repair_id"] == rid), key=lambda r: r["attempt"])

    def config_of(self, run_id: str) -> dict | None:
        raw = (self.runs.get(run_id) or {}).get("config_json")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None


def read_state(lake: Lake) -> State:
    from warehouse.query import connect

    with lake.read_lock():
        con = connect(lake_root=lake.uri, serving_path="")
        cols = ["run_id", "kind", "model", "hardware", "status", "source", "steps", "dataset", "parent_run_id",
                "config_json", "started_at", "ended_at", "precision"]
        rows = con.execute(f"select {', '.join(cols)} from runs").fetchall()
        alerts, repairs = read_alerts(lake), read_rows(lake, REPAIRS)
    return State(runs={r[0]: dict(zip(cols, r)) for r in rows}, alerts=alerts, repairs=repairs)


def _query(lake: Lake, sql: str, params: list) -> list[tuple]:
    from warehouse.query import connect

    with lake.read_lock():
        return connect(lake_root=lake.uri, serving_path="").execute(sql, params).fetchall()


def healthy_peers(state: State, parent: dict, pol: Policies) -> list[dict]:
    """Completed runs of the parent's model and data from this project's trainer, neither repairs nor
    repaired, with no alert at or above ``clear_severity`` from a rule that has a policy."""
    sick = {a["run_id"] for a in state.alerts
            if a.get("run_id") and a["rule"] in pol.rules and rank(a["severity"]) >= rank(pol.clear_severity)}
    return [r for r in state.runs.values()
            if r["kind"] == "train" and r["run_id"] != parent["run_id"] and r["model"] == parent["model"]
            and r["dataset"] == parent["dataset"] and r["status"] == "completed" and not r["parent_run_id"]
            and r["source"] == "trainer" and r["config_json"] and r["run_id"] not in sick]


# --- candidates: which runs need a repair step ------------------------------------------------------

@dataclass
class Candidate:
    parent_run_id: str
    alert: dict  # alert_id, rule, severity, onset_step, alert_start_at, alert_detected_at, message, action
    repair_id: str
    waiting: str | None = None  # why nothing can be done yet (the parent still running)


def _alert_fields(a: dict) -> dict:
    return {"alert_id": a["alert_id"], "rule": a["rule"], "severity": a["severity"], "onset_step": a.get("step_start"),
            "alert_start_at": a["start_at"], "alert_detected_at": a.get("detected_at") or a["start_at"],
            "message": a.get("message"), "action": a.get("action"), "model": a["model"], "hardware": a["hardware"]}


def candidates(state: State, pol: Policies, min_severity: str | None = None, run_ids: list[str] | None = None,
               alert_id: str | None = None) -> list[Candidate]:
    """One per training run that has a repair in progress, or an open alert at or above ``min_severity``
    (the policies' by default) and no repair yet. A run gets one repair; runs a repair trained (or any
    run forked from another) are judged by their parent's repair, never repaired themselves."""
    level = min_severity or pol.min_severity
    out = []
    by_run: dict[str, list[dict]] = {}
    for r in state.repairs:
        by_run.setdefault(r["parent_run_id"], []).append(r)
    for run_id in sorted(run_ids or state.runs):
        run = state.runs.get(run_id)
        if run is None or run["kind"] != "train" or run["parent_run_id"]:
            continue
        mine = sorted(by_run.get(run_id, []), key=lambda r: (r["started_at"], r["attempt"]))
        if mine:
            last = mine[-1]
            if last["verdict"] in FINAL and not alert_id:
                continue
            if last["verdict"] not in FINAL:
                out.append(Candidate(run_id, {**{k: last[k] for k in ("alert_id", "rule", "severity", "onset_step",
                                                                       "alert_start_at", "alert_detected_at")},
                                              "model": last["model"], "hardware": last["hardware"]},
                                     last["repair_id"]))
                continue
        open_ = [a for a in state.alerts if a.get("run_id") == run_id and a.get("scope") == "run"
                 and (a["alert_id"] == alert_id if alert_id else rank(a["severity"]) >= rank(level))]
        chosen = pol.primary(open_)
        if chosen is None:
            continue
        rid = repair_id(run_id, chosen["alert_id"])
        if any(r["repair_id"] == rid for r in mine):
            continue  # that alert was answered already
        waiting = "the parent is still running" if run["status"] == "running" and run["source"] == "trainer" else None
        out.append(Candidate(run_id, _alert_fields(chosen), rid, waiting))
    return out


# --- the plan of the next attempt -------------------------------------------------------------------

@dataclass
class Plan:
    attempt: int
    action: str  # retrain | mark_best | advise | escalate
    rule: str
    patch: str | None = None
    why: str | None = None
    changes: dict = field(default_factory=dict)  # key -> [before, after]
    notes: list = field(default_factory=list)
    resume: str | None = None  # before_onset | latest | scratch, as asked
    resume_step: int | None = None  # the checkpoint step used (None: from scratch)
    resume_checkpoint: str | None = None
    config: dict | None = None  # the child's config
    samples: int = 0
    reason: str = ""

    def describe(self) -> str:
        if self.action == "retrain":
            start = f"ckpt step {self.resume_step}" if self.resume_step is not None else "scratch"
            changes = ", ".join(f"{k} {ba[0]!r} -> {ba[1]!r}" for k, ba in self.changes.items()) or "no key"
            return f"attempt {self.attempt}: {self.patch} from {start}: {changes}"
        if self.action == "mark_best":
            return f"attempt {self.attempt}: {self.patch}: keep the parent's best checkpoint"
        return f"{self.action}: {self.reason}"


def checkpoints_of(cfg: dict | None) -> dict[int, str]:
    """The parent's checkpoints on disk, by step (its resolved trainer.out_dir)."""
    out_dir = ((cfg or {}).get("trainer") or {}).get("out_dir")
    if not out_dir or not os.path.isdir(out_dir):
        return {}
    return {int(m[1]): os.path.join(out_dir, n) for n in os.listdir(out_dir) if (m := _CKPT.match(n))}


def _samples(cfg: dict, steps: int) -> int:
    t = cfg.get("trainer") or {}
    return max(0, int(steps)) * int(t.get("batch_size") or 1) * int(t.get("grad_accum") or 1)


def plan_next(cand: Candidate, state: State, pol: Policies, ckpts: dict[int, str] | None = None) -> Plan:
    """The next attempt of a repair: the next patch of the rule's policy that changes something,
    applied to the parent's config; or why none can run (advice, escalation)."""
    rule, alert = cand.alert["rule"], cand.alert
    parent = state.runs[cand.parent_run_id]
    cfg = state.config_of(cand.parent_run_id)
    patches = pol.rules.get(rule)
    done = [r for r in state.attempts(cand.repair_id) if r["action"] in ("retrain", "mark_best")]
    attempt = len(done) + 1
    if parent["source"] != "trainer" or cfg is None:
        return Plan(0, "advise", rule, reason=advice(rule, patches, parent, alert, pol))
    if not patches:
        return Plan(0, "escalate", rule, reason=f"no policy for {rule} in {pol.path}: a person must look "
                                               f"({alert.get('action') or 'see the alert'})")
    names = [p.name for p in patches]
    start = names.index(done[-1]["patch"]) + 1 if done and done[-1]["patch"] in names else len(done)
    ckpts = checkpoints_of(cfg) if ckpts is None else ckpts
    peers = [state.config_of(p["run_id"]) for p in healthy_peers(state, parent, pol)]
    parent_samples = _samples(cfg, parent["steps"] or get_key(cfg, "trainer.max_steps"))
    spent = sum(r["samples"] or 0 for r in done)
    skipped = []
    for patch in patches[start:]:
        if attempt > pol.max_attempts:
            return Plan(attempt, "escalate", rule, reason=f"{pol.max_attempts} attempt(s) made, the limit: a person must look")
        if patch.action == "mark_best":
            return Plan(attempt, "mark_best", rule, patch=patch.name, why=patch.why)
        try:
            child, changes, notes = apply_patch(patch, cfg, {"step_start": alert.get("onset_step")},
                                                [p for p in peers if p], pol.min_peers, where=f"{pol.path}: {rule}.")
        except PolicyError as e:  # a patch this run's config cannot take: a person decides
            return Plan(attempt, "escalate", rule, reason=f"cannot apply {patch.name}: {e}")
        if not changes and not patch.always:
            skipped.append(patch.name)
            continue
        step, path = _resume_point(patch, alert.get("onset_step"), ckpts)
        max_steps = get_key(child, "trainer.max_steps")
        if step is not None and step >= max_steps:
            step, path = None, None  # the checkpoint is past the new end (fewer steps): from scratch
        if step is None and patch.resume != "scratch":
            kept = ", ".join(str(k) for k in sorted(ckpts)) or "none"
            notes = [*notes, f"no checkpoint {patch.resume.replace('_', ' ')} on disk (kept: {kept}): from scratch"]
        samples = _samples(child, max_steps - (step or 0))
        if spent + samples > pol.budget_runs * parent_samples:
            return Plan(attempt, "escalate", rule, reason=f"budget spent: {spent:,} of {pol.budget_runs:g} x the "
                                                          f"parent's {parent_samples:,} samples used, {patch.name} needs {samples:,}")
        if skipped:
            notes = [f"skipped {', '.join(skipped)} (no change to this run's config)", *notes]
        return Plan(attempt, "retrain", rule, patch=patch.name, why=patch.why, changes=changes, notes=notes,
                    resume=patch.resume, resume_step=step, resume_checkpoint=path, config=child, samples=samples)
    tried = ", ".join(r["patch"] for r in done) or "none"
    return Plan(attempt, "escalate", rule, reason=f"the policy for {rule} is exhausted (tried: {tried}"
                                                  + (f"; no change from {', '.join(skipped)}" if skipped else "")
                                                  + "): a person must look")


def _resume_point(patch: Patch, onset: int | None, ckpts: dict[int, str]) -> tuple[int | None, str | None]:
    if patch.resume == "scratch" or not ckpts:
        return None, None
    if patch.resume == "latest":
        step = max(ckpts)
    else:  # before_onset: a checkpoint at step k holds the weights the loss of step k was computed with
        before = [s for s in ckpts if onset is None or s < onset]
        if not before:
            return None, None
        step = max(before)
    return step, ckpts[step]


def advice(rule: str, patches, parent: dict, alert: dict, pol: Policies) -> str:
    """What a person should do for a run this project did not train (no config to patch, no checkpoint
    to fork): the alert's action and the policy's patches, in order."""
    head = f"{parent.get('source') or 'imported'} run: not restarted automatically. {alert.get('action') or ''}".strip()
    if not patches:
        return f"{head} No policy for {rule}: a person must look."
    steps = []
    for i, p in enumerate(patches, 1):
        if p.action == "mark_best":
            steps.append(f"{i}. {p.name}: keep the checkpoint with the best validation loss ({p.why})")
        else:
            keys = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in p.set.items())
            steps.append(f"{i}. {p.name}: from {p.resume.replace('_', ' ')}, set {keys} ({p.why})")
    return f"{head} Policy for {rule}: " + " ".join(steps)


# --- the repairs table ------------------------------------------------------------------------------

def write_attempt(lake: Lake, row: dict) -> None:
    """Write (or rewrite: same key) one attempt's row."""
    import pyarrow as pa

    names = [f.name for f in REPAIRS.schema if f.name != "date"]
    data = pa.Table.from_pylist([{k: row.get(k) for k in names}],
                                schema=pa.schema([f for f in REPAIRS.schema if f.name != "date"]))
    lake.write(TABLE, data, key=f"repair-{row['attempt_id']}")


def _row(cand: Candidate, plan: Plan, owner: str, **fields) -> dict:
    a = cand.alert
    aid = attempt_id(cand.repair_id, plan.attempt)
    return {"attempt_id": aid, "repair_id": cand.repair_id, "attempt": plan.attempt, "alert_id": a["alert_id"],
            "rule": a["rule"], "severity": a["severity"], "onset_step": a.get("onset_step"),
            "parent_run_id": cand.parent_run_id, "action": plan.action, "patch": plan.patch,
            "patch_json": json.dumps({"changes": plan.changes, "notes": plan.notes, "resume": plan.resume},
                                     default=str) if plan.action == "retrain" else None,
            "resume_step": plan.resume_step, "owner": owner, "alert_start_at": a["alert_start_at"],
            "alert_detected_at": a["alert_detected_at"], "started_at": _now(), "model": a["model"],
            "hardware": a["hardware"], "samples": plan.samples or None, **fields}


def _finish(row: dict, verdict: str, reason: str) -> dict:
    row.update(verdict=verdict, reason=reason, verdict_at=_now())
    detected = row.get("alert_detected_at")
    row["seconds_to_verdict"] = (row["verdict_at"] - detected).total_seconds() if detected else None
    return row


# --- locks ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(lake: Lake, checkpoints_root: str, parent_run_id: str, wait: bool = False):
    """Hold the repair lock of one run for the block; yields False (and holds nothing) if another
    process holds it and ``wait`` is False. An flock: a dead holder's lock is free at once."""
    base = os.path.join(lake.root, "_repair", "locks") if lake.local else os.path.join(checkpoints_root, "_repair", "locks")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, f"{_hash('lock', parent_run_id)}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- one step of a repair ---------------------------------------------------------------------------

@dataclass
class Repairer:
    """Carries repairs forward on one lake: ``advance`` one run at a time, under its lock."""
    lake_root: str
    checkpoints_root: str
    pol: Policies
    owner: str
    log: object = print
    min_severity: str | None = None

    @property
    def lake(self) -> Lake:
        return Lake(self.lake_root)

    @audit.audited("repair", lake=lambda a: a["self"].lake_root, counts=lambda rows: _verdict_counts(rows))
    def advance(self, parent_run_id: str, alert_id: str | None = None, until: str = "done") -> list[dict]:
        """Carry the run's repair forward: ``until="trained"`` claims the next attempt and trains its
        child; ``"judged"`` finishes the attempt in progress (trains what is left, evaluates, judges);
        ``"done"`` goes on until a final verdict. Returns the rows written ([] if the run's lock is
        held by another process, or nothing is left to do)."""
        written: list[dict] = []
        with run_lock(self.lake, self.checkpoints_root, parent_run_id) as mine:
            if not mine:
                self.log(f"repair {parent_run_id}: another process is repairing it; skipped")
                return []
            while True:
                state = read_state(self.lake)
                found = candidates(state, self.pol, self.min_severity, [parent_run_id], alert_id)
                if not found:
                    return written
                cand = found[0]
                if cand.waiting:
                    self.log(f"repair {parent_run_id}: waits ({cand.waiting})")
                    return written
                last = (state.attempts(cand.repair_id) or [None])[-1]
                if last is not None and last["verdict"] == "running":
                    row = self._resume(cand, state, last, judge=until != "trained")
                elif until == "judged":
                    return written
                else:
                    row = self._start(cand, state, judge=until != "trained")
                written.append(row)
                if until != "done" or row["verdict"] in FINAL or row["verdict"] == "running":
                    return written

    def _start(self, cand: Candidate, state: State, judge: bool) -> dict:
        plan = plan_next(cand, state, self.pol)
        self.log(f"repair {cand.parent_run_id} ({cand.alert['rule']}): {plan.describe()}")
        if plan.action in ("advise", "escalate"):
            row = _finish(_row(cand, plan, self.owner), "advised" if plan.action == "advise" else "escalated", plan.reason)
            write_attempt(self.lake, row)
            return row
        if plan.action == "mark_best":
            row = _row(cand, plan, self.owner, verdict="running")
            return self._judge_mark_best(cand, state, row)
        aid = attempt_id(cand.repair_id, plan.attempt)
        child = child_run_id(cand.parent_run_id, plan.attempt, aid)
        row = _row(cand, plan, self.owner, verdict="running", child_run_id=child)
        write_attempt(self.lake, row)  # the claim: a crash from here on leaves it for the next to resume
        self._train(cand, plan, child, state)
        return self._judge(cand, row) if judge else row

    def _resume(self, cand: Candidate, state: State, row: dict, judge: bool) -> dict:
        """An attempt left running (its process died, or the DAG's judge task): train what is left of
        the child, then judge it."""
        row = dict(row, owner=self.owner)
        if row["action"] == "mark_best":
            return self._judge_mark_best(cand, state, row)
        child = state.runs.get(row["child_run_id"])
        if child is None or child["status"] == "running":
            plan = self._replan(cand, state, row)
            self.log(f"repair {cand.parent_run_id}: resuming attempt {row['attempt']} ({row['patch']}), child {row['child_run_id']}")
            self._train(cand, plan, row["child_run_id"], state)
        return self._judge(cand, row) if judge else row

    def _replan(self, cand: Candidate, state: State, row: dict) -> Plan:
        """The plan of an attempt already claimed (the same patch and checkpoint: same config, same child)."""
        shrunk = State(runs=state.runs, alerts=state.alerts,
                       repairs=[r for r in state.repairs if not (r["repair_id"] == row["repair_id"]
                                                                and r["attempt"] >= row["attempt"])])
        plan = plan_next(cand, shrunk, self.pol)
        if plan.patch != row["patch"]:
            raise RuntimeError(f"repair {cand.parent_run_id}: attempt {row['attempt']} was {row['patch']}, "
                               f"the policies now say {plan.patch}: the policies changed under a running repair")
        return plan

    def _train(self, cand: Candidate, plan: Plan, child: str, state: State) -> None:
        """The child's training, through the job the train_model DAG runs (a subprocess; a retry
        resumes the child from its own checkpoints)."""
        from pipelines import jobs

        cfg = dict(plan.config)
        cfg["trainer"] = {**cfg["trainer"], "resume": None, "fork_from": None, "out_dir": "out/{run_id}"}
        cfg["telemetry"] = {**cfg["telemetry"], "run_id": None, "lake": None, "parent_run_id": None}
        folder = Path(self.checkpoints_root) / "_repair"
        folder.mkdir(parents=True, exist_ok=True)
        cfg_path = folder / f"{child}.yaml"
        tmp = cfg_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
        os.replace(tmp, cfg_path)
        overrides = [f"--telemetry.parent_run_id={cand.parent_run_id}"]
        if plan.resume_checkpoint:
            overrides.append(f"--trainer.fork_from={plan.resume_checkpoint}")
        parent = state.runs[cand.parent_run_id]
        try:
            jobs.train(str(cfg_path), child, lake_root=self.lake_root, precision=cfg["trainer"].get("precision") or "fp32",
                       hardware=parent["hardware"], overrides=overrides, checkpoints_root=self.checkpoints_root)
        except subprocess.CalledProcessError as e:  # a child that diverges or crashes is a verdict, not an outage
            self.log(f"repair {cand.parent_run_id}: child {child} exited {e.returncode}")

    # -- verdicts --------------------------------------------------------------------------------------

    def _judge(self, cand: Candidate, row: dict) -> dict:
        """Evaluate the child (the diagnostics re-run over what changed: its rows) and judge it."""
        from pipelines.diagnose import diagnose

        orch = config.load().section("orchestration")
        diagnose(self.lake_root, engine=orch.get("engine", "duckdb"), master=orch.get("spark_master"),
                 notify_alerts=False)
        state = read_state(self.lake)
        return self._settle(cand, state, row, *judge(self.lake, state, self.pol, cand, row))

    def _judge_mark_best(self, cand: Candidate, state: State, row: dict) -> dict:
        return self._settle(cand, state, row, *judge_mark_best(self.lake, state, self.pol, cand))

    def _settle(self, cand: Candidate, state: State, row: dict, verdict: str, reason: str, measured: dict) -> dict:
        """Write the verdict. Not healed with no next attempt possible (policies exhausted, attempts or
        budget spent) is escalated on this very row: a person must look."""
        row.update(measured)
        if verdict == "not_healed":
            after = State(runs=state.runs, alerts=state.alerts,
                          repairs=[r for r in state.repairs if r["attempt_id"] != row["attempt_id"]] + [row])
            nxt = plan_next(cand, after, self.pol)
            if nxt.action == "escalate":
                verdict, reason = "escalated", f"{reason}; {nxt.reason}"
        row = _finish(row, verdict, reason)
        write_attempt(self.lake, row)
        self.log(f"repair {cand.parent_run_id}: attempt {row['attempt']} {verdict}: {reason}")
        return row


def _verdict_counts(rows: list[dict]) -> dict:
    """An audit entry's counts: the attempts written, by verdict."""
    out = {"attempts_written": len(rows)}
    for r in rows:
        out[r["verdict"]] = out.get(r["verdict"], 0) + 1
    return out


def _end_median(steps_losses: list[tuple[int, float]], frac: float) -> tuple[float | None, int, int]:
    """Median loss of the last ``frac`` of the logged steps (at least 3), and that window's steps."""
    if not steps_losses:
        return None, 0, 0
    n = max(3, math.ceil(frac * len(steps_losses)))
    tail = steps_losses[-n:]
    return statistics.median(v for _, v in tail), tail[0][0], tail[-1][0]


def judge(lake: Lake, state: State, pol: Policies, cand: Candidate, row: dict) -> tuple[str, str, dict]:
    """(verdict, reason, measured columns) of a retrained child, from the lake: its runs row, its
    train_steps, its validation, the alerts the diagnostics raised on it, and the reference."""
    child_id, parent_id, rule = row["child_run_id"], cand.parent_run_id, cand.alert["rule"]
    child = state.runs.get(child_id)
    child_cfg = state.config_of(child_id) or {}
    rows = _query(lake, "select step, loss, step_time_ms from train_steps where run_id = ? order by step", [child_id])
    measured = {"compute_s": round(sum(r[2] or 0.0 for r in rows) / 1e3, 3), "checkpoint": None,
                "margin": pol.margin, "observed": None, "expected": None}
    ckpts = checkpoints_of(child_cfg)
    if ckpts:
        measured["checkpoint"] = ckpts[max(ckpts)]
    failures = []
    if child is None:
        return "not_healed", f"the child {child_id} left no runs row (it failed to start)", measured
    target = get_key(child_cfg, "trainer.max_steps") if child_cfg else None
    onset = cand.alert.get("onset_step")
    if child["status"] != "completed" or (target is not None and (child["steps"] or 0) < target):
        failures.append(f"the child ended {child['status']} at step {child['steps']}")
    elif onset is not None and target is not None and target > onset and (child["steps"] or 0) <= onset:
        failures.append(f"the child stopped at step {child['steps']}, before the onset at {onset}")
    nonfinite = [s for s, loss, _ in rows if loss is None or not math.isfinite(loss)]
    if nonfinite:
        failures.append(f"{len(nonfinite)} non-finite loss(es) from step {nonfinite[0]}")
    seen = [a for a in state.alerts if a.get("run_id") == child_id and a["rule"] == rule
            and rank(a["severity"]) >= rank(pol.clear_severity)]
    if seen:
        failures.append(f"{rule} again on the child ({seen[0]['severity']}: {seen[0]['message']})")
    improve = False  # held to its own parent: it must do better than it by the margin
    if rule == "overfitting":
        observed, expected, basis = _validation_reference(lake, child_id, parent_id)
    else:
        observed, expected, basis, improve = _loss_reference(lake, state, pol, cand, rows, child_cfg)
    measured.update(observed=observed, expected=expected)
    if observed is not None and expected is not None:
        bound = expected * (1 - pol.margin if improve else 1 + pol.margin)
        if not observed <= bound:
            failures.append(f"loss {observed:.4g} not {'below' if improve else 'within'} {pol.margin:.0%} "
                            f"{'of' if not improve else 'under'} {basis} {expected:.4g}")
        margin_note = f"loss {observed:.4g} vs {basis} {expected:.4g} (margin {pol.margin:.0%})"
    else:
        failures.append(f"no loss to judge it by ({basis})")
        margin_note = ""
    if failures:
        return "not_healed", "not healed: " + "; ".join(failures), measured
    past = f", past step {onset} where the parent failed" if onset is not None and child["steps"] > onset else ""
    return "healed", (f"healed by {row['patch']} (child {child_id}, {child['steps']} steps{past}): no {rule}, "
                      f"losses finite, {margin_note}"), measured


def _loss_reference(lake, state, pol, cand, rows, child_cfg) -> tuple[float | None, float | None, str, bool]:
    """The child's loss at its end, what it is held to, and whether it must beat that by the margin
    (True) or stay within it: its healthy peers' median over the same steps (peers of the same model,
    data and length), else the parent's loss just before the onset, else the parent's own end."""
    finite = [(s, v) for s, v, _ in rows if v is not None and math.isfinite(v)]
    observed, lo, hi = _end_median(finite, pol.window_frac)
    if observed is None:
        return None, None, "the child logged no finite loss", False
    parent = state.runs[cand.parent_run_id]
    max_steps = get_key(child_cfg, "trainer.max_steps")
    peers = [p["run_id"] for p in healthy_peers(state, parent, pol)
             if (state.config_of(p["run_id"]) or {}).get("trainer", {}).get("max_steps") == max_steps]
    if len(peers) >= pol.min_peers:
        marks = ", ".join("?" for _ in peers)
        got = _query(lake, f"select run_id, median(loss) from train_steps where run_id in ({marks}) and step between ? and ? "
                           "and isfinite(loss) group by run_id", [*peers, lo, hi])
        if len(got) >= pol.min_peers:
            return observed, statistics.median(v for _, v in got), f"the median of {len(got)} healthy peers", False
    onset = cand.alert.get("onset_step")
    parent_rows = [(s, v) for s, v in _query(lake, "select step, loss from train_steps where run_id = ? "
                                                   "and isfinite(loss) order by step", [cand.parent_run_id])]
    before = [(s, v) for s, v in parent_rows if s < (onset or 0)]
    if len(before) >= 3:
        ref, _, _ = _end_median(before, pol.window_frac)
        return observed, ref, f"the parent before step {onset}", False
    ref, _, _ = _end_median(parent_rows, pol.window_frac)
    if ref is None:
        return observed, None, "no healthy peers of this length, no parent loss", False
    return observed, ref, "the parent's own loss at its end (no healthy peers of this length)", True


def _validation_reference(lake: Lake, child_id: str, parent_id: str) -> tuple[float | None, float | None, str]:
    """The child's last validation loss against the parent's best."""
    last = _query(lake, "select value from eval_results where run_id = ? and suite = 'validation' and metric = 'loss' "
                        "order by checkpoint_step desc limit 1", [child_id])
    best = _query(lake, "select min(value) from eval_results where run_id = ? and suite = 'validation' "
                        "and metric = 'loss' and isfinite(value)", [parent_id])
    observed = last[0][0] if last else None
    expected = best[0][0] if best and best[0][0] is not None else None
    return observed, expected, "the parent's best validation loss"


def judge_mark_best(lake: Lake, state: State, pol: Policies, cand: Candidate) -> tuple[str, str, dict]:
    """Overfitting's stop-at-best: the parent's best.pt (best.json) if it is within the margin of the
    best validation loss the parent logged, else the kept checkpoint with the lowest validation loss."""
    cfg = state.config_of(cand.parent_run_id) or {}
    out_dir = (cfg.get("trainer") or {}).get("out_dir")
    vals = dict(_query(lake, "select checkpoint_step, value from eval_results where run_id = ? and suite = 'validation' "
                             "and metric = 'loss' and isfinite(value)", [cand.parent_run_id]))
    best_val = min(vals.values()) if vals else None
    measured = {"margin": pol.margin, "expected": best_val, "observed": None, "checkpoint": None,
                "compute_s": 0.0, "resume_step": None}
    chosen = None
    try:
        info = json.loads((Path(out_dir) / BEST_INFO).read_text()) if out_dir else None
    except (OSError, ValueError):
        info = None
    if info and os.path.exists(info.get("best", "")):
        chosen = (info["step"], info["best"], info["metrics"].get("loss"))
    else:
        kept = [(s, p, vals[s]) for s, p in checkpoints_of(cfg).items() if s in vals]
        if kept:
            chosen = min(kept, key=lambda k: k[2])
    if chosen is None or best_val is None:
        return "not_healed", "not healed: no checkpoint of the parent was kept with a validation loss", measured
    step, path, loss = chosen
    measured.update(observed=loss, checkpoint=path, resume_step=step)
    if loss is None or not math.isfinite(loss):
        return "not_healed", f"not healed: the kept checkpoint at step {step} has no finite validation loss", measured
    if loss > best_val * (1 + pol.margin):
        return "not_healed", (f"not healed: the best checkpoint kept (step {step}, validation loss {loss:.4g}) is "
                              f"more than {pol.margin:.0%} above the best validation loss {best_val:.4g}"), measured
    return "healed", (f"stopped at the best checkpoint: step {step} ({path}), validation loss {loss:.4g} "
                      f"(best logged {best_val:.4g}); the steps after it overfit"), measured


# --- notifications ----------------------------------------------------------------------------------

@audit.audited("repair-notify", counts=lambda r: {"notified": r["notified"]})
def notify_verdicts(lake_root: str | None = None, notifiers: list | None = None) -> dict:
    """Send the final verdicts no notifier has taken yet (healed: info; advised: warning; escalated:
    critical, a person must look), then mark them notified. A failed notifier leaves them pending."""
    from pipelines import notify as notify_mod
    from pipelines.diagnose import load_config

    lake = Lake(lake_root or config.load().lake_root)
    pending = [r for r in read_rows(lake, REPAIRS) if r["verdict"] in FINAL and r["notified_at"] is None]
    if not pending:
        return {"notified": 0}
    level = {"healed": "info", "advised": "warning", "escalated": "critical"}
    messages = [{"alert_id": r["alert_id"], "rule": f"repair:{r['rule']}", "severity": level[r["verdict"]],
                 "run_id": r["parent_run_id"], "model": r["model"], "hardware": r["hardware"],
                 "message": f"{r['verdict']} after {r['attempt']} attempt(s): {r['reason']}",
                 "action": (f"use run {r['child_run_id']}" if r["verdict"] == "healed" and r["child_run_id"]
                            else f"use checkpoint {r['checkpoint']}" if r["verdict"] == "healed"
                            else "a person must look: `mhw repair --status`"),
                 "repair_id": r["repair_id"]} for r in pending]
    chosen = notify_mod.build_notifiers(load_config().notify) if notifiers is None else notifiers
    errors = notify_mod.send_all(chosen, messages)  # no lake lock held while a webhook answers
    if errors:
        raise RuntimeError(f"{len(pending)} repair verdict(s) stay pending: {'; '.join(errors)}")
    now = _now()
    with lake.transaction():
        for r in pending:
            write_attempt(lake, {**r, "notified_at": now})
    return {"notified": len(pending)}


# --- entry points: the DAG and the command line ----------------------------------------------------

def repairer(lake_root: str | None = None, policies: str | None = None, owner: str | None = None,
             min_severity: str | None = None, log=print) -> Repairer:
    settings = config.load()
    return Repairer(lake_root=lake_root or settings.lake_root, checkpoints_root=settings.checkpoints_root,
                    pol=load_policies(policies or settings.section("repair").get("policies")),
                    owner=owner or default_owner(), log=log, min_severity=min_severity)


def pending(lake_root: str | None = None, policies: str | None = None, min_severity: str | None = None) -> list[dict]:
    """The runs with repair work to do (the DAG's plan): [{"run_id", "alert_id", "rule"}]. Parents
    still running wait."""
    r = repairer(lake_root, policies, min_severity=min_severity)
    state = read_state(r.lake)
    return [{"run_id": c.parent_run_id, "alert_id": c.alert["alert_id"], "rule": c.alert["rule"]}
            for c in candidates(state, r.pol, min_severity) if not c.waiting]


def enabled() -> bool:
    """``repair.enabled`` in conf/mhw.yaml: off by default, automatic restarts are opt-in."""
    return bool(config.load().section("repair").get("enabled", False))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", dest="run_ids", action="append", help="only this training run (repeatable)")
    p.add_argument("--alert", dest="alert_id", help="answer this alert (with --run), whatever its severity")
    p.add_argument("--apply", action="store_true", help="train children until each repair is healed or escalated")
    p.add_argument("--min-severity", choices=("info", "warning", "critical"),
                   help="alerts at or above this start a repair (default: min_severity of the policies)")
    p.add_argument("--policies", help="repair policies laid over conf/repair.yaml (default $MHW_REPAIR)")
    p.add_argument("--status", action="store_true", help="list the repairs table instead")
    p.add_argument("--lake", help="lake root (default from config)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")


def run(args: argparse.Namespace) -> int:
    try:
        r = repairer(args.lake, args.policies, min_severity=args.min_severity,
                     log=lambda msg: print(msg, file=sys.stderr))
    except PolicyError as e:
        print(f"mhw repair: {e}", file=sys.stderr)
        return 2
    if args.status:
        rows = sorted(read_rows(r.lake, REPAIRS), key=lambda x: (x["started_at"], x["attempt"]), reverse=True)
        cols = SHOWN if args.format == "table" else [c.name for c in REPAIRS.columns]
        write_rows(cols, [[jsonable(x.get(c)) if args.format == "json" else x.get(c) for c in cols] for x in rows],
                   args.format, sys.stdout, 200)
        return 0
    state = read_state(r.lake)
    found = candidates(state, r.pol, args.min_severity, args.run_ids, args.alert_id)
    if not found:
        print("mhw repair: nothing to repair" + (f" for {', '.join(args.run_ids)}" if args.run_ids else ""))
        return 0
    if not args.apply:
        out = []
        for c in found:
            plan = plan_next(c, state, r.pol)
            out.append({"run_id": c.parent_run_id, "alert_id": c.alert["alert_id"], "rule": c.alert["rule"],
                        "severity": c.alert["severity"], "waiting": c.waiting, "plan": plan.describe(),
                        "notes": plan.notes, "why": plan.why})
        if args.format == "json":
            print(json.dumps(out, default=str, indent=1))
        else:
            for o in out:
                wait = f" [waits: {o['waiting']}]" if o["waiting"] else ""
                print(f"{o['run_id']} {o['rule']} ({o['severity']}, alert {o['alert_id']}){wait}\n  {o['plan']}"
                      + (f"\n  why: {o['why']}" if o["why"] else "") + "".join(f"\n  note: {n}" for n in o["notes"]))
        return 0
    with audit.entry(r.lake_root, "repair", args={k: v for k, v in vars(args).items() if not callable(v)}):
        for c in found:  # one audit entry for the command: the repairs, their diagnoses, the notifications
            if c.waiting:
                print(f"{c.parent_run_id}: waits ({c.waiting})")
                continue
            rows = r.advance(c.parent_run_id, args.alert_id)
            if rows:
                print(f"{c.parent_run_id}: {rows[-1]['verdict']} (attempt {rows[-1]['attempt']}): {rows[-1]['reason']}")
        notify_verdicts(r.lake_root)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.repair", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
