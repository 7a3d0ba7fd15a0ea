"""conf/repair.yaml loads, every key it patches is a key of the trainer's config, bad policies fail with
the file, rule, patch and key named, and the value expressions compute what the grammar says."""
import pytest

from model.train import build_config
from pipelines.diagnose import load_rules
from pipelines.repair_policy import DEFAULT_POLICIES, PolicyError, apply_patch, load_policies

RULES = {name: r.scope for name, r in load_rules().items()}


def overlay(tmp_path, text: str) -> str:
    p = tmp_path / "repair.yaml"
    p.write_text(text)
    return str(p)


def test_the_shipped_policies_load_and_patch_real_config_keys():
    pol = load_policies(rules=RULES)
    cfg = build_config("configs/gpt2-tiny.yaml").to_dict()
    keys = set(build_config().keys())
    assert pol.min_severity == "critical" and pol.max_attempts == 3
    for rule, patches in pol.rules.items():
        assert RULES[rule] == "run"
        for p in patches:
            assert set(p.set) <= keys, f"{rule}.{p.name} patches keys the trainer does not have"
            if p.action == "retrain":
                child, changes, _ = apply_patch(p, cfg, {"step_start": 40}, [], pol.min_peers)
                assert changes or p.always, f"{rule}.{p.name} changes nothing on gpt2-tiny's config"
    # every training rule is in the priority list; the infrastructure rules have no policy (a person)
    assert set(pol.priority) == {r for r, s in RULES.items() if s == "run"}
    assert {"throughput_drop", "gpu_underutilization"}.isdisjoint(pol.rules)


@pytest.mark.parametrize("text, message", [
    ("policies: {no_such_rule: []}", "policies.no_such_rule: no such rule in sql/diagnostics"),
    ("policies: {eval_regression: [{name: a, why: b, set: {trainer.lr: 1}}]}", "is a fleet rule"),
    ("policies: {divergence: [{name: x, why: y, set: {trainer.lr: {times: nope}}}]}",
     "policies.divergence[0] (x).set.trainer.lr.times: must be a finite number, got 'nope'"),
    ("policies: {divergence: [{name: x, why: y, set: {trainer.lr: {halve: true}}}]}", "unknown operation(s) ['halve']"),
    ("policies: {divergence: [{name: x, why: y, set: {telemetry.lake: /tmp}}]}",
     "'telemetry.lake' is not a dotted key of trainer, data, model"),
    ("policies: {divergence: [{name: x, why: y, resume: yesterday, set: {trainer.lr: 1}}]}", "resume: must be one of"),
    ("policies: {divergence: [{name: x, why: y}]}", "a retrain patch must change at least one key"),
    ("policies: {overfitting: [{name: x, why: y, action: mark_best, set: {trainer.lr: 1}}]}", "mark_best trains nothing"),
    ("policies: {divergence: [{name: x, why: y, set: {trainer.lr: {of: alert.nope}}}]}", ".of: must be a dotted config key"),
    ("policies: {divergence: [{name: x, why: y, set: {trainer.lr: {fallback: 1}}}]}", "only a peers: value has a fallback"),
    ("policies: {divergence: [{name: Bad Name, why: y, set: {trainer.lr: 1}}]}", "name: must be a slug"),
    ("policies: {divergence: [{name: x, why: y, set: {trainer.lr: 1}}, {name: x, why: z, set: {trainer.lr: 2}}]}",
     "patch names repeat"),
    ("limits: {max_attempts: 0}", "limits.max_attempts: must be between 1 and 100"),
    ("limits: {retries: 3}", "limits takes"),
    ("min_severity: loud", "min_severity: must be one of"),
    ("priority: [divergence, latency_slo_breach]", "['latency_slo_breach'] are not training-run rules"),
    ("surprise: 1", "unknown setting(s) ['surprise']"),
    ("[1, 2]", "must be a mapping of settings"),
])
def test_bad_policies_are_refused_with_the_place_named(tmp_path, text, message):
    path = overlay(tmp_path, text)
    with pytest.raises(PolicyError) as e:
        load_policies(path, rules=RULES)
    assert message in str(e.value)
    assert str(e.value).startswith(path)


