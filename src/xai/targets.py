"""Explanation targets: callables `target(output) -> [B, K]`, plus the forwards that produce the
output they read. Pair a forward with a target in `grad_cam(model, x, target, forward=...)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Target = Callable[[torch.Tensor], torch.Tensor]


def select(indices: Sequence[int] | torch.Tensor | None = None) -> Target:
    """Columns `indices` of a [B, N] output (all columns when None): class logits, latent means."""
    if indices is None:
        return lambda out: out

    def target(out: torch.Tensor) -> torch.Tensor:
        return out[:, torch.as_tensor(indices, device=out.device, dtype=torch.long)]

    return target


def per_sample(indices: torch.Tensor) -> Target:
    """Column indices[b, k] for sample b: [B, K] (e.g. each sample's own top classes)."""

    def target(out: torch.Tensor) -> torch.Tensor:
        return out.gather(1, indices.to(out.device).long().view(out.shape[0], -1))

    return target


def top_classes(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """[B, k] the k most likely classes of each sample, most likely first."""
    return logits.topk(k, dim=1).indices


def latent_mean(model, c: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward x -> mu [B, latent_dim] (Liu et al. 2020 differentiate the posterior mean)."""
    return lambda x: model.encode(x, c)[0]


def sampled_latent(model, c: torch.Tensor | None = None, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward x -> z = mu + eps * sigma with eps from a seeded generator: the Stuttgart authors' variant,
    reproducible (the same eps for the same batch shape and seed)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        mu, logvar = model.encode(x, c)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        eps = torch.randn(mu.shape, generator=g, dtype=mu.dtype).to(mu.device)
        return mu + eps * torch.exp(0.5 * logvar)

    return forward


def segmentation_region(classes: Sequence[int] | int, region: torch.Tensor | None = None) -> Target:
    """Seg-Grad-CAM target (Vinogradova et al. 2020): sum of class-c logits over a pixel set.

    Output is [B, C, H, W] logits (C = 1 for a binary mask). `region` is a [H, W], [B, H, W] or
    [B, K, H, W] 0/1 mask (one pixel, a box, an object); None = every pixel predicted as that
    class (argmax; > 0 for binary). Returns [B, K], K = len(classes)."""
    classes = [classes] if isinstance(classes, int) else list(classes)

    def target(out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 4:
            raise ValueError(f"segmentation_region needs [B, C, H, W] logits, got {tuple(out.shape)}")
        logits = out[:, classes]  # [B, K, H, W]
        if region is None:
            if out.shape[1] == 1:  # binary: the pixels with a positive logit
                hit = (out > 0).expand_as(logits)
            else:
                hit = out.argmax(1, keepdim=True) == torch.as_tensor(classes, device=out.device).view(1, -1, 1, 1)
            mask = hit.to(logits.dtype)
        else:
            mask = region.to(device=out.device, dtype=logits.dtype)
            while mask.dim() < 4:
                mask = mask.unsqueeze(0 if mask.dim() == 2 else 1)
        return (logits * mask).sum(dim=(-2, -1))

    return target


def box(size: tuple[int, int], top: int, left: int, height: int, width: int) -> torch.Tensor:
    """[H, W] 0/1 region: a rectangle (one pixel when height = width = 1)."""
    mask = torch.zeros(size)
    mask[top : top + height, left : left + width] = 1.0
    return mask


def reconstruction_error(
    model, c: torch.Tensor | None = None, kind: str = "bce"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward x -> [B, 1] reconstruction error of x through mu (no sampling): which regions
    the encoder's features make hard to reconstruct. kind: bce (sigmoid outputs) | mse."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        mu, _ = model.encode(x, c)
        if kind == "bce":
            err = F.binary_cross_entropy_with_logits(model.decode_logits(mu, c), x.detach(), reduction="none")
        elif kind == "mse":
            err = (model.decode(mu, c) - x.detach()).pow(2)
        else:
            raise ValueError(f"unknown reconstruction error {kind!r}; choose bce or mse")
        return err.flatten(1).sum(1, keepdim=True)

    return forward
