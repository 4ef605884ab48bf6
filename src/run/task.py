"""Run an entry point's task with clean errors and W&B always closed (also on error or interruption).

Exit statuses: 0 done; 2 a configuration or input error (one message, no traceback; the full
traceback with HYDRA_FULL_ERROR=1), also for what Hydra reports before the job starts (an
unknown group option, a misspelt key); 130 / 143 stopped by SIGINT / SIGTERM or SIGUSR1; 1 a bug."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import TypeVar

from src.base.errors import LatentLensError
from src.run import interrupt

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


class _Job:
    started = False


def job_started() -> None:
    """Called first thing in an entry point's @hydra.main function: Hydra composed the config."""
    _Job.started = True


def command(main: Callable[[], object]) -> None:
    """Run a @hydra.main function as a command. Hydra reports a config it cannot compose (an
    unknown `experiment=` or `debug=` name, with the choices; a misspelt key; bad override
    syntax) and exits 1; before the job has started that is a configuration error: exit 2."""
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1 and not _Job.started:
            raise SystemExit(2) from None
        raise


def config_error(exc: BaseException) -> str | None:
    """The message of a configuration error the config tree raised while the job read it (an
    interpolation to a missing key, a mandatory `???` value, a target that takes other keys)."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException | InstantiationException):
        return f"the configuration does not hold together: {exc}"
    return None


def close_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run, if W&B was used at all, so files are flushed and it ends."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def remove_unused_run_dirs() -> None:
    """After a failed start: the folders this process created for its run (src.config.resolvers.fresh_dir)
    go again where they hold nothing but Hydra's record of the start (.hydra/ and the log)."""
    from src.config.resolvers import CREATED_DIRS

    for folder in reversed(CREATED_DIRS):
        if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def _global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def run_task(task: Callable[..., T], *args, **kwargs) -> T:
    """Call `task`; a project error becomes one message on stderr and exit status 2 (the full
    traceback with HYDRA_FULL_ERROR=1); a stop by SIGINT / SIGTERM / SIGUSR1 (src.run.interrupt; also
    Lightning's sys.exit(1) after Ctrl-C) becomes one message and exit status 130 (SIGINT) or 143
    (SIGTERM, SIGUSR1). W&B is finished whatever happens."""
    exit_code = 1
    try:
        result = task(*args, **kwargs)
        exit_code = 0
        return result
    except Exception as exc:
        error = find_project_error(exc) or config_error(exc)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        remove_unused_run_dirs()
        if not (getattr(error, "every_rank", False) and _global_rank() > 0):  # rank 0 says it for all
            print(f"latent-lens error: {error}\n(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit) as exc:
        signum = interrupt.signal_behind(exc)
        if signum is None:
            raise
        exit_code = interrupt.exit_code(signum)
        print(
            f"latent-lens: stopped by {interrupt.signal_name(signum)} (exit {exit_code}); files written before it "
            "are kept",
            file=sys.stderr,
        )
        raise SystemExit(exit_code) from None
    finally:
        close_wandb(exit_code)
