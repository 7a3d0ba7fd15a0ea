"""The diagnostics on real public training logs (../shared/data/real, labeled in its MANIFEST.md): each
rule change fires on a real log that shows its fault and stays quiet on real healthy runs. One lake
holds every run; one DuckDB diagnose computes them all."""
from pathlib import Path

import pytest

from pipelines.diagnose import diagnose
from warehouse.cli import main as mhw

REPO = Path(__file__).resolve().parents[2]
HF = REPO.parent / "shared" / "data" / "real" / "hf_trainer_state"

pytestmark = [pytest.mark.skipif(not HF.is_dir(), reason="shared/data/real is not beside the repo"),
              pytest.mark.slow]  # a lake of every real log and one of real trainings, diagnosed

# run id -> the files of one run (a checkpoint series is one run)
RUNS = {
    "p4p4n1ck": ["P4P4N1CK--whisper-large-v2-japanese-5k-steps--trainer_state.json",
                 "P4P4N1CK--whisper-large-v2-japanese-5k-steps--last-checkpoint.json"],
    "fabiom91": ["fabiom91--ConvNeXt_AI_Competition_Platform--model.json"],
    "shlomota": ["shlomota--taami--checkpoint-5000.json"],
    "leedongque": [f"LEEDONGQUE--serverlog--checkpoint-{n}.json" for n in (2000, 4000, 6000)],
    "haoken123": ["HaoKen123--ChuyenDE--checkpoint-1500.json"],
    "nijat": ["NijatZeynalov--mT5-based-azerbaijani-news-summarize--trainer_state.json"],
    "subro608": [f"subro608--Deep_learning_Bert_project2--checkpoint-{n}.json" for n in (500, 1000, 1500, 2000, 2400)],
    "akanksha": ["akanksha28pathak--SmolVLM_EndoscopyQA--trainer_state.json"],
    "akhmetvaleev": ["akhmetvaleev-ruslan--bashkir-language-audio2text--trainer_state.json"],
    "sygoat": [f"syGOAT--Mistral-v0.2-Translator-bf16--{n}.json"
               for n in ("checkpoint-500", "checkpoint-4000", "checkpoint-8500", "final")],
    "wtwong316": [f"wtwong316--alpaca-bitcoin-tweets-sentiment--checkpoint-{n}.json" for n in (200, 250, 300)],
    "hangeryang": ["HangerYang--Star--trainer_state.json"],
    "seangormann": ["SeanGormann--llm_recovery--checkpoint-200.json"],
    "yuanhuanghuang": ["yuanhuanghuang--quality--lrqa-init-py-trainer_state.json"],
    "odia": [f"shantipriyap--Odia-OCR--v2-checkpoint-{n}.json" for n in (50, 100, 150, 200)],
}
HEALTHY = ("leedongque", "haoken123", "nijat", "subro608", "akanksha", "akhmetvaleev", "sygoat", "wtwong316",
           "hangeryang")


@pytest.fixture(scope="module")
def alerts(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("real") / "lake")
    for run_id, files in RUNS.items():
        assert mhw(["ingest", *(str(HF / f) for f in files), "--lake", root, "--run-id", run_id,
                    "--model", run_id, "--hardware", "gpu"]) == 0
    found = {}
    for a in diagnose(root, notify_alerts=False).alerts:
        found.setdefault(a["run_id"], []).append(a)
    return found


def rules(alerts, run_id, at_least="info"):
    levels = ("info", "warning", "critical")
    return {a["rule"] for a in alerts.get(run_id, []) if levels.index(a["severity"]) >= levels.index(at_least)}


@pytest.mark.parametrize("run_id", HEALTHY)
def test_healthy_runs_get_no_warning(alerts, run_id):
    # HangerYang: 8 grad-norm logs > 5x the median while the loss falls 24.8 -> 3.8 (one-step outliers);
    # LEEDONGQUE: eval loss converged by ~700 and only jitters (0.024-0.034) for 5000 steps after
    assert rules(alerts, run_id, "warning") == set()


