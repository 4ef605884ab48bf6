"""Run a task function with clean errors and W&B always closed (also on error or interruption)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from src import interrupt
from src.errors import LatentLensError

log = logging.getLogger(__name__)
T = TypeVar("T")


def find_project_error(exc: BaseException) -> LatentLensError | None:
    """The LatentLensError behind `exc`, also when wrapped (e.g. by Hydra's instantiate)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LatentLensError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def close_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if W&B was used at all, so files are flushed and it ends."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def run_task(task: Callable[..., T], *args, **kwargs) -> T:
    """Call `task`; a project error becomes one message on stderr and exit status 2 (the full
    traceback with HYDRA_FULL_ERROR=1); a stop by SIGINT / SIGTERM / SIGUSR1 (src.interrupt; also
    Lightning's sys.exit(1) after Ctrl-C) becomes one message and exit status 130 (SIGINT) or 143
    (SIGTERM, SIGUSR1). W&B is finished whatever happens."""
    exit_code = 1
    try:
        result = task(*args, **kwargs)
        exit_code = 0
        return result
    except Exception as exc:
        error = find_project_error(exc)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"latent-lens error: {error}\n(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit) as exc:
        signum = interrupt.signal_behind(exc)
        if signum is None:
            raise
        exit_code = interrupt.exit_code(signum)
        print(f"latent-lens: stopped by {interrupt.signal_name(signum)} (exit {exit_code}); files written before it "
              "are kept", file=sys.stderr)  # fmt: skip
        raise SystemExit(exit_code) from None
    finally:
        close_wandb(exit_code)
