"""In-memory image datasets and the datamodule base that owns splits and loaders."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from src.errors import ConfigError


class TensorImageDataset(Dataset):
    """uint8 images [N, C, H, W] plus optional per-sample tensors, served as dict batches.

    `__getitems__` gathers a whole batch with one index operation, so the loader does no
    per-sample Python work; `collate_batch` then passes the ready batch through.
    """

    def __init__(self, image: torch.Tensor, **fields: torch.Tensor) -> None:
        if image.dtype != torch.uint8 or image.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {image.dtype} {tuple(image.shape)}")
        for name, value in fields.items():
            if len(value) != len(image):
                raise ValueError(f"field '{name}' has {len(value)} rows for {len(image)} images")
        self.images = image
        self.fields = fields

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"image": self.images[idx].float().div_(255.0), "index": idx}
        batch.update({name: value[idx] for name, value in self.fields.items()})
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate_batch(batch: Any) -> Any:
    """Collate for TensorImageDataset: batches arrive already stacked."""
    if isinstance(batch, dict):
        return batch
    return torch.utils.data.default_collate(batch)


def fit_images(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 [N, C, H, W] resized (antialiased) to size x size and converted to `channels`
    (grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma); None keeps what is stored."""
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
    return images.contiguous()


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into (train, val); val_size is a count or a fraction."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise ConfigError("data.val_size", val_size, f"must leave both splits non-empty for {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class InMemoryDataModule(L.LightningDataModule):
    """Base for datasets small enough to hold as tensors; subclasses implement `load_tensors`."""

    class_names: list[str] = []

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_size: int | float = 0.1,
        seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.channels = channels
        if batch_size <= 0:
            raise ConfigError("data.batch_size", batch_size, "must be a positive integer")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.val_size = val_size
        self.seed = seed
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    def load_tensors(self, split: str) -> dict[str, torch.Tensor]:
        """Return {'image': uint8 [N, C, H, W], ...} for split 'train' (incl. val) or 'test'."""
        raise NotImplementedError

    def _load(self, split: str) -> dict[str, torch.Tensor]:
        tensors = self.load_tensors(split)
        tensors["image"] = fit_images(tensors["image"], self.image_size, self.channels)
        return tensors

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self._load("train")
            train_idx, val_idx = split_indices(len(full["image"]), self.val_size, self.seed)
            self.train_set = TensorImageDataset(**{k: v[train_idx] for k, v in full.items()})
            self.val_set = TensorImageDataset(**{k: v[val_idx] for k, v in full.items()})
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = TensorImageDataset(**self._load("test"))

    def _loader(self, dataset: TensorImageDataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_batch,
            # a seeded generator makes the shuffle order reproducible run to run
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        dataset = self.train_set or self.test_set
        if dataset is None:
            raise RuntimeError("call setup() first")
        return tuple(dataset.images.shape[1:])  # type: ignore[return-value]