@pytest.mark.parametrize("run_id, best_step, onset", [
    ("p4p4n1ck", 1000, 2000),    # eval once per 1000 steps: 0.321 -> 0.420 while train 0.009 -> 0.0002
    ("shlomota", 2000, 2050),    # train logged every 500 steps, eval every 50: 1.095 -> 1.463
    ("fabiom91", 1280, 1408),    # noisy eval 0.92 -> 2.51
])
def test_overfitting_is_caught_from_the_best_checkpoint(alerts, run_id, best_step, onset):
    over = [a for a in alerts.get(run_id, []) if a["rule"] == "overfitting"]
    assert len(over) == 1 and over[0]["severity"] == "warning"
    assert over[0]["baseline"] == f"step {best_step}" and over[0]["step_start"] == onset


def test_repeated_loss_spikes_warn_and_a_converged_loss_at_four_decimals_does_not_spike(alerts):
    # SeanGormann (DPO, every step): loss median ~0.005 with repeated jumps to 0.4-1.0
    assert "loss_spike" in rules(alerts, "seangormann", "warning")
    # P4P4N1CK: the train loss sits at 0.0002-0.0005, logged to 4 decimals: 0.0014 is not a spike
    assert "loss_spike" not in rules(alerts, "p4p4n1ck")


def test_runs_that_never_learn_are_underfitting(alerts):
    # yuanhuanghuang: train and eval at ln 4 = 1.386 for 20 epochs (4-way multiple choice at chance)
    assert {"underfitting", "plateau"} <= rules(alerts, "yuanhuanghuang")
    # Odia OCR: loss 0.0 and grad_norm 0.0 in every log: nothing is learned, nothing flows back
    assert {"underfitting", "vanishing_gradients"} <= rules(alerts, "odia", "warning")


def test_each_prefixed_eval_set_is_checked_for_overfitting(tmp_path):
    """A 30-epoch Trainer log with one log per epoch and six eval sets (eval_g0_loss ... eval_g5_loss,
    1.11 -> 1.9 while train loss falls to 0.07; built from the HF format, tests/fixtures/hf): each set
    is its own suite and each overfits."""
    root = str(tmp_path / "lake")
    fixture = REPO / "tests" / "fixtures" / "hf" / "prefixed-eval-sets.trainer_state.json"
    assert mhw(["ingest", str(fixture), "--lake", root, "--model", "prefixed", "--hardware", "gpu"]) == 0
    over = [a for a in diagnose(root, notify_alerts=False).alerts if a["rule"] == "overfitting"]
    assert sorted(a["suite"] for a in over) == [f"hf-eval-g{i}" for i in range(6)]
    assert all(a["observed"] > 1.5 * a["expected"] for a in over)


# --- real CPU trainings of this project's models (bench/realruns, the tuning half of the matrix) -------

MATRIX = REPO / "tests" / "fixtures" / "realruns"
TUNING = ["gpt2-healthy-s1", "gpt2-healthy-s2", "bert-healthy-s1", "bert-healthy-s2", "gpt2-long-s1",
          "gpt2-bf16-s1", "gpt2-sparse10-s1", "gpt2-lr0.3-s1", "gpt2-lr1e-7-s1", "gpt2-lr1e-7-both-s2",
          "gpt2-n64-s1", "bert-n64-s1", "gpt2-stall-s1", "gpt2-minlr-s1", "gpt2-resume600-s1", "gpt2-kill-s1",
          "gpt2-bs1-s1"]


