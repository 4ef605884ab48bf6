"""Shared fixtures: tiny datasets in the real on-disk formats and composed Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from src.testing.compose import compose_train_cfg
from src.testing.formats import write_fashion_fixture

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def signals_as_in_a_terminal() -> None:
    """preexec_fn for a child that tests send signals to: SIGINT and SIGQUIT as an interactive
    shell hands them over. A shell without job control starts a background job (`make test &`)
    with both ignored; a child inherits that, and src.run.interrupt keeps an ignored signal ignored
    (as for a nohup'd run), so a Ctrl-C test would wait for a stop that never comes."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def fashion_fixture(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("fashion"))


@pytest.fixture
def train_cfg(tmp_path, fashion_fixture):
    """Factory: a debug=fast training config on the fixture dataset, logging to CSV only."""

    def make(*overrides: str) -> DictConfig:
        base = [
            "debug=fast",
            "logger=csv",
            f"data.root={fashion_fixture}",
            "data.search_system=false",
            "data.download=false",
            "data.val_size=40",
        ]
        return compose_train_cfg(tmp_path / "run", base + list(overrides))

    return make


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    """The suite runs with the allocator setting the entry points apply (fast.malloc);
    LATENT_LENS_MALLOC=0 runs it with glibc's defaults (bench/malloc.py --suite compares)."""
    from src.run.runtime import keep_malloc_buffers

    if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, also in the CLIs they start
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

    keep_malloc_buffers(os.environ.get("LATENT_LENS_MALLOC", "1") != "0")
