"""Array-backed image datasets (in RAM or memory-mapped) and the datamodule base that owns
splits and loaders. Every dataset is one set of arrays plus index tensors per split."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.base.errors import ConfigError

Batch = dict[str, torch.Tensor]
SPLITS = ("train", "val", "test")


class TensorImageDataset(Dataset):
    """uint8 images [N, C, H, W] plus per-sample fields, restricted to `indices`, served as dict
    batches ('image' as float in [0, 1], 'index' the row in the full arrays; with `uint8`, the
    image as stored: the datamodule's loaders serve that, a quarter of float32's bytes to copy to
    the device, and `to_float` there).

    `__getitems__` gathers a whole batch with one index operation, so the loader does no
    per-sample Python work; `collate_batch` passes the ready batch through. `transform` maps a
    batch to a batch (e.g. part masks -> binary targets)."""

    def __init__(
        self,
        image: torch.Tensor,
        indices: torch.Tensor | None = None,
        transform: Callable[[Batch], Batch] | None = None,
        uint8: bool = False,
        **fields: torch.Tensor,
    ) -> None:
        if image.dtype != torch.uint8 or image.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {image.dtype} {tuple(image.shape)}")
        for name, value in fields.items():
            if len(value) != len(image):
                raise ValueError(f"field '{name}' has {len(value)} rows for {len(image)} images")
        self.images = image
        self.fields = fields
        self.indices = torch.arange(len(image)) if indices is None else indices.long()
        self.transform = transform
        self.uint8 = uint8

    def as_uint8(self) -> TensorImageDataset:
        """The same dataset (same arrays) serving uint8 images."""
        view = copy.copy(self)
        view.uint8 = True
        return view

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> Batch:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        image = self.images[rows]
        batch = {"image": image if self.uint8 else to_float(image), "index": rows}
        batch.update({name: value[rows] for name, value in self.fields.items()})
        return self.transform(batch) if self.transform else batch

    def __getitem__(self, position: int) -> Batch:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 [..] -> float32 in [0, 1], where the tensor is (on the GPU for loader batches)."""
    return image.float().div_(255.0)


def seeded_positions(size: int, n: int, seed: int, *, in_order: bool = True) -> torch.Tensor:
    """The probe choice of every callback: min(n, size) positions of a dataset of `size` samples,
    the head of a permutation drawn from a generator of its own seeded `seed` (the global RNG is
    left alone); in dataset order, or in the permutation's with in_order=False."""
    head = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[: min(n, size)]
    return head.sort().values if in_order else head


def seeded_rows(dataset: TensorImageDataset, n: int, seed: int) -> Batch:
    """One batch of the `seeded_positions` of `dataset`, in dataset order."""
    return dataset.__getitems__(seeded_positions(len(dataset), n, seed).tolist())


def collate_batch(batch: Any) -> Any:
    """Collate for TensorImageDataset: batches arrive already stacked."""
    if isinstance(batch, dict):
        return batch
    return torch.utils.data.default_collate(batch)


