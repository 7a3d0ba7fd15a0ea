"""A real Lightning Trainer (CPU) with MHWLogger (mhw/integrations/lightning.py): every step's row,
the validation and test results, the runs row, exactly as Lightning logged them."""
import math

import pytest
import torch

L = pytest.importorskip("lightning")

from mhw.integrations.lightning import MHWLogger  # noqa: E402
from warehouse.query import connect  # noqa: E402


class Recorder(L.pytorch.loggers.Logger):
    """What Lightning hands a logger, kept to compare the lake with."""

    name, version = "recorder", "0"

    def __init__(self):
        super().__init__()
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, nan_at: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, i):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.hparams.nan_at is not None and self.global_step >= self.hparams.nan_at:
            loss = loss * float("nan")
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("weight_norm", self.net[0].weight.norm())  # not a column: a step metric
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def test_step(self, batch, i):
        x, y = batch
        self.log("test_mae", (self.net(x) - y).abs().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer(logger, epochs=2):
    return L.Trainer(max_epochs=epochs, logger=[logger, rec := Recorder()], log_every_n_steps=1, accelerator="cpu",
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False), rec


def test_a_lightning_fit_and_test_land_exactly(lake_root):
    torch.manual_seed(0)
    t, rec = trainer(MHWLogger("lit-regressor", run_id="lit-1", system_interval_s=0.05))
    module = Regressor()
    t.fit(module, loader(), loader())
    t.test(module, loader())

    train = {s: m for s, m in rec.calls if "train_loss_step" in m}
    assert len(train) == 12  # 6 batches x 2 epochs, a log per step
    con = connect(lake_root=lake_root, serving_path="")
    steps = con.execute("select step, loss, epoch, cpu_util is not null from train_steps order by step").fetchall()
    assert steps == [(s, m["train_loss_step"], float(m["epoch"]), True) for s, m in sorted(train.items())]
    metrics = con.execute("select step, metric, value from step_metrics order by step, metric").fetchall()
    expected = sorted((s, k, v) for s, m in rec.calls for k, v in m.items()
                      if k in ("weight_norm", "train_loss_epoch"))
    assert metrics == expected and len(metrics) == 12 + 2  # floats as Lightning gave them, to the bit
    evals = con.execute("select checkpoint_step, suite, metric, value from eval_results order by all").fetchall()
    assert evals == sorted([(s, "validation", "loss", m["val_loss"]) for s, m in rec.calls if "val_loss" in m]
                           + [(s, "test", "mae", m["test_mae"]) for s, m in rec.calls if "test_mae" in m])
    assert len(evals) == 3
    ((status, n, final, family, n_params, precision, source, config),) = con.execute(
        "select status, steps, final_loss, model_family, n_params, precision, source, config_json from runs").fetchall()
    assert (status, n, family, precision, source) == ("completed", 12, "Regressor", "fp32", "lightning")
    assert final == train[11]["train_loss_step"] and n_params == 8 * 16 + 16 + 16 + 1
    assert '"lr": 0.05' in config
    assert con.execute("select count(*) from system_samples where run_id = 'lit-1'").fetchone()[0] >= 2


def test_a_nan_loss_ends_the_run_diverged_and_stays_nan(lake_root):
    t, _ = trainer(MHWLogger("lit-regressor", run_id="lit-nan", system_interval_s=None), epochs=1)
    t.fit(Regressor(nan_at=4), loader())
    con = connect(lake_root=lake_root, serving_path="")
    assert con.execute("select status from runs").fetchall() == [("diverged",)]
    losses = [v for v, in con.execute("select loss from train_steps order by step").fetchall()]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses[:4]) and all(math.isnan(v) for v in losses[4:])


class Boom(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_crashed_fit_is_marked_failed_with_its_rows(lake_root):
    logger, rec = MHWLogger("lit-regressor", run_id="lit-crash", system_interval_s=None), Recorder()
    t = L.Trainer(max_epochs=1, logger=[logger, rec], log_every_n_steps=1, accelerator="cpu", callbacks=[Boom()],
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        t.fit(Regressor(), loader())
    logged = sorted(s for s, m in rec.calls if "train_loss_step" in m)
    assert logged and logged == list(range(len(logged)))
    con = connect(lake_root=lake_root, serving_path="")
    assert con.execute("select status, steps from runs").fetchall() == [("failed", len(logged))]
    assert [s for s, in con.execute("select step from train_steps order by step").fetchall()] == logged


def test_other_ranks_write_nothing(lake_root, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = MHWLogger("lit-regressor", run_id="lit-rank1", system_interval_s=None)
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    import os
    assert not os.path.exists(lake_root)
