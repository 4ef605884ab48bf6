"""Optimizer (and optional LR scheduler) from a plain config dict, so checkpoints hold no code."""

from __future__ import annotations

from typing import Any

import torch

from src.base.errors import ConfigError


def build_optimizer(params, cfg: dict[str, Any]):
    """{'name': 'Adam', 'lr': ..., <optimizer kwargs>, 'scheduler': {'name': ..., ...}}."""
    cfg = dict(cfg)
    name = cfg.pop("name", "Adam")
    scheduler_cfg = cfg.pop("scheduler", None)
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError("model.optimizer.name", name, "name a class in torch.optim, e.g. Adam, AdamW, SGD")
    try:
        optimizer = cls(params, **cfg)
    except TypeError as exc:
        raise ConfigError("model.optimizer", cfg, f"{name} rejected these arguments: {exc}") from exc
    if not scheduler_cfg:
        return optimizer
    scheduler_cfg = dict(scheduler_cfg)
    sched_name = scheduler_cfg.pop("name")
    interval = scheduler_cfg.pop("interval", "epoch")
    monitor = scheduler_cfg.pop("monitor", "val/loss")
    sched_cls = getattr(torch.optim.lr_scheduler, sched_name, None)
    if sched_cls is None:
        raise ConfigError("model.optimizer.scheduler.name", sched_name, "name a class in torch.optim.lr_scheduler")
    scheduler = sched_cls(optimizer, **scheduler_cfg)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor}}
