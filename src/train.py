"""Train a model with its explanation callbacks: python -m src.train [experiment=NAME] [key=value ...]."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

import src.config  # noqa: F401  (registers config resolvers)
from src.task import run_task

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """One callback per entry of the `explain` group; the entry's key is its name."""
    callbacks = []
    for name, conf in (cfg or {}).items():
        if conf is not None and "_target_" in conf:
            callbacks.append(hydra.utils.instantiate(conf, name=name, _convert_="all"))
    return callbacks


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return [
        hydra.utils.instantiate(conf, _convert_="all")
        for conf in (cfg or {}).values()
        if conf is not None and "_target_" in conf
    ]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured model; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    checkpoint = ModelCheckpoint(**OmegaConf.to_container(cfg.checkpoint, resolve=True))
    callbacks = [checkpoint, *instantiate_callbacks(cfg.get("explain"))]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test"):
        ckpt = "best" if checkpoint.best_model_path else None
        for result in trainer.test(model, datamodule=datamodule, ckpt_path=ckpt):
            metrics.update({k: float(v) for k, v in result.items()})
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)} | {
        "best_checkpoint": checkpoint.best_model_path,
        "epochs": trainer.current_epoch,
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
