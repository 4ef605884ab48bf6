"""Weights & Biases: a logger that never prompts or blocks, and the image/table sink over it."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
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
    save_dir = kwargs.get("save_dir")
    if kwargs.get("id") is None and save_dir and resolved != "disabled":
        kwargs["id"] = run_id(Path(save_dir))
        kwargs.setdefault("resume", "allow")  # a resumed run (ckpt_path=last) continues the same W&B run
    logger = _without_anonymous(WandbLogger(offline=resolved == "offline", mode=resolved, **kwargs))
    if resolved != "online" or int(os.environ.get("LOCAL_RANK", 0)) != 0 or os.environ.get("NODE_RANK", "0") != "0":
        return logger
    try:
        _ = logger.experiment  # starts the run now, so a failure shows here and not mid-training
        return logger
    except Exception as exc:  # W&B unreachable, bad key, server error: never lose the training run
        log.warning(
            "W&B failed to start online (%s: %s); logging offline instead: upload later with "
            "'wandb sync %s/wandb/offline-run-*'",
            type(exc).__name__,
            exc,
            save_dir or ".",
        )
        os.environ["WANDB_MODE"] = "offline"
        return _without_anonymous(WandbLogger(offline=True, mode="offline", **kwargs))


def _without_anonymous(logger):
    """Lightning passes anonymous=None to wandb.init, which W&B 0.31 answers with a deprecation
    warning on every run ("The anonymous setting has no effect"); the key is simply not passed."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def run_id(run_dir: Path) -> str:
    """The W&B run id of the run folder: read from <run_dir>/wandb_id, created on first use."""
    path = run_dir / "wandb_id"
    saved = path.read_text().strip() if path.is_file() else ""
    if saved:
        return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    new = secrets.token_hex(4)  # W&B ids: lower-case letters and digits
    path.write_text(new + "\n")
    return new


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
        files: Sequence[Path] | None = None,
    ) -> None:
        """Uploads the disk sink's PNG files when given (W&B would otherwise encode every image again)."""
        kwargs = {"caption": list(captions)} if captions else {}
        shown = [str(f) for f in files] if files else list(images)
        self.logger.log_image(f"explain/{callback}/{name}", shown, step=step, **kwargs)

    def log_animation(self, callback: str, name: str, path, epoch: int, step: int, caption: str | None = None) -> None:
        """A GIF the disk sink wrote, shown as a W&B video."""
        kwargs = {"caption": [caption]} if caption else {}
        self.logger.log_video(f"explain/{callback}/{name}", [str(path)], step=step, format=["gif"], **kwargs)

    def log_summary(self, callback: str, name: str, numbers: dict[str, float], epoch: int, step: int) -> None:
        """As metrics `<callback>/<key>` at `step`: a curve per number over the epochs, beside the
        loss, and the latest value in the run summary (the runs table)."""
        self.logger.log_metrics({f"{callback}/{k}": v for k, v in numbers.items()}, step=step)

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> None:
        self.logger.log_table(
            f"explain/{callback}/{name}", columns=list(columns), data=[list(r) for r in rows], step=step
        )