def alerts_by_run(root: str, names: list[str]) -> dict[str, list[dict]]:
    """Ingest these matrix runs into one lake (each run has the others as peers), diagnose it, and
    return each run's alerts by its matrix name."""
    import json

    ids = {}
    for name in names:
        path = MATRIX / f"{name}.jsonl"
        with open(path) as f:
            ids[json.loads(f.readline())["run_id"]] = name
        assert mhw(["ingest", str(path), "--lake", root]) == 0
    found = {n: [] for n in names}
    for a in diagnose(root, notify_alerts=False).alerts:
        if a["run_id"] in ids:
            found[ids[a["run_id"]]].append(a)
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The alerts of each run, by matrix name: all in one lake, so each run has its peers."""
    return alerts_by_run(str(tmp_path_factory.mktemp("trained") / "lake"), TUNING)


@pytest.mark.parametrize("name", ["gpt2-healthy-s1", "gpt2-healthy-s2", "bert-healthy-s1", "bert-healthy-s2",
                                  "gpt2-long-s1", "gpt2-bf16-s1", "gpt2-sparse10-s1", "gpt2-resume600-s1"])
def test_healthy_trainings_get_no_training_warning(trained, name):
    # their grad norm rises 10-30x late in the run while the loss falls; gpt2 seed 1 has a one-step
    # loss spike (2.6 -> 14.7) on its way off the unigram plateau, recovered from at once
    serious = {a["rule"] for a in trained[name] if a["severity"] != "info" and a["rule"] != "throughput_drop"}
    assert serious == set(), [a["message"] for a in trained[name]]
    assert "exploding_gradients" not in {a["rule"] for a in trained[name]}


def test_a_one_step_spike_a_healthy_run_recovers_from_is_information(trained):
    spikes = [a for a in trained["gpt2-healthy-s1"] if a["rule"] == "loss_spike"]
    assert len(spikes) == 1 and spikes[0]["severity"] == "info" and spikes[0]["observed"] > 5 * spikes[0]["expected"]


def test_mistakes_in_the_config_are_caught(trained):
    def rules(name):
        return {a["rule"] for a in trained[name]}

    # LR 0.3, no warmup, no clipping: blows up to 29.7 at step 3, then sits on the 2.62 plateau its
    # healthy twins leave; its grad norm collapses with it, which is not vanishing gradients
    assert {"loss_spike", "underfitting"} <= rules("gpt2-lr0.3-s1")
    assert "vanishing_gradients" not in rules("gpt2-lr0.3-s1")
    # LR 1e-7 with min_lr lowered too: flat at 5.53 for 300 steps
    assert "underfitting" in rules("gpt2-lr1e-7-both-s2")
    # LR lowered below the YAML's min_lr: the cosine climbs 3x after warmup
    assert {"lr_schedule_anomaly", "underfitting"} <= rules("gpt2-minlr-s1")
    assert {"lr_schedule_anomaly", "underfitting"} <= rules("gpt2-lr1e-7-s1")
    # 64 examples: memorized (train 0.008) while validation climbs to 7.4; converged grads are fine
    assert "overfitting" in rules("gpt2-n64-s1") and "vanishing_gradients" not in rules("gpt2-n64-s1")
    assert "overfitting" in rules("bert-n64-s1")  # 4 evals: 0.22 at step 200, 1.07 at 300
    # streamed from a named pipe at 12 kB/s: 78 % of the step time waiting for data
    assert "data_stall" in rules("gpt2-stall-s1")
    # batch size 1: never leaves the plateau
    assert "underfitting" in rules("gpt2-bs1-s1")


def _underfitting_of(root: str, names: list[str]) -> dict[str, set[str]]:
    return {n: {a["baseline"] for a in alerts if a["rule"] == "underfitting"}
            for n, alerts in alerts_by_run(root, names).items()}


def test_a_run_as_flat_as_its_peers_at_the_same_steps_is_not_underfitting(tmp_path):
    # bert-kill-s3 was SIGKILLed at step 140, its last logs still on bert's ln 2 plateau (0.70 -> 0.65),
    # where every healthy bert seed is at those steps: alone, it never learned; beside its peers, it is
    # where this model is by then. The LR blow-up and the climbing schedule stay flat far above them.
    alone = _underfitting_of(str(tmp_path / "alone"), ["bert-kill-s3"])
    assert alone["bert-kill-s3"] == {"its own first logged losses"}
    peers = ["bert-healthy-s1", "bert-healthy-s2", "bert-healthy-s3", "bert-kill-s3", "bert-lr0.3-s3", "bert-minlr-s3"]
    found = _underfitting_of(str(tmp_path / "peers"), peers)
    assert found["bert-kill-s3"] == set()
    assert found["bert-lr0.3-s3"] and found["bert-minlr-s3"]
    # (bert-healthy-s3, validation 0.24 at step 300 against its two better seeds' 0.14-0.15, is behind
    # them by more than max_peer_gap: the seed spread of a 300-step tiny model, bench/RESULTS.md)
    assert not (found["bert-healthy-s1"] or found["bert-healthy-s2"])
