"""Loading trained models from Lightning checkpoints with errors that name the key at fault."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TypeVar

import lightning as L
import torch

from src.errors import ConfigError

M = TypeVar("M", bound=L.LightningModule)


def hydra_class(path: str) -> type:
    """The class at dotted `path`; `object` when it cannot be imported (never a subclass of a model)."""
    from hydra.utils import get_class

    try:
        return get_class(path)
    except Exception:
        return object


def load_module(path: str | Path | None, cls: type[M], key: str, purpose: str = "") -> M:
    """`cls.load_from_checkpoint(path)` on the CPU, in eval mode, read with weights_only=True. A
    missing or unreadable file, or one saved from another kind of model, is a ConfigError naming
    `key` (the config key that gave the path) and what to pass instead."""
    what = f"{purpose}: " if purpose else ""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(key, path, f"{what}pass the .ckpt of a trained {cls.__name__} (a training run writes them "
                                     "under <run>/checkpoints/)")  # fmt: skip
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), f"{what}no such checkpoint file; pass a .ckpt from <run>/checkpoints/")
    data = path.read_bytes()  # read once: checked here, then loaded by Lightning
    try:
        # tensors and plain values only: a checkpoint cannot run code when it is read
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = f"{what}not a readable checkpoint, or one holding more than tensors and plain values"
        raise ConfigError(key, str(path), f"{hint} ({type(exc).__name__}: {str(exc)[:200]})") from exc
    saved = checkpoint.get("model_class")
    if saved is not None and not issubclass(hydra_class(saved), cls):
        raise ConfigError(key, str(path), f"{what}this is a {saved.rsplit('.', 1)[-1]} checkpoint, not a "
                                          f"{cls.__name__}; pass a {cls.__name__} checkpoint or the experiment "
                                          f"that trained it")  # fmt: skip
    try:
        return cls.load_from_checkpoint(io.BytesIO(data), map_location="cpu", weights_only=True).eval()
    except Exception as exc:
        raise ConfigError(key, str(path), f"{what}could not load it as a {cls.__name__} checkpoint "
                                          f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
