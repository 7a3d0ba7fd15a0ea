"""pipelines/repair.py. Fast: the plan of every training rule (which alert a run's repair answers, the
patch, the checkpoint it starts from, what it changes), and the limits (attempts, budget, exhausted
policies, imported runs, parents still running). Slow: two `mhw repair --apply` processes racing
for one run (one repairs it, the other stands back), and a repair killed mid-training that the next
process resumes: one attempt, one child, every step once."""
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from model.train import build_config
from pipelines.diagnose import load_rules
from pipelines.repair import State, attempt_id, candidates, child_run_id, plan_next, repair_id
from pipelines.repair_policy import load_policies
from warehouse.query import connect

RUN_RULES = sorted(n for n, r in load_rules().items() if r.scope == "run")
POL = load_policies(rules={n: r.scope for n, r in load_rules().items()})
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
CKPTS = {20: "/ck/p/ckpt-0000020.pt", 40: "/ck/p/ckpt-0000040.pt", 60: "/ck/p/ckpt-0000060.pt"}


def run_row(run_id, cfg=None, source="trainer", status="completed", parent=None, steps=60):
    return {"run_id": run_id, "kind": "train", "model": "gpt2-tiny", "hardware": "cpu", "status": status,
            "source": source, "steps": steps, "dataset": "arithmetic", "parent_run_id": parent,
            "config_json": json.dumps(cfg) if cfg else None, "started_at": T0}


def alert(rule, run_id="p", severity="critical", step=50, alert_id=None):
    return {"alert_id": alert_id or f"a-{rule}-{run_id}", "rule": rule, "severity": severity, "scope": "run",
            "run_id": run_id, "step_start": step, "step_end": step + 5, "start_at": T0, "detected_at": T0,
            "model": "gpt2-tiny", "hardware": "cpu", "message": "m", "action": "do something"}


def parent_cfg(**trainer):
    cfg = build_config("configs/gpt2-tiny.yaml").to_dict()
    cfg["trainer"].update(max_steps=60, **trainer)
    return cfg


def repair_row(rule, attempt, patch, samples=0, verdict="not_healed", run_id="p", step=50):
    a = alert(rule, run_id, step=step)
    return {"repair_id": repair_id(run_id, a["alert_id"]), "attempt": attempt, "action": "retrain", "patch": patch,
            "samples": samples, "verdict": verdict, "started_at": T0, "parent_run_id": run_id,
            "alert_id": a["alert_id"], "rule": rule, "severity": a["severity"], "onset_step": step,
            "alert_start_at": T0, "alert_detected_at": T0, "model": "gpt2-tiny", "hardware": "cpu"}


def state(alerts, cfg=None, runs=(), repairs=()):
    runs = {r["run_id"]: r for r in [run_row("p", cfg or parent_cfg()), *runs]}
    return State(runs=runs, alerts=list(alerts), repairs=list(repairs))


def cand_of(st, **kw):
    (c,) = candidates(st, POL, **kw)
    return c


@pytest.mark.parametrize("rule", RUN_RULES)
def test_the_first_plan_of_every_training_rule(rule):
    st = state([alert(rule)], parent_cfg(lr=0.3, grad_clip=0.0, warmup_steps=0))
    c = cand_of(st)
    assert (c.parent_run_id, c.alert["rule"], c.alert["onset_step"]) == ("p", rule, 50)
    plan = plan_next(c, st, POL, CKPTS)
    patches = POL.rules.get(rule)
    if not patches:  # throughput_drop, gpu_underutilization: a node or a pipeline to look at
        assert (plan.attempt, plan.action) == (0, "escalate") and plan.reason.startswith(f"no policy for {rule}")
        return
    first = patches[0]
    assert (plan.attempt, plan.action, plan.patch) == (1, first.action, first.name)
    if first.action == "mark_best":
        return
    assert plan.changes or first.always
    expected_start = {"before_onset": 40, "latest": 60, "scratch": None}[first.resume]
    assert plan.resume_step == expected_start and plan.resume_checkpoint == CKPTS.get(expected_start)
    for key, (before, after) in plan.changes.items():  # the child's config is the parent's with the patch
        section, name = key.split(".")
        assert plan.config[section][name] == after != before
    assert plan.samples == (plan.config["trainer"]["max_steps"] - (expected_start or 0)) * 32


