"""DDP runs that stop together and close cleanly.

Stops: a signal to any one rank (SLURM pre-emption, a node's SIGTERM, Ctrl-C) stops every rank at
the same batch boundary (`stops_agree_across_ranks`), where last.ckpt is saved; Lightning 2.6
instead broadcast rank 0's flag alone, from inside the signal handler, and let a signalled rank
stop on its own while the others waited in the next collective until the DDP timeout.

Teardown: every rank closes its process group before it exits.

Lightning destroys the process group at exit only for NCCL. A `trainer=ddp_spawn` worker on gloo
(CPU) returned from `fit`/`test` with the group still open and reached interpreter shutdown and
`exit()` with gloo's loop and worker threads, and on rank 0 the TCPStore server thread, still
running. A process that shuts down beside running C++ threads can die in std::terminate
("terminate called without an active exception", SIGABRT), more often on a loaded machine.
Here the group is destroyed while the interpreter is whole, after a barrier, so its threads are
joined and no rank drops its connections while another still uses them."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy as _DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from src import interrupt


def stop_agreed(trainer) -> bool:
    """Whether a stop signal reached any rank (src.interrupt.received): one all-reduce over the
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

    if getattr(trainer, "world_size", 1) <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [row.flatten().tolist()]
    row = row.to(trainer.strategy.root_device).flatten()
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows).tolist()


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
    record it (src.interrupt); no collective inside a signal handler."""

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
    (`popen`) close theirs in src.train.one_ddp_job."""

    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _MultiProcessingLauncher:
            self._launcher = _ClosingLauncher(self, start_method=self._start_method)
