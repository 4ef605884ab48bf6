import json
from pathlib import Path

import hydra
import pytest
import torch

from src.testing.compose import CONF_DIR, compose_train_cfg
from src.testing.tolerance import relative_bound
from src.train import train

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
    [
        ("logger", "none"),
        ("logger", "tensorboard"),
        ("logger", "csv"),
        ("trainer", "gpu"),
        ("model/arch", "face_vae"),
        ("trainer", "ddp"),
        ("trainer", "ddp_cpu"),
        ("trainer", "ddp_spawn"),
        ("trainer", "multinode"),
        ("hydra/launcher", "slurm"),
        ("hparams_search", "vae_optuna"),
    ],
)
def test_group_options_compose(group, option, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"{group}={option}"])
    assert cfg is not None
    if group == "trainer" and option != "gpu":
        strategy = hydra.utils.instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ == "DDPStrategy"
        assert strategy._timeout.total_seconds() == 3600
        assert strategy._start_method == ("spawn" if option == "ddp_spawn" else "popen")


def test_run_and_group_names_in_a_multirun(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from src.config.resolvers import job_name, sweep_group

    assert (job_name("vae"), sweep_group("vae")) == ("vae", "vae")  # not in a multirun
    cfg = compose_train_cfg(tmp_path, ["experiment=fashion_vae"])
    hc = HydraConfig.get()
    with read_write(hc), open_dict(hc):
        hc.mode = RunMode.MULTIRUN
        hc.sweep.dir = "outputs/multiruns/fashion_vae/2026-11-22_07-00-00"
        hc.job.num = 3
        hc.job.override_dirname = "model.latent_dim=50"
    try:
        assert job_name(cfg.task_name) == "fashion_vae-3-model.latent_dim=50"
        assert sweep_group(cfg.task_name) == "fashion_vae-2026-11-22_07-00-00"
    finally:
        compose_train_cfg(tmp_path, [])  # back to a plain run


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
    # positive terms: float32 batch means of recon + kl against the sum of their means (16 batch terms)
    total = metrics["val/recon"] + metrics["val/kl"]
    torch.testing.assert_close(metrics["val/loss"], total, rtol=relative_bound(16), atol=0)
    assert json.loads((run / "metrics.json").read_text())["val/loss"] == metrics["val/loss"]
    assert (run / "explanations" / "reconstructions" / "epoch_000" / "grid.png").is_file()
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss_step" in rows[0] and len(rows) > 4


def test_a_finished_runs_config_rebuilds_its_datamodule(tmp_path):
    """load_run_config reads .hydra/config.yaml with its ${hydra:...} paths, as scripts/ do."""
    import hydra
    from omegaconf import OmegaConf, open_dict

    from src.base.errors import DataError
    from src.config.resume import load_run_config
    from src.data.digits import DigitsDataModule
    from src.testing.compose import compose_train_cfg

    cfg = compose_train_cfg(tmp_path / "compose", ["data=digits", "data.normal={classes:[3]}"])
    with open_dict(cfg):  # as Hydra saves it: the paths still interpolate the hydra resolver
        cfg.paths.root_dir, cfg.paths.output_dir = "${hydra:runtime.cwd}", "${hydra:runtime.output_dir}"
        cfg.paths.data_dir = "${paths.root_dir}/data"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    loaded = load_run_config(run, root_dir=tmp_path)
    assert loaded.paths.data_dir == str(tmp_path.resolve() / "data") and loaded.paths.output_dir == str(run.resolve())
    data = hydra.utils.instantiate(loaded.data)
    assert isinstance(data, DigitsDataModule) and data.normal.classes == [3]
    with pytest.raises(DataError, match="config.yaml"):
        load_run_config(tmp_path / "nowhere")
