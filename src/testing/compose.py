"""conf/train.yaml composed as `python -m src.train` composes it, for the tests and bench/: one
run folder given, the Hydra runtime set as in a job, so the resolvers see what they see in a run."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import src.config.resolvers  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"


def compose_train_cfg(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """conf/train.yaml composed as `python -m src.train <overrides>` would, run folder = output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(output_dir / "data")
        del cfg.hydra
    return cfg
