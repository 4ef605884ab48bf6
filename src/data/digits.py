"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images), upscaled to 28x28: a tiny
real dataset that needs no download, for fast tests and demos."""

from __future__ import annotations

import torch

from src.data.in_memory import InMemoryDataModule, seeded_splits


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [1797, 1, 8, 8] (0..16 scaled to 0..255) and labels [1797]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)
    return images.unsqueeze(1), torch.from_numpy(bunch.target).long()


class DigitsDataModule(InMemoryDataModule):
    """sklearn digits, resized (antialiased bilinear) to `image_size` (28 by default); seeded split."""

    class_names = [str(d) for d in range(10)]

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("image_size", 28)
        kwargs.setdefault("channels", 1)
        super().__init__(**kwargs)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        images, labels = load_digits_tensors()
        return {"image": images, "label": labels}, seeded_splits(len(images), self.val_size, self.test_size, self.seed)