def test_the_unstable_policy_in_order_and_its_limits():
    st = state([alert("divergence", step=30)], parent_cfg(lr=0.3, grad_clip=0.0, warmup_steps=0))
    c = cand_of(st)
    p1 = plan_next(c, st, POL, CKPTS)
    assert p1.patch == "halve-lr-clip" and p1.resume_step == 20  # the last checkpoint before the NaN at 30
    assert p1.changes == {"trainer.lr": [0.3, 0.15], "trainer.grad_clip": [0.0, 1.0]}
    done = [repair_row("divergence", 1, "halve-lr-clip", p1.samples, step=30)]
    st.repairs = done
    p2 = plan_next(cand_of(st), st, POL, CKPTS)
    assert (p2.attempt, p2.patch) == (2, "longer-warmup") and p2.changes["trainer.warmup_steps"] == [0, 50]
    # no healthy peers: the third patch falls back to a tenth of the LR, from scratch
    st.repairs = done + [{**done[0], "attempt": 2, "patch": "longer-warmup"}]
    p3 = plan_next(cand_of(st), st, POL, CKPTS)
    assert (p3.patch, p3.resume_step, p3.changes["trainer.lr"]) == ("peers-recipe", None, [0.3, 0.03])
    two = list(st.repairs)
    st.repairs = two + [{**done[0], "attempt": 3, "patch": "peers-recipe"}]
    p4 = plan_next(cand_of(st), st, POL, CKPTS)
    assert p4.action == "escalate" and p4.reason == ("the policy for divergence is exhausted (tried: halve-lr-clip, "
                                                     "longer-warmup, peers-recipe): a person must look")
    st.repairs = two
    object.__setattr__(strict := load_policies(rules={n: r.scope for n, r in load_rules().items()}), "max_attempts", 2)
    p3 = plan_next(cand_of(st), st, strict, CKPTS)
    assert p3.action == "escalate" and p3.reason == "2 attempt(s) made, the limit: a person must look"


def test_peers_give_the_recipe_and_sick_peers_do_not_count():
    peers = [run_row(f"h{i}", parent_cfg(lr=lr)) for i, lr in enumerate((2e-3, 3e-3, 4e-3))]
    sick = run_row("s", parent_cfg(lr=0.5))
    st = state([alert("underfitting", severity="warning", step=0), alert("loss_spike", "s", "warning")],
               parent_cfg(lr=1e-7), runs=[*peers, sick])
    (c,) = candidates(st, POL, "warning", run_ids=["p"])
    plan = plan_next(c, st, POL, CKPTS)
    assert plan.patch == "peers-lr" and plan.changes["trainer.lr"] == [1e-7, 3e-3]
    assert "trainer.lr: median of 3 healthy peers" in plan.notes


def test_a_patch_that_changes_nothing_is_skipped():
    st = state([alert("underfitting", severity="warning", step=0)], parent_cfg(lr=3e-3))
    peers = [run_row(f"h{i}", parent_cfg(lr=3e-3)) for i in range(2)]
    st.runs.update({r["run_id"]: r for r in peers})
    plan = plan_next(cand_of(st, min_severity="warning"), st, POL, CKPTS)
    assert plan.patch == "raise-lr" and plan.notes[0].startswith("skipped peers-lr")


def test_the_budget_stops_a_repair():
    st = state([alert("plateau", severity="warning")])
    st.repairs = [repair_row("plateau", 1, "extend-schedule", 150 * 32)]
    pol = load_policies(rules={n: r.scope for n, r in load_rules().items()})
    object.__setattr__(pol, "budget_runs", 3.0)
    plan = plan_next(cand_of(st), st, pol, CKPTS)  # peers-lr from scratch: 60 steps more, 210 of 180 allowed
    assert plan.action == "escalate" and plan.reason.startswith("budget spent: 4,800 of 3 x the parent's 1,920")


def test_overfitting_stops_at_the_best_checkpoint_first():
    st = state([alert("overfitting", severity="warning", step=50)])
    plan = plan_next(cand_of(st, min_severity="warning"), st, POL, CKPTS)
    assert (plan.action, plan.patch, plan.config) == ("mark_best", "stop-at-best", None)


