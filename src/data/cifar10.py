"""CIFAR-10 from the official python pickles (cifar-10-batches-py), read with an unpickler that
only admits the numpy types those files contain."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from src.base.errors import DataError
from src.data.celeba import require_root
from src.data.in_memory import InMemoryDataModule, split_indices

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch file")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One CIFAR pickle as a dict with str keys; DataError naming the file if malformed."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 file not found: {path}")
    try:
        raw = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: not a CIFAR-10 python batch (it holds a {type(raw).__name__}, not a dict with "
            "'data' and 'labels'); download the official cifar-10-python.tar.gz again"
        )
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] and labels [N] of one batch file."""
    batch = read_batch(path)
    data, labels = np.asarray(batch.get("data")), batch.get("labels")
    if data.ndim != 2 or data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise DataError(f"{path}: expected 'data' [N, 3072] uint8 and N 'labels', got {data.shape}")
    return torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 under `root` (holding cifar-10-batches-py/, or that folder itself): 50k train
    (seeded val split) and 10k test, 32x32 RGB."""

    def __init__(self, root: str | None = None, **kwargs) -> None:
        kwargs.setdefault("image_size", 32)
        kwargs.setdefault("channels", 3)
        kwargs.setdefault("val_size", 5000)
        super().__init__(**kwargs)
        self.root_arg = root
        self.class_names: list[str] = []

    def folder(self) -> Path:
        root = require_root(
            self.root_arg, "CIFAR-10", "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)"
        )
        return root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        folder = self.folder()
        meta = read_batch(folder / "batches.meta")
        self.class_names = [n.decode() if isinstance(n, bytes) else n for n in meta.get("label_names", [])]
        parts = [read_images(folder / name) for name in TRAIN_BATCHES]
        test_x, test_y = read_images(folder / "test_batch")
        train_x = torch.cat([x for x, _ in parts])
        train_y = torch.cat([y for _, y in parts])
        train_idx, val_idx = split_indices(len(train_x), self.val_size, self.seed)
        tensors = {"image": torch.cat([train_x, test_x]), "label": torch.cat([train_y, test_y])}
        test_idx = torch.arange(len(train_x), len(train_x) + len(test_x))
        return tensors, {"train": train_idx, "val": val_idx, "test": test_idx}
