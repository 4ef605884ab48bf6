"""Weights & Biases: a logger that never prompts or blocks, and the image/table sink over it."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)


def wandb_api_key_configured() -> bool:
    """True when W&B has credentials: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """'online' / 'offline' / 'disabled'; 'auto' honours WANDB_MODE, else goes online only
    when an API key is configured (so a run never stops at a login prompt)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if wandb_api_key_configured() else "offline"


def make_wandb_logger(mode: str = "auto", **kwargs):
    """A Lightning WandbLogger in the resolved mode (see resolve_wandb_mode)."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_wandb_mode(mode)
    if resolved == "offline" and mode == "auto" and "WANDB_MODE" not in os.environ:
        log.warning(
            "W&B: no API key configured, logging offline; upload later with 'wandb sync <run dir>/wandb/offline-run-*'"
        )
    os.environ["WANDB_MODE"] = resolved  # also governs wandb processes started by DDP children
    kwargs.setdefault("log_model", False)
    return WandbLogger(offline=resolved == "offline", mode=resolved, **kwargs)


class WandbSink:
    def __init__(self, logger) -> None:
        self.logger = logger

    def log_images(
        self,
        callback: str,
        name: str,
        images: Sequence[np.ndarray],
        epoch: int,
        step: int,
        captions: Sequence[str] | None = None,
    ) -> None:
        kwargs = {"caption": list(captions)} if captions else {}
        self.logger.log_image(f"explain/{callback}/{name}", list(images), step=step, **kwargs)

    def log_animation(self, callback: str, name: str, path, epoch: int, step: int, caption: str | None = None) -> None:
        """A GIF the disk sink wrote, shown as a W&B video."""
        kwargs = {"caption": [caption]} if caption else {}
        self.logger.log_video(f"explain/{callback}/{name}", [str(path)], step=step, format=["gif"], **kwargs)

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> None:
        self.logger.log_table(
            f"explain/{callback}/{name}", columns=list(columns), data=[list(r) for r in rows], step=step
        )