def test_an_overlay_keeps_what_it_leaves_out_and_null_removes_a_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("MHW_REPAIR", overlay(tmp_path, "min_severity: warning\npolicies: {divergence: null}\n"))
    pol = load_policies(rules=RULES)
    assert pol.min_severity == "warning" and "divergence" not in pol.rules
    assert pol.rules["loss_spike"] == load_policies(str(DEFAULT_POLICIES), rules=RULES).rules["loss_spike"]


def patch_of(tmp_path, spec: str):
    pol = load_policies(overlay(tmp_path, f"policies: {{divergence: [{{name: p, why: w, set: {spec}}}]}}"), rules=RULES)
    return pol.rules["divergence"][0]


CFG = {"trainer": {"lr": 0.3, "min_lr": 3e-4, "warmup_steps": 0, "max_steps": 300, "grad_clip": 0.0, "batch_size": 32},
       "model": {"dropout": 0.0}, "data": {"prefetch_batches": 0}}


@pytest.mark.parametrize("spec, expect", [
    ("{trainer.lr: {times: 0.5}}", {"trainer.lr": [0.3, 0.15]}),
    ("{trainer.lr: {times: 3}}", {"trainer.lr": [0.3, 0.9]}),  # 0.9, not 0.8999999999999999
    ("{trainer.warmup_steps: {times: 2, at_least: 50}}", {"trainer.warmup_steps": [0, 50]}),
    ("{trainer.batch_size: {times: 0.3, at_least: 1}}", {"trainer.batch_size": [32, 10]}),  # ints stay ints
    ("{trainer.grad_clip: 1.0, trainer.max_steps: {plus: 100, at_most: 350}}",
     {"trainer.grad_clip": [0.0, 1.0], "trainer.max_steps": [300, 350]}),
    ("{trainer.lr: {times: 0.1}, trainer.min_lr: {at_most: {of: trainer.lr, times: 0.1}}}",  # reads the patched lr
     {"trainer.lr": [0.3, 0.03]}),  # min_lr 3e-4 is already at most 3e-3: unchanged
    ("{trainer.lr: {times: 0.001}, trainer.min_lr: {at_most: {of: trainer.lr, times: 0.1}}}",
     {"trainer.lr": [0.3, 0.0003], "trainer.min_lr": [3e-4, 3e-5]}),
    ("{trainer.max_steps: {of: alert.step_start}}", {"trainer.max_steps": [300, 40]}),
    ("{trainer.lr: 0.3}", {}),  # no change: the plan skips such a patch
])
def test_value_expressions(tmp_path, spec, expect):
    _, changes, _ = apply_patch(patch_of(tmp_path, spec), CFG, {"step_start": 40}, [], 2)
    assert changes == expect


def test_peers_give_the_median_and_too_few_peers_the_fallback(tmp_path):
    p = patch_of(tmp_path, "{trainer.lr: {peers: median, fallback: {times: 10}}}")
    peers = [{"trainer": {"lr": v}} for v in (1e-3, 3e-3, 2e-3)]
    cfg, changes, notes = apply_patch(p, CFG, {}, peers, 2)
    assert changes == {"trainer.lr": [0.3, 2e-3]} and notes == ["trainer.lr: median of 3 healthy peers"]
    assert apply_patch(p, CFG, {}, peers[:1], 2)[1] == {"trainer.lr": [0.3, 3.0]}
    with pytest.raises(PolicyError, match="1 healthy peer.*2 needed, and no fallback"):
        apply_patch(patch_of(tmp_path, "{trainer.lr: {peers: median}}"), CFG, {}, peers[:1], 2)


def test_a_patch_on_a_key_the_run_lacks_or_a_non_number_fails_clearly(tmp_path):
    with pytest.raises(PolicyError, match=r"divergence.p.set.trainer.nope: 'trainer.nope' is not a key of the run's config"):
        apply_patch(patch_of(tmp_path, "{trainer.nope: 1}"), CFG, {}, [], 2, where="divergence.")
    with pytest.raises(PolicyError, match="times needs a number, the value is None"):
        apply_patch(patch_of(tmp_path, "{trainer.lr: {times: 2}}"), {"trainer": {"lr": None}}, {}, [], 2)
