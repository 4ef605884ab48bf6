import json
from pathlib import Path

import hydra
import pytest
import torch

from src.train import train
from tests.conftest import CONF_DIR, compose_train_cfg

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"experiment={experiment}"])
    assert cfg.task_name == experiment
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.in_channels == cfg.data.channels
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert model.get_submodule(model.cam_layer) is not None  # every model names its Grad-CAM layer


@pytest.mark.parametrize(
    "group,option",
    [("logger", "none"), ("logger", "tensorboard"), ("logger", "csv"), ("trainer", "gpu"), ("model/arch", "face_vae")],
)
def test_group_options_compose(group, option, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"{group}={option}"])
    assert cfg is not None


def test_default_config_is_the_fashion_vae(tmp_path):
    cfg = compose_train_cfg(tmp_path)
    assert cfg.task_name == "fashion_vae"
    assert cfg.data._target_.endswith("FashionMNISTDataModule")
    assert cfg.model.latent_dim == 100 and list(cfg.model.encoder.channels) == [16, 32, 64]
    assert not cfg.trainer.inference_mode  # explanation callbacks need gradients in validation


def test_train_debug_fast(train_cfg, tmp_path):
    metrics = train(train_cfg())
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(metrics["best_checkpoint"]).is_file()
    for key in ("val/loss", "val/recon", "val/kl", "test/loss"):
        assert key in metrics and metrics[key] > 0
    torch.testing.assert_close(metrics["val/loss"], metrics["val/recon"] + metrics["val/kl"], rtol=1e-4, atol=1e-3)
    assert json.loads((run / "metrics.json").read_text())["val/loss"] == metrics["val/loss"]
    assert (run / "explanations" / "reconstructions" / "epoch_000" / "grid.png").is_file()
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss_step" in rows[0] and len(rows) > 4
