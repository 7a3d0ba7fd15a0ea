"""A real (tiny, CPU) HF Trainer run with MHWCallback (mhw/integrations/hf.py) writes the same telemetry
as `mhw train`; its other numbers land in step_metrics; over a collector too."""
import math

import pytest
import torch

pytest.importorskip("accelerate", reason="transformers.Trainer needs the `accelerate` package")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from model import data  # noqa: E402
from mhw.integrations.hf import MHWCallback  # noqa: E402
from warehouse.query import connect  # noqa: E402
from warehouse.schemas import RUN_ID_CHARS  # noqa: E402


class Windows(torch.utils.data.Dataset):
    """Arithmetic windows in the layout HF causal LMs expect (labels = input_ids; the model shifts)."""

    def __init__(self, lm: data.LMData):
        self.w = lm.windows[:, :-1]

    def __len__(self):
        return len(self.w)

    def __getitem__(self, i):
        return {"input_ids": self.w[i], "labels": self.w[i]}


def run_trainer(tmp_path, lake_root, callback, name_or_path: str | None = None, **args):
    cfg = data.default_config()
    cfg.n_examples = 600
    tok = data.ByteTokenizer()
    train_ds, val_ds = data.build(cfg, "lm", tok, 32)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id))
    if name_or_path is not None:  # what from_pretrained(<folder or hub name>) leaves there
        model.config.name_or_path = name_or_path
    targs = TrainingArguments(
        output_dir=str(tmp_path / "hf-out"), max_steps=5, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=3e-3, logging_steps=1, eval_strategy="steps", eval_steps=5, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, logging_nan_inf_filter=False, **args)
    trainer = Trainer(model=model, args=targs, train_dataset=Windows(train_ds),
                      eval_dataset=torch.utils.data.Subset(Windows(val_ds), range(8)), callbacks=[callback])
    trainer.train()
    return trainer


def test_trainer_with_the_callback_writes_runs_steps_and_eval_rows(tmp_path, lake_root):
    cb = MHWCallback(model_slug="hf-gpt2-tiny", run_id="hf-run", dataset="arithmetic", system_interval_s=0.05)
    run_trainer(tmp_path, lake_root, cb)
    con = connect(lake_root=lake_root, serving_path="")
    steps = con.execute("select step, loss, lr, grad_norm, epoch, step_time_ms, samples_per_s, cpu_util, "
                        "precision, model from train_steps order by step").fetchall()
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5]  # HF's global_step, as logged
    for s in steps:
        assert all(v is not None for v in s), s
        assert math.isfinite(s[1]) and s[2] > 0 and s[8] == "fp32" and s[9] == "hf-gpt2-tiny"
    assert con.execute("select min(samples_per_s * step_time_ms / 1000) from train_steps").fetchone()[0] == \
        pytest.approx(4)
    evals = dict(con.execute("select metric, value from eval_results where suite = 'validation' "
                             "and checkpoint_step = 5 and train_run_id = 'hf-run'").fetchall())
    assert "loss" in evals and math.isfinite(evals["loss"]) and "runtime" not in evals
    run = con.execute("select kind, source, status, steps, model_family, n_params, precision, dataset, "
                      "final_loss, gpu_count from runs").fetchall()
    assert len(run) == 1
    kind, source, status, n_steps, family, n_params, precision, dataset, final, gpus = run[0]
    assert (kind, source, status, n_steps, family, precision, dataset, gpus) == \
        ("train", "hf-trainer", "completed", 5, "gpt2", "fp32", "arithmetic", 0)
    assert n_params > 10_000 and final == pytest.approx(steps[-1][1])
    assert con.execute("select count(*) from system_samples where run_id = 'hf-run'").fetchone()[0] >= 2


