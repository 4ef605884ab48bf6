"""Process groups are closed before a rank exits: no gloo or TCPStore thread outlives them."""

import os
import time
from datetime import timedelta

import hydra
import torch.distributed as dist

from src.run.distributed import _ClosingLauncher, close_process_group
from src.testing.compose import compose_train_cfg


def c10d_threads() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(n for n in names if n.startswith(("gloo", "pt_gloo", "pt_tcpstore")))


def open_gloo_group() -> None:
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)


def started_threads(timeout: float = 10.0) -> list[str]:
    """The c10d threads once gloo's loop is among them: each thread names itself after it starts,
    so right after init_process_group the name may not be there yet."""
    deadline = time.monotonic() + timeout
    while "gloo_tcp_loop" not in (running := c10d_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return running


def test_close_process_group_joins_the_gloo_and_store_threads():
    assert not dist.is_initialized() and close_process_group() is False
    open_gloo_group()
    try:
        running = started_threads()
        assert "gloo_tcp_loop" in running and any(n.startswith("pt_tcpstore") for n in running)
        assert close_process_group() is True
        assert not dist.is_initialized() and c10d_threads() == []
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ddp_spawn_workers_are_started_by_the_closing_launcher(tmp_path):
    cfg = compose_train_cfg(tmp_path, ["trainer=ddp_spawn", "logger=csv"])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert type(trainer.strategy.launcher) is _ClosingLauncher
    assert trainer.strategy.launcher._start_method == "spawn"
