"""TrainLogging: per-step values reach the loggers on exactly the steps Lightning writes, epoch
means are the batch-weighted means of the steps' values, and the running sums survive a checkpoint."""

import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from src.data.in_memory import collate_batch
from src.models.vae import VAE
from src.testing.tolerance import relative_bound


def tiny_vae() -> VAE:
    return VAE(image_size=8, in_channels=1, latent_dim=2, encoder={"channels": [4]})


class Recorder(L.Callback):
    """The oracle: every step's loss terms (the module's `last_terms`) and batch size."""

    def __init__(self) -> None:
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        terms = {k: float(v) for k, v in pl_module.last_terms.items()}
        self.steps.append(
            {"step": trainer.global_step - 1, "epoch": trainer.current_epoch, "n": len(batch["image"]), **terms}
        )


def test_step_values_on_the_written_steps_and_weighted_epoch_means(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(52, 1, 8, 8)  # 7 batches of 8, then one of 4: the weighting matters
    batches = [{"image": images[i : i + 8]} for i in range(0, 52, 8)]
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=3,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(tiny_vae(), train_dataloaders=DataLoader(batches, batch_size=None, collate_fn=collate_batch))
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged_steps = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r["train/loss_step"]}
    assert sorted(logged_steps) == [2, 5, 8, 11]  # Lightning writes every 3rd step: (step + 1) % 3 == 0
    for s in recorder.steps:
        if s["step"] in logged_steps:
            assert logged_steps[s["step"]] == pytest.approx(s["loss"], rel=1e-6)
    epochs = [r for r in rows if r["train/loss_epoch"]]
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    for row in epochs:
        steps = [s for s in recorder.steps if s["epoch"] == int(row["epoch"])]
        assert [s["n"] for s in steps] == [8] * 6 + [4]
        for key, name in (("loss", "train/loss_epoch"), ("recon", "train/recon"), ("kl", "train/kl")):
            mean = sum(s[key] * s["n"] for s in steps) / sum(s["n"] for s in steps)
            # a float32 running sum of 7 weighted, positive steps (and of their weights)
            assert float(row[name]) == pytest.approx(mean, rel=relative_bound(2 * len(steps))), name
    assert "train/recon_step" not in rows[0] and "train/beta" not in rows[0]  # no warm-up: no beta


def attach(module, epoch: int, write: bool = False) -> None:
    """The two trainer attributes log_train reads (not writing: no self.log call is made)."""
    module._trainer = SimpleNamespace(
        current_epoch=epoch, fast_dev_run=False, _logger_connector=SimpleNamespace(should_update_logs=write)
    )


def feed(module, values: list[float]) -> None:
    for v in values:
        module.log_train({}, {"train/loss_epoch": torch.tensor(v)}, batch_size=2)


def test_epoch_sums_travel_in_checkpoints_and_reset_on_a_new_epoch():
    straight, first, resumed = tiny_vae(), tiny_vae(), tiny_vae()
    for module in (straight, first, resumed):
        attach(module, epoch=3)
    feed(straight, [1.0, 2.0, 4.0, 8.0])
    feed(first, [1.0, 2.0])
    checkpoint = {}
    first.on_save_checkpoint(checkpoint)  # interrupted mid-epoch
    resumed.on_load_checkpoint(checkpoint)
    feed(resumed, [4.0, 8.0])
    assert resumed._epoch_count == straight._epoch_count == 8
    assert float(resumed._epoch_sums["train/loss_epoch"]) == float(straight._epoch_sums["train/loss_epoch"]) == 30.0
    attach(resumed, epoch=4)  # a checkpoint from an earlier epoch's end: its sums do not leak into this one
    feed(resumed, [5.0])
    assert resumed._epoch_count == 2 and float(resumed._epoch_sums["train/loss_epoch"]) == 10.0
