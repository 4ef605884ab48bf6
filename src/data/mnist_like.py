"""MNIST-format (IDX) datasets: the files, where to look for them, and their datamodules."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from src.base.errors import DataError
from src.data.download import fetch
from src.data.idx import read_idx
from src.data.in_memory import InMemoryDataModule, split_indices

log = logging.getLogger(__name__)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


ALL_STEMS = [stem for stems in IDX_FILES.values() for stem in stems]


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in `folder`, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def missing_idx_files(folder: Path) -> list[str]:
    return [stem for stem in ALL_STEMS if find_idx_file(folder, stem) is None]


class IdxDataModule(InMemoryDataModule):
    """A dataset stored as the four MNIST IDX files, searched in `root`, then `system_dirs`,
    then downloaded from `url` into `download_dir` when `download` is true."""

    name = "idx"
    url: str = ""
    system_dirs: tuple[str, ...] = ()
    install_hint = ""

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        download_dir: str | None = None,
        search_system: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.download = download
        self.download_dir = Path(download_dir).expanduser() if download_dir else self.root
        self.search_system = search_system
        self._folder: Path | None = None

    def candidate_dirs(self) -> list[Path]:
        dirs = [self.root] if self.root else []
        if self.search_system:
            dirs += [Path(d) for d in self.system_dirs]
        return dirs

    def locate(self) -> Path:
        """Folder holding all four files; downloads them if allowed; else a DataError saying
        where it looked and how to get the data."""
        if self._folder is not None:
            return self._folder
        looked = []
        for folder in self.candidate_dirs():
            missing = missing_idx_files(folder)
            if not missing:
                self._folder = folder
                return folder
            looked.append(
                f"{folder} (missing {', '.join(missing)})" if folder.is_dir() else f"{folder} (no such folder)"
            )
        download_note = "download disabled (data.download=false)"
        if self.download and self.url and self.download_dir is not None:
            try:
                for stem in missing_idx_files(self.download_dir):
                    log.info("downloading %s%s.gz to %s", self.url, stem, self.download_dir)
                    fetch(f"{self.url}{stem}.gz", self.download_dir / f"{stem}.gz")
                self._folder = self.download_dir
                return self.download_dir
            except OSError as exc:
                download_note = f"download from {self.url} failed: {exc}"
        elif self.download:
            download_note = "no download folder (set data.root or data.download_dir)"
        where = "\n  ".join(looked) or "(nowhere: data.root is unset and system folders are off)"
        raise DataError(
            f"{self.name} not found. Looked in:\n  {where}\n{download_note}.\n"
            f"To fix: {self.install_hint}put the four IDX files ({', '.join(ALL_STEMS)}, optionally .gz) "
            f"in a folder and pass data.root=/that/folder."
        )

    def prepare_data(self) -> None:
        self.locate()  # downloads once, on one process per node

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [N, 1, H, W] and long labels [N] of the 'train' or 'test' files."""
        folder = self.locate()
        images_stem, labels_stem = IDX_FILES[split]
        images = read_idx(find_idx_file(folder, images_stem))
        labels = read_idx(find_idx_file(folder, labels_stem))
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise DataError(
                f"{folder / images_stem}: expected uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise DataError(
                f"{folder / labels_stem}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images "
                f"in {folder / images_stem}; the two files do not belong together"
            )
        return images.unsqueeze(1), labels.long()

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        train_x, train_y = self.read_split("train")
        test_x, test_y = self.read_split("test")
        train_idx, val_idx = split_indices(len(train_x), self.val_size, self.seed)  # val: seeded part of train
        tensors = {"image": torch.cat([train_x, test_x]), "label": torch.cat([train_y, test_y])}
        test_idx = torch.arange(len(train_x), len(train_x) + len(test_x))
        return tensors, {"train": train_idx, "val": val_idx, "test": test_idx}


class FashionMNISTDataModule(IdxDataModule):
    """Zalando's FashionMNIST: 60k train / 10k test 28x28 grey images of 10 clothing classes."""

    name = "FashionMNIST"
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    install_hint = (
        "on Debian/Ubuntu run 'apt-get install dataset-fashion-mnist' "
        "(files land in /usr/share/datasets/fashion-mnist), or "
    )
    class_names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]


class MNISTDataModule(IdxDataModule):
    """LeCun's MNIST handwritten digits: 60k train / 10k test 28x28 grey images."""

    name = "MNIST"
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    system_dirs = ()
    install_hint = "download the four files from https://ossci-datasets.s3.amazonaws.com/mnist/, or "
    class_names = [str(d) for d in range(10)]