def fit_images(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 [N, C, H, W] resized (antialiased) to size x size and converted to `channels`
    (grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma); None keeps what is stored.
    Arrays already in shape are returned as they are (no copy: memory maps stay maps)."""
    if channels is not None and channels != images.shape[1]:
        if images.shape[1] == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] == 3 and channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise ConfigError("data.channels", channels, f"cannot convert {images.shape[1]}-channel images; use 1 or 3")
    if size is not None and tuple(images.shape[2:]) != (size, size):
        if size <= 0:
            raise ConfigError("data.image_size", size, "must be a positive integer")
        resized = []
        for chunk in images.split(4096):  # bound the float copy's memory
            out = torch.nn.functional.interpolate(
                chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            resized.append(out.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(resized)
    return images if images.is_contiguous() else images.contiguous()


def _count(size: int | float, n: int) -> int:
    return int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into (train, val); val_size is a count or a fraction."""
    n_val = _count(val_size, n)
    if not 0 < n_val < n:
        raise ConfigError("data.val_size", val_size, f"must leave both splits non-empty for {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def seeded_splits(n: int, val_size: int | float, test_size: int | float, seed: int) -> dict[str, torch.Tensor]:
    """Seeded train/val/test split of range(n) for datasets that ship without one."""
    n_val, n_test = _count(val_size, n), _count(test_size, n)
    if n_val <= 0 or n_test <= 0 or n_val + n_test >= n:
        raise ConfigError(
            "data.val_size/test_size", (val_size, test_size), f"must leave all three splits non-empty for {n} samples"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {
        "train": perm[n_val + n_test :].sort().values,
        "val": perm[:n_val].sort().values,
        "test": perm[n_val : n_val + n_test].sort().values,
    }


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): Lightning calls `set_epoch` before each
    epoch, so a run resumed at epoch k sees the same order as one that never stopped; `skip`
    drops the first samples of the epoch once, for a run resumed in the middle of it."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0
        self.skip = 0  # samples of this epoch already trained on (a run resumed mid-epoch); used once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        start, self.skip = self.skip, 0
        return iter(torch.randperm(self.length, generator=g)[start:].tolist())


class NormalData:
    """The anomaly-detection protocol's split: train and validate on normal samples only, test on
    all of them, with a per-sample 'anomalous' flag (bool) in every batch.

    Normal means: the label is one of `classes` (the one-class protocol: train on one class, test
    on all), and none of `without_attributes` is set (e.g. faces without Eyeglasses and
    Wearing_Hat). Config: `data.normal: {classes: [3]}` or `{without_attributes: [Eyeglasses]}`."""

    KEYS = ("classes", "without_attributes")

    def __init__(self, classes: list[int] | None = None, without_attributes: list[str] | None = None) -> None:
        self.classes = [int(c) for c in classes] if classes is not None else None
        self.without_attributes = list(without_attributes) if without_attributes else []

    @classmethod
    def from_config(cls, normal: dict | None) -> NormalData | None:
        if not normal:
            return None
        unknown = sorted(set(normal) - set(cls.KEYS))
        if unknown:
            raise ConfigError("data.normal", unknown, f"unknown key(s); data.normal takes {list(cls.KEYS)}")
        classes = normal.get("classes")
        if classes is not None and (isinstance(classes, (int, str)) or not len(classes)):
            raise ConfigError("data.normal.classes", classes, "give a non-empty list of class indices, e.g. [3]")
        out = cls(classes, normal.get("without_attributes"))
        if out.classes is None and not out.without_attributes:
            raise ConfigError("data.normal", dict(normal), "say what is normal: classes and/or without_attributes")
        return out

    def describe(self) -> dict:
        return {"classes": self.classes, "without_attributes": self.without_attributes}

    def anomalous(self, tensors: dict[str, torch.Tensor], attribute_names: list[str] | None) -> torch.Tensor:
        """[N] bool: the samples that are not normal."""
        n = len(tensors["image"])
        out = torch.zeros(n, dtype=torch.bool)
        if self.classes is not None:
            if "label" not in tensors:
                raise ConfigError("data.normal.classes", self.classes, "this data set has no class labels")
            out |= ~torch.isin(tensors["label"].long(), torch.tensor(self.classes))
        if self.without_attributes:
            names = list(attribute_names or [])
            missing = [a for a in self.without_attributes if a not in names]
            if "attributes" not in tensors or missing:
                raise ConfigError(
                    "data.normal.without_attributes",
                    missing or self.without_attributes,
                    f"not among the loaded attributes {names}; add them to data.attributes (null loads all)",
                )
            columns = [names.index(a) for a in self.without_attributes]
            out |= (tensors["attributes"][:, columns] > 0.5).any(1)
        return out

    def apply(
        self, tensors: dict[str, torch.Tensor], splits: dict[str, torch.Tensor], attribute_names: list[str] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Adds 'anomalous' to the tensors and keeps only normal samples in train and val."""
        anomalous = self.anomalous(tensors, attribute_names)
        out = dict(splits)
        for name in ("train", "val"):
            if name in out:
                out[name] = out[name][~anomalous[out[name]]]
                if len(out[name]) == 0:
                    raise ConfigError("data.normal", self.describe(), f"leaves no normal sample in the {name} split")
        return {**tensors, "anomalous": anomalous}, out


class InMemoryDataModule(L.LightningDataModule):
    """Base for array-backed datasets; subclasses implement `load` (arrays + split indices)."""

    class_names: list[str] = []
    # what a batch holds, known before any file is read (configs are checked against it):
    # the fields, the number of classes behind 'label', and the attribute names behind 'attributes'
    batch_fields: tuple[str, ...] = ("image", "label")
    num_label_classes: int = 10
    all_attributes: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        normal: dict | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ConfigError("data.batch_size", batch_size, "must be a positive integer")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.image_size = image_size
        self.channels = channels
        self.normal = NormalData.from_config(normal)
        self.datasets: dict[str, TensorImageDataset] | None = None

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({'image': uint8 [N, C, H, W], <fields>...}, {'train'|'val'|'test': row indices})."""
        raise NotImplementedError

    def batch_transform(self) -> Callable[[Batch], Batch] | None:
        """Per-batch transform applied by the datasets (None: batches as stored)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        tensors, splits = self.load()
        tensors["image"] = fit_images(tensors["image"], self.image_size, self.channels)
        if self.normal is not None:
            tensors, splits = self.normal.apply(tensors, splits, getattr(self, "attribute_names", None))
        transform = self.batch_transform()
        self.datasets = {
            name: TensorImageDataset(indices=idx, transform=transform, **tensors) for name, idx in splits.items()
        }

    def _split(self, name: str) -> TensorImageDataset:
        if self.datasets is None:
            raise RuntimeError("call setup() before asking for a dataset or dataloader")
        return self.datasets[name]

    @property
    def train_set(self) -> TensorImageDataset:
        return self._split("train")

    @property
    def val_set(self) -> TensorImageDataset:
        return self._split("val")

    @property
    def test_set(self) -> TensorImageDataset:
        return self._split("test")

    def _loader(self, dataset: TensorImageDataset, shuffle: bool, batch_size: int) -> DataLoader:
        # training: a last batch of one sample is dropped (a different one each epoch, as the order is
        # shuffled): BatchNorm cannot normalise a single sample in train mode. Evaluation keeps all.
        drop_last = shuffle and len(dataset) % batch_size == 1 and len(dataset) > 1
        return DataLoader(
            dataset.as_uint8(),  # to float on the device: on_after_batch_transfer
            batch_size=batch_size,
            drop_last=drop_last,
            # the order is a function of (seed, epoch): reproducible run to run and across a resume
            sampler=EpochShuffle(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_batch,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The loaders' uint8 images to float in [0, 1], on the device they were copied to."""
        if isinstance(batch, dict) and batch.get("image") is not None and batch["image"].dtype == torch.uint8:
            batch["image"] = to_float(batch["image"])
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_set.images.shape[1:])  # type: ignore[return-value]