def _steps_as_logged(trainer) -> dict[int, dict]:
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def test_the_other_numbers_of_a_log_are_step_metrics_and_the_rows_are_the_logs(tmp_path, lake_root):
    """A log's numbers beyond the columns (here HF's num_input_tokens_seen) are step_metrics rows of
    the step; every value is the one Trainer logged, exactly."""
    cb = MHWCallback(model_slug="hf-gpt2-tiny", run_id="hf-extra", system_interval_s=None)
    trainer = run_trainer(tmp_path, lake_root, cb, include_num_input_tokens_seen=True)
    logged = _steps_as_logged(trainer)
    con = connect(lake_root=lake_root, serving_path="")
    rows = con.execute("select step, loss, lr, grad_norm from train_steps").fetchall()
    assert {s: (loss, lr, gn) for s, loss, lr, gn in rows} == \
        {s: (h["loss"], h["learning_rate"], h["grad_norm"]) for s, h in logged.items()}
    extra = con.execute("select step, metric, value from step_metrics order by step, metric").fetchall()
    columns = ("loss", "learning_rate", "grad_norm", "epoch", "step")
    assert extra == sorted((s, k, float(v)) for s, h in logged.items() for k, v in h.items() if k not in columns)
    assert {m for _, m, _ in extra} >= {"num_input_tokens_seen"}


@pytest.mark.slow  # a real Trainer and a real collector process
def test_a_trainer_run_over_the_collector_lands_the_same_rows(tmp_path, lake_root, collector, monkeypatch):
    monkeypatch.setenv("MHW_COLLECTOR_TOKEN", collector.token)
    monkeypatch.delenv("MHW_LAKE")  # this process cannot write the lake: only the collector does
    cb = MHWCallback(model_slug="hf-gpt2-tiny", run_id="hf-http", system_interval_s=0.05, collector=collector.url)
    trainer = run_trainer(tmp_path, lake_root, cb)
    logged = _steps_as_logged(trainer)
    con = connect(lake_root=lake_root, serving_path="")
    got = dict(con.execute("select step, loss from train_steps where run_id = 'hf-http'").fetchall())
    assert got == {s: h["loss"] for s, h in logged.items()}
    assert con.execute("select source, status, steps from runs").fetchall() == [("hf-trainer", "completed", 5)]
    assert con.execute("select count(*) from eval_results where checkpoint_step = 5").fetchone()[0] >= 1
    assert con.execute("select count(*) from quarantine").fetchone()[0] == 0


@pytest.mark.parametrize("name_or_path, model", [
    ("./", "gpt2"),  # a model saved in the current folder: no name in the path, the architecture names it
    ("org/" + "x" * 300, "org--" + "x" * 106),  # a long one keeps a visible hash (checked below), not cut to collide
])
def test_the_model_name_comes_from_name_or_path_and_is_never_made_up_or_cut(tmp_path, lake_root, name_or_path, model):
    run_trainer(tmp_path, lake_root, MHWCallback(system_interval_s=0.05), name_or_path=name_or_path)
    con = connect(lake_root=lake_root, serving_path="")
    ((got, run_id, steps),) = con.execute("select model, run_id, (select count(*) from train_steps) from runs").fetchall()
    assert got.startswith(model) and steps == 5
    if len(name_or_path) > 128:
        assert len(got) == 128 and got[111] == "-"  # <111>-<16 hex>
        assert len(run_id) == RUN_ID_CHARS and run_id.startswith("org--xxx")  # room for Telemetry's keys
    else:
        assert got == model and run_id.startswith("gpt2-") and run_id.endswith("-hf")


CRASHING_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from pathlib import Path
from transformers import TrainerCallback
from mhw.integrations.hf import MHWCallback
from test_hf import run_trainer


class Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")


from transformers import Trainer
real_init = Trainer.__init__
def init(self, *a, callbacks=None, **k):
    real_init(self, *a, callbacks=list(callbacks) + [Boom()], **k)
Trainer.__init__ = init
run_trainer(Path({tmp!r}), {lake!r}, MHWCallback(lake_root={lake!r}, model_slug="hf-gpt2-tiny", run_id="hf-crash",
                                                  system_interval_s=0.05))
"""


@pytest.mark.slow  # a real Trainer, crashed
def test_a_crashed_trainer_run_is_marked_failed_at_its_last_step(tmp_path, lake_root):
    """Trainer calls no callback on a crash: the exit hook marks the run 'failed' and flushes its rows."""
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    script = CRASHING_SCRIPT.format(repo=str(Path(tests).parents[1]), tests=tests, tmp=str(tmp_path), lake=lake_root)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "illegal memory access" in proc.stderr, proc.stderr[-2000:]
    con = connect(lake_root=lake_root, serving_path="")
    assert con.execute("select status, steps, ended_at is not null from runs where run_id = 'hf-crash'").fetchall() \
        == [("failed", 2, True)]
    assert [s for s, in con.execute("select step from train_steps where run_id = 'hf-crash' order by step").fetchall()] \
        == [1, 2]
