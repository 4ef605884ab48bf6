"""Shared fixtures: tiny datasets in the real on-disk formats and composed Hydra configs."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def signals_as_in_a_terminal() -> None:
    """preexec_fn for a child that tests send signals to: SIGINT and SIGQUIT as an interactive
    shell hands them over. A shell without job control starts a background job (`make test &`)
    with both ignored; a child inherits that, and src.run.interrupt keeps an ignored signal ignored
    (as for a nohup'd run), so a Ctrl-C test would wait for a stop that never comes."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX encoding written out by hand from the format's definition (independent of src/)."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def class_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """Grey images whose content depends on the class: a bar at a class-specific row, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) * (size - 6) // 10
        images[i, row : row + 4, 3 : size - 3] = 220
    return images


def write_fashion_fixture(folder: Path, n_train: int = 240, n_test: int = 80, gzip_test: bool = False) -> Path:
    """The four FashionMNIST IDX files (train gzipped, test plain unless `gzip_test`: both
    occur in the wild)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, n, gz in (("train", n_train, True), ("t10k", n_test, gzip_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, array, code in (
            ("images-idx3-ubyte", class_images(labels, seed=n), 0x08),
            ("labels-idx1-ubyte", labels, 0x08),
        ):
            data = idx_bytes(array, code)
            name = f"{split}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def fashion_fixture(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("fashion"))


def compose_train_cfg(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """conf/train.yaml composed as `python -m src.train <overrides>` would, run folder = output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(output_dir / "data")
        del cfg.hydra
    return cfg


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