def test_imported_runs_get_the_advice_not_a_restart():
    st = state([alert("divergence")])
    st.runs["p"] = run_row("p", None, source="hf-trainer")
    plan = plan_next(cand_of(st), st, POL, CKPTS)
    assert plan.action == "advise" and plan.attempt == 0
    assert plan.reason.startswith("hf-trainer run: not restarted automatically. do something")
    assert "1. halve-lr-clip: from before onset, set trainer.lr={\"times\":0.5}" in plan.reason


def test_which_alert_a_run_gets_and_which_runs_get_none():
    # causes before symptoms: the blow-up, not the stall it left
    st = state([alert("underfitting", severity="warning"), alert("loss_spike", severity="warning"),
                alert("throughput_drop", severity="warning")])
    assert cand_of(st, min_severity="warning").alert["rule"] == "loss_spike"
    assert candidates(st, POL) == []  # the policies' min_severity is critical
    # a parent still running waits; a repair's child is never repaired itself; one repair per run
    running = state([alert("divergence")], runs=[run_row("c", parent_cfg(), parent="p")])
    running.runs["p"]["status"] = "running"
    running.alerts.append(alert("divergence", "c"))
    (c,) = candidates(running, POL)
    assert c.parent_run_id == "p" and c.waiting == "the parent is still running"
    done = state([alert("divergence")], repairs=[repair_row("divergence", 1, "halve-lr-clip", verdict="healed")])
    assert candidates(done, POL) == []


def test_attempt_keys_are_stable():
    rid = repair_id("p", "a1")
    assert rid == repair_id("p", "a1") != repair_id("p", "a2")
    aid = attempt_id(rid, 1)
    assert aid == attempt_id(rid, 1) != attempt_id(rid, 2)
    assert child_run_id("p" * 88, 1, aid) == child_run_id("p" * 88, 1, aid) and len(child_run_id("p" * 88, 1, aid)) <= 88


# --- real processes -------------------------------------------------------------------------------

TINY = ["--trainer.batch_size=8", "--trainer.ckpt_interval=10", "--trainer.eval_interval=10",
        "--telemetry.system_interval_s=0", "--trainer.log_interval=10"]


