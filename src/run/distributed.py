"""DDP runs that stop together and close cleanly.

Stops: a signal to any one rank (SLURM pre-emption, a node's SIGTERM, Ctrl-C) is only recorded;
every rank stops at the same batch boundary (`stops_agree_across_ranks`), where last.ckpt is
saved, so no rank waits in a collective that another has left.

Teardown: every rank destroys its process group while the interpreter is whole, after a barrier
(`close_process_group`): a process that reaches interpreter shutdown with gloo's threads or the
TCPStore server still running can abort, and a rank that drops its connections early breaks the
others. Lightning destroys the group at exit only for NCCL; this does it for every backend.

Ranks > 0 wait for rank 0's epoch-end renders in Python (`RenderGate`, polling the TCPStore), not
inside a collective, so signals and rank 0's errors reach them."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy as _DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from src.base.errors import TrainingFault
from src.run import interrupt


def stop_agreed(trainer) -> bool:
    """Whether a stop signal reached any rank (src.run.interrupt.received): one all-reduce over the
    ranks, so every rank gets the same answer at the same point; no collective on one process."""
    import torch.distributed as dist

    here = interrupt.received() is not None
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return here
    flag = torch.tensor([int(here)], device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def gather_rows(trainer, row: torch.Tensor) -> list[list[float]]:
    """Every rank's `row` (a 1-d tensor of the same length on each rank), in rank order, read to
    the host once: one all-gather over the ranks (none on one process)."""
    import torch.distributed as dist

    if not _multi_process(trainer):
        return [row.flatten().tolist()]
    row = row.to(trainer.strategy.root_device).flatten()
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows).tolist()


def gather_objects(trainer, obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order: one all_gather_object over the ranks (none on
    one process). Call it on every rank at the same point."""
    import torch.distributed as dist

    if not _multi_process(trainer):
        return [obj]
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, obj)
    return found


def _multi_process(trainer) -> bool:
    import torch.distributed as dist

    return getattr(trainer, "world_size", 1) > 1 and dist.is_available() and dist.is_initialized()


