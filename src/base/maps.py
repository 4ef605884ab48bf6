"""Operations on images and explanation maps that models and explanations share: Gaussian
blur, scaling, and the overlap of two maps (the attention-disentanglement loss's term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], reflect-padded. `sigma`: one value, or one per image
    [B] (0 leaves that image as it is); kernel radius `radius`, default 3 x the largest sigma
    (cut to what the image size allows, then renormalised)."""
    b, c, h, w = x.shape
    kernel_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 input: a float64 kernel
    sig = torch.as_tensor(sigma, dtype=kernel_dtype).flatten().cpu()
    if float(sig.max()) <= 0:
        return x
    r = radius if radius is not None else int(3 * float(sig.max()) + 0.5)
    r = max(1, min(r, h - 1, w - 1))
    grid = torch.arange(-r, r + 1, dtype=kernel_dtype)
    k = torch.exp(-0.5 * (grid[None] / sig.clamp_min(1e-6)[:, None]) ** 2)  # [1 or B, K]; sigma 0 -> a delta
    k = (k / k.sum(1, keepdim=True)).expand(b, -1).repeat_interleave(c, 0).to(x.device, x.dtype)  # [B * C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def scale_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Divide each [H, W] map (the last two dims) by its maximum; maps that are all zero stay zero."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def min_max_scale(t: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """`t` scaled to [0, 1] over `dims` (each slice on its own); constant slices become 0."""
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    return torch.where(hi > lo, (t - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(t))


def attention_overlap(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """[Liu2020]'s attention-disentanglement term between non-negative maps a and b:
    2 * sum min(a, b) / sum (a + b) over `dims` (1: identical maps, 0: disjoint supports; 0 where
    both maps are all zero)."""
    total = (a + b).sum(dims)
    return torch.where(total > 0, 2 * torch.minimum(a, b).sum(dims) / total.clamp_min(1e-12), torch.zeros_like(total))