def group(pgid: int) -> list[int]:
    """The live processes of a process group (an `mhw repair` and the training child it started)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.getpgid(int(d)) == pgid and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(d))
    return found


def mhw(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mhw", *args], cwd=os.path.dirname(os.path.dirname(__file__)) + "/..",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


@pytest.mark.slow
def test_two_processes_never_repair_one_run_at_once_and_a_killed_repair_resumes(lake_root, tmp_path, monkeypatch):
    from pipelines import jobs
    from pipelines.diagnose import diagnose

    monkeypatch.setenv("MHW_CHECKPOINTS", str(tmp_path / "ck"))
    policies = tmp_path / "repair.yaml"
    policies.write_text("limits: {max_attempts: 1}\n")
    monkeypatch.setenv("MHW_REPAIR", str(policies))
    jobs.train("configs/gpt2-tiny.yaml", "poisoned", lake_root=lake_root, steps=40, checkpoints_root=str(tmp_path / "ck"),
               overrides=[*TINY, "--trainer.inject_nan_at_step=30"])
    diagnose(lake_root, notify_alerts=False)  # divergence at step 30: critical

    env = dict(os.environ)
    a, b = mhw("repair", "--run", "poisoned", "--apply", env=env), mhw("repair", "--run", "poisoned", "--apply", env=env)
    child_ckpt = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # whichever won the lock trains the child; kill it past the child's ckpt 30
        found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "ck") for f in fs
                 if "-fix1-" in d and f == "ckpt-0000030.pt"]
        if found:
            child_ckpt = found[0]
            break
        assert a.poll() is None or b.poll() is None
        time.sleep(0.05)
    assert child_ckpt, "the child never reached its checkpoint 30"
    # freeze both at once (the child has 10 steps left, a fraction of a second), then kill the winner
    # and its training child mid-attempt; the loser stood back at once, and says so
    for p in (a, b):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGSTOP)
    loser, winner = (a, b) if len(group(a.pid)) < len(group(b.pid)) else (b, a)  # the winner's has the trainer
    os.killpg(winner.pid, signal.SIGKILL)
    winner.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(loser.pid, signal.SIGCONT)
    assert loser.wait(60) == 0 and "another process is repairing it; skipped" in loser.stderr.read()

    con = connect(serving_path="")
    assert con.execute("select attempt, verdict from repairs").fetchall() == [(1, "running")]
    child = con.execute("select child_run_id from repairs").fetchall()[0][0]
    # the next process takes the orphaned attempt over: same key, same child, resumed from its checkpoint
    c = mhw("repair", "--run", "poisoned", "--apply", env=env)
    out, err = c.communicate(timeout=600)
    assert c.returncode == 0, err
    assert f"resuming attempt 1 (halve-lr-clip), child {child}" in err
    con = connect(serving_path="")
    rows = con.execute("select attempt, verdict, child_run_id, resume_step from repairs").fetchall()
    assert rows == [(1, "escalated", child, 20)]  # the NaN comes back at 30: not healed, and 1 attempt is the limit
    assert con.execute("select count(*) from runs where parent_run_id = 'poisoned'").fetchall() == [(1,)]
    assert con.execute("select count(*), count(distinct step), min(step), max(step) from train_steps where run_id = ?",
                       [child]).fetchall() == [(20, 20, 20, 39)]


def test_the_command_line_plans_advises_and_lists(lake_root, tmp_path, monkeypatch, capsys):
    """On a lake holding a run this project trained and one imported from HF, both flagged: the plan
    reads only; --apply advises the imported run (no training) and leaves the other to the trainer
    (here it would train: it is left out with --run); --status lists the repairs table."""
    import pyarrow as pa

    from mhw.cli import main
    from pipelines.alerts import alert_key, write_alerts
    from warehouse.writer import Lake

    monkeypatch.setenv("MHW_CHECKPOINTS", str(tmp_path / "ck"))
    lk = Lake(lake_root)
    runs = [run_row("ours", parent_cfg(lr=0.3, grad_clip=0.0)), run_row("theirs", None, source="hf-trainer")]
    lk.write("runs", pa.Table.from_pylist([{k: v for k, v in r.items()} for r in runs]), "runs")
    alerts = [{**alert("divergence", r), "date": T0.date()} for r in ("ours", "theirs")]
    write_alerts(lk, alerts, {alert_key("divergence", "gpt2-tiny", "cpu")})

    assert main(["repair", "--format", "json"]) == 0
    plans = {p["run_id"]: p for p in json.loads(capsys.readouterr().out)}
    assert plans["ours"]["plan"] == "attempt 1: halve-lr-clip from scratch: trainer.lr 0.3 -> 0.15, trainer.grad_clip 0.0 -> 1.0"
    assert plans["ours"]["notes"][0].startswith("no checkpoint before onset on disk")
    assert plans["theirs"]["plan"].startswith("advise: hf-trainer run: not restarted automatically")
    assert connect(serving_path="").execute("select count(*) from repairs").fetchall() == [(0,)]  # plans only

    assert main(["repair", "--run", "theirs", "--apply"]) == 0
    assert "theirs: advised (attempt 0)" in capsys.readouterr().out
    assert main(["repair", "--run", "theirs", "--apply"]) == 0  # answered: nothing more to do
    assert "nothing to repair for theirs" in capsys.readouterr().out
    rows = connect(serving_path="").execute("select parent_run_id, attempt, action, verdict, notified_at is not null "
                                            "from repairs").fetchall()
    assert rows == [("theirs", 0, "advise", "advised", True)]
    from warehouse import audit  # one audit entry for the --apply that wrote, none for the one with nothing to do
    (entry,) = [e for e in audit.read(lake_root) if e["command"] == "repair"]
    assert entry["status"] == "ok" and json.loads(entry["counts"])["advised"] == 1
    assert main(["repair", "--status", "--format", "csv"]) == 0
    assert "advised" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {max_attempts: -1}\n")
    assert main(["repair", "--policies", str(bad)]) == 2
    assert f"mhw repair: {bad}: limits.max_attempts: must be between 1 and 100" in capsys.readouterr().err
