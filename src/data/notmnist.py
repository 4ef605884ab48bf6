"""notMNIST: letters A..J as 28x28 grey PNGs in notMNIST_small/<letter>/ (or notMNIST_large),
with the archive's few unreadable files skipped, counted and reported once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from src.base.errors import DataError
from src.data.cache import ArrayCache, fingerprint
from src.data.celeba import require_root
from src.data.images import load_square_image
from src.data.in_memory import InMemoryDataModule, seeded_splits

log = logging.getLogger(__name__)
LETTERS = list("ABCDEFGHIJ")


def list_notmnist(folder: Path) -> tuple[list[Path], list[int]]:
    """(file paths, labels 0..9) of every <letter>/*.png under `folder`, in a stable order."""
    paths, labels = [], []
    for label, letter in enumerate(LETTERS):
        letter_dir = folder / letter
        if not letter_dir.is_dir():
            raise DataError(f"notMNIST: folder {letter_dir} not found; expected A..J folders of PNGs in {folder}")
        files = sorted(letter_dir.glob("*.png"))
        paths += files
        labels += [label] * len(files)
    return paths, labels


class _LetterLoader:
    """Picklable decoder that returns None for an unreadable file (the archive has a few)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, i: int) -> dict[str, np.ndarray] | None:
        try:
            return {"image": load_square_image(self.paths[i], 28, mode="L")}
        except DataError:
            return None


class NotMNISTDataModule(InMemoryDataModule):
    """notMNIST under `root` (a folder holding notMNIST_small/, or that folder itself); seeded
    train/val/test split (the dataset ships without one); decoded once into a cache."""

    class_names = LETTERS

    def __init__(
        self,
        root: str | None = None,
        variant: str = "small",
        cache_dir: str | None = None,
        build_workers: int | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("image_size", 28)
        kwargs.setdefault("channels", 1)
        super().__init__(**kwargs)
        self.root_arg = root
        self.variant = variant
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.build_workers = build_workers
        self.skipped: list[str] = []

    def folder(self) -> Path:
        root = require_root(self.root_arg, "notMNIST", f"notMNIST_{self.variant}/A..J/*.png")
        nested = root / f"notMNIST_{self.variant}"
        return nested if nested.is_dir() else root

    def cache(self, paths: list[Path]) -> ArrayCache:
        folder = self.folder().resolve()
        key = fingerprint(dataset="notmnist", root=str(folder), n=len(paths), last=str(paths[-1]))
        return ArrayCache((self.cache_dir or folder / ".latent_lens_cache") / f"notmnist-{self.variant}-{key}")

    def prepare_data(self) -> None:
        paths, _ = list_notmnist(self.folder())
        cache = self.cache(paths)
        if not cache.complete:
            cache.build(
                len(paths),
                {"image": ((1, 28, 28), np.uint8)},
                _LetterLoader(paths),
                meta={"paths": [str(p) for p in paths]},
                workers=self.build_workers,
            )

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        paths, labels = list_notmnist(self.folder())
        cache = self.cache(paths)
        if not cache.complete:
            self.prepare_data()
        arrays = cache.open()
        valid = arrays["valid"].bool()
        self.skipped = [str(p) for p, ok in zip(paths, valid.tolist()) if not ok]
        if self.skipped:
            log.warning(
                "notMNIST: skipped %d unreadable file(s) (the official archive contains a few), e.g. %s",
                len(self.skipped),
                self.skipped[0],
            )
        keep = torch.nonzero(valid).flatten()
        tensors = {"image": arrays["image"][keep], "label": torch.tensor(labels)[keep]}
        return tensors, seeded_splits(len(keep), self.val_size, self.test_size, self.seed)
