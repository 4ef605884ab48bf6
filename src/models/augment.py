"""Training-time augmentation done on the batch tensor."""

from __future__ import annotations

import torch

from src.base.maps import gaussian_blur


def random_blur(
    x: torch.Tensor, max_sigma: float, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur each image of [B, C, H, W] with probability p by a Gaussian of sigma ~ U(0, max_sigma)
    pixels (separable, reflect-padded); the rest pass unchanged."""
    if max_sigma <= 0 or p <= 0:
        return x
    chosen = torch.rand(x.shape[0], generator=generator) < p
    sigma = torch.rand(x.shape[0], generator=generator) * max_sigma * chosen  # 0 = unchanged
    return gaussian_blur(x, sigma, radius=int(3 * max_sigma + 0.5))