def _store():
    """The process group's key-value store (a TCPStore served by global rank 0 under
    Lightning's env:// set-up): every rank can read and write it without a collective."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


STOP_KEY, FAILED_KEY = "latent-lens/stop", "latent-lens/failed"


class _StopPosted:
    """interrupt's remote poll on global rank 0: the signal another rank posted, read from the
    store at most every `every_s` seconds (a render calls it at every step)."""

    def __init__(self, store, every_s: float = 0.2) -> None:
        self.store, self.every_s, self._next = store, every_s, 0.0

    def __call__(self) -> int | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every_s
        if not self.store.check([STOP_KEY]):
            return None
        return int(self.store.get(STOP_KEY))


class RenderGate(L.Callback):
    """Under DDP, ranks > 0 wait for global rank 0's epoch-end explanations in Python, polling the
    process group's store, not inside the next collective, so that while rank 0 renders:

    - a stop signal to any other rank reaches rank 0 (posted to the store, read between the steps
      of the render through src.run.interrupt): the render stops at its next step, the epoch's
      checkpoint is saved and every rank stops at the next batch boundary (stop_agreed), within
      seconds, not after the render or the DDP timeout;
    - an error on rank 0 (posted in `on_exception`) stops the waiting ranks with a message naming
      rank 0 instead of leaving them in a collective until the DDP timeout.

    It waits twice per validation: after the epoch-end renders and after those at validation end
    (the confusion matrix), before ModelCheckpoint (which Lightning runs last). Put it after every
    explanation callback."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self.poll_s = poll_s
        self._waits = 0
        self._posted = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if _multi_process(trainer) and trainer.is_global_zero:
            interrupt.set_remote(_StopPosted(_store()))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        interrupt.set_remote(None)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._pass(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._pass(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if _multi_process(trainer) and trainer.is_global_zero and interrupt.signal_behind(exception) is None:
            _store().set(FAILED_KEY, f"{type(exception).__name__}: {exception}"[:500])

    def _pass(self, trainer) -> None:
        if trainer.sanity_checking or not _multi_process(trainer):
            return
        store, key = _store(), f"latent-lens/rendered/{self._waits}"
        self._waits += 1
        if trainer.is_global_zero:
            store.set(key, "1")
            return
        while not store.check([key]):
            if store.check([FAILED_KEY]):
                why = store.get(FAILED_KEY).decode(errors="replace")
                raise TrainingFault(
                    f"global rank 0 failed ({why}); rank {trainer.global_rank} stops too: see rank 0's error above"
                )
            signum = interrupt.received()
            if signum is not None and not self._posted:
                store.set(STOP_KEY, str(signum))
                self._posted = True
            time.sleep(self.poll_s)


def stops_agree_across_ranks(trainer) -> None:
    """Make `trainer.fit` stop on a signal at the start of a batch that every rank agrees on: its
    SIGTERM handler only records the signal (and forwards it to the ranks this process launched),
    and before each training batch the ranks agree (`stop_agreed`, in place of Lightning's own
    per-batch broadcast of rank 0's flag) and all raise SIGTERMException together. Nothing stops
    mid-batch or mid-validation, so InterruptCheckpoint's last.ckpt resumes exactly."""
    loop = trainer.fit_loop.epoch_loop
    trainer._signal_connector._sigterm_notifier_fn = _RecordStop(trainer)
    loop._broadcast_sigterm_tensor = _no_broadcast
    loop.advance = _AdvanceUnlessStopped(trainer)


# module-level and picklable: trainer=ddp_spawn pickles the trainer into its workers


class _RecordStop:
    """The trainer's SIGTERM notifier: forward the signal to the ranks this process launched, and
    record it (src.run.interrupt); no collective inside a signal handler."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __call__(self, signum, frame) -> None:
        launcher = self.trainer.strategy.launcher
        if interrupt.received() is None and launcher is not None:
            launcher.kill(signum)
        interrupt.request(signum)


class _AdvanceUnlessStopped:
    """The training epoch loop's `advance`, after the ranks agreed that no stop was asked for."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __call__(self, data_fetcher) -> None:
        loop = self.trainer.fit_loop.epoch_loop
        if stop_agreed(self.trainer):
            self.trainer._signal_connector.received_sigterm = True
            raise SIGTERMException
        type(loop).advance(loop, data_fetcher)


def _no_broadcast() -> None:
    """In place of Lightning's per-batch broadcast of rank 0's SIGTERM flag (stop_agreed does it)."""


def close_process_group(barrier: bool = True) -> bool:
    """Destroy the default process group if there is one; with `barrier`, once every rank got
    here (only where every rank will: after a job that succeeded). Returns whether one was open."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    return True


class _ClosingLauncher(_MultiProcessingLauncher):
    """Lightning's launcher for spawned/forked workers; each worker closes its process group
    once it has done its part and rank 0 has handed its results to the main process."""

    @override
    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(process_idx, *args, **kwargs)
        close_process_group()  # not reached on an error: the main process then stops every worker


class DDPStrategy(_DDPStrategy):
    """Lightning's DDPStrategy whose spawned workers (`start_method: spawn|fork|forkserver`)
    destroy their process group before they exit; ranks started by re-running the command
    (`popen`) close theirs in src.run.distributed.one_ddp_job."""

    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _MultiProcessingLauncher:
            self._launcher = _ClosingLauncher(self, start_method=self._start_method)


# what Lightning's DDP launcher writes into this process's environment when it starts the ranks
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def one_ddp_job():
    """Leave no DDP state behind for the next job of a multirun run in this same process: the
    process group is destroyed and the launcher's environment variables are put back (with
    LOCAL_RANK left set, Lightning would take the next job's ranks as started by a cluster and
    wait for workers that never come). After a job that succeeded on this rank, the group is
    closed once every rank is done (a barrier), so no rank drops its connections while another
    still talks to it; after an error, at once."""
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    ok = False
    try:
        yield
        ok = True
    finally:
        close_process_group(barrier=ok)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ddp_relaunch_this_job_only() -> None:
    """Inside a Hydra multirun, make Lightning's DDP launcher start the other ranks on this job.

    `trainer=ddp` starts ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir=<run dir>`
    appended; in a multirun, sys.argv is the whole sweep (`-m a=1,2,3`), so every rank would run
    every job. Here sys.argv becomes this job's own overrides and Hydra's run dir this job's
    folder: the children run exactly this job, in its folder. (trainer=ddp_spawn forks instead of
    re-running, and SLURM/torchrun start every rank themselves; neither needs this.)"""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from src.config.resolvers import multirun_job

    hc = multirun_job()
    if hc is None:
        return
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(HydraConfig.get()), open_dict(HydraConfig.get()):
        HydraConfig.get().run.dir = hc.runtime.output_dir
