"""Process-group teardown for DDP runs: every rank closes its process group before it exits.

Lightning destroys the process group at exit only for NCCL. A `trainer=ddp_spawn` worker on gloo
(CPU) returned from `fit`/`test` with the group still open and reached interpreter shutdown and
`exit()` with gloo's loop and worker threads, and on rank 0 the TCPStore server thread, still
running. A process that shuts down beside running C++ threads can die in std::terminate
("terminate called without an active exception", SIGABRT), more often on a loaded machine.
Here the group is destroyed while the interpreter is whole, after a barrier, so its threads are
joined and no rank drops its connections while another still uses them."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy as _DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from typing_extensions import override


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
