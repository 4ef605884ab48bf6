"""Training-time augmentation done on the batch tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_blur(
    x: torch.Tensor, max_sigma: float, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blur each image of [B, C, H, W] with probability p by a Gaussian of sigma ~ U(0, max_sigma)
    pixels (separable, reflect-padded); the rest pass unchanged."""
    if max_sigma <= 0 or p <= 0:
        return x
    b, c, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < p
    sigma = torch.rand(b, generator=generator) * max_sigma * chosen  # 0 = unchanged
    radius = max(1, int(3 * max_sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp_min(1e-6)[:, None]) ** 2)  # [B, K]
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.to(x.device, x.dtype).repeat_interleave(c, 0)  # [B*C, K], one per channel
    y = x.reshape(1, b * c, h, w)
    pad = min(radius, h - 1, w - 1)
    if pad < radius:  # tiny images: reflect padding cannot exceed the size
        kernel = kernel[:, radius - pad : radius + pad + 1]
        kernel = kernel / kernel.sum(1, keepdim=True)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)
