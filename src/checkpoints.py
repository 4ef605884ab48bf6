"""Loading trained models from Lightning checkpoints with errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import lightning as L

from src.errors import ConfigError

M = TypeVar("M", bound=L.LightningModule)


def load_module(path: str | Path | None, cls: type[M], key: str, purpose: str = "") -> M:
    """`cls.load_from_checkpoint(path)` on the CPU, in eval mode. A missing or unreadable file is a
    ConfigError naming `key` (the config key that gave the path) and what to pass instead."""
    what = f"{purpose}: " if purpose else ""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(key, path, f"{what}pass the .ckpt of a trained {cls.__name__} (a training run writes them "
                                     "under <run>/checkpoints/)")  # fmt: skip
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), f"{what}no such checkpoint file; pass a .ckpt from <run>/checkpoints/")
    try:
        return cls.load_from_checkpoint(path, map_location="cpu").eval()
    except Exception as exc:
        raise ConfigError(key, str(path), f"{what}could not load it as a {cls.__name__} checkpoint "
                                          f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
