"""Latent sweeps: move one latent node step by step, decode, and see what changes and where the
encoder's attention for that node goes. CVAE attribute sweeps vary one condition entry with z
fixed. Plus rankings that put a model's informative dimensions first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.xai import targets
from src.xai.methods.gradcam import gradcam

SCALES = ("aggregate", "posterior", "absolute")
__all__ = ["SCALES", "Sweep", "attention_mass", "attribute_sweep", "latent_sweep", "offset_scale", "rank_dimensions"]


def rank_dimensions(scores: torch.Tensor, top: int | None = None) -> list[int]:
    """Dimension indices by descending score (KL per dimension, attention mass, ...)."""
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True).tolist()
    return order[:top] if top else order


def attention_mass(raw_maps: torch.Tensor) -> torch.Tensor:
    """[K] total Grad-CAM mass of each target's raw maps [B, K, h, w], averaged over the batch."""
    return raw_maps.sum(dim=(-2, -1)).mean(0)


def offset_scale(mu: torch.Tensor, logvar: torch.Tensor, scale: str) -> torch.Tensor:
    """[B, latent_dim] the unit an offset is measured in, per sample and dimension.

    aggregate: the spread of the dimension over the batch's posterior mixture,
    sqrt(Var_b(mu) + mean_b(sigma^2)) (~1 for a dimension that follows the prior);
    posterior: each sample's own sigma; absolute: 1 (offsets are added as given, as in [Panday2021])."""
    if scale == "aggregate":
        var = mu.var(0, unbiased=False) + logvar.exp().mean(0)
        return var.sqrt().expand_as(mu)
    if scale == "posterior":
        return (0.5 * logvar).exp()
    if scale == "absolute":
        return torch.ones_like(mu)
    raise ValueError(f"unknown sweep scale {scale!r}; choose one of {SCALES}")


@dataclass
class Sweep:
    """images: [B, D, J, C, H, W] decoded; maps: [B, D, J, H, W] normalised Grad-CAM of the swept
    node on each decoded image (re-encoded), or None; z: [B, D, J, latent_dim]; dims: the D swept
    dimensions; offsets: [J] in `scale` units; steps: [B, D, J] the actual added amounts."""

    images: torch.Tensor
    maps: torch.Tensor | None
    z: torch.Tensor
    dims: list[int]
    offsets: torch.Tensor
    steps: torch.Tensor
    raw_maps: torch.Tensor | None = None


@torch.no_grad()
def latent_sweep(
    model,
    inputs: torch.Tensor,
    target: targets.Columns | Sequence[int],
    *,
    offsets: Sequence[float] | torch.Tensor = (-3, -2, -1, 0, 1, 2, 3),
    c: torch.Tensor | None = None,
    scale: str = "aggregate",
    with_maps: bool = True,
    layer: str | None = None,
    chunk: int = 256,
) -> Sweep:
    """Decode mu + offset * unit * e_i for each latent dimension i the target selects
    (`targets.select(dims)`) and each offset; with
    `with_maps`, re-encode each decoded image (under the same c) and take the Grad-CAM map of
    mu_i, the node being moved ([Liu2020]'s per-dimension map). `unit` follows `scale` (see
    `offset_scale`); the [Panday2021] sweep is scale='absolute' with offsets 0.1 ... 0.9."""
    x, dims = inputs, targets.shared_columns(target, "latent dimensions")
    if not dims:
        raise ValueError("latent_sweep needs at least one dimension")
    bad = [d for d in dims if not 0 <= d < model.latent_dim]
    if bad:
        raise ValueError(f"dimensions {bad} are outside the model's latent_dim = {model.latent_dim}")
    offsets = torch.as_tensor(offsets, dtype=x.dtype, device=x.device).flatten()
    mu, logvar = model.encode(x, c)
    unit = offset_scale(mu, logvar, scale)[:, dims]  # [B, D]
    b, d, j = x.shape[0], len(dims), offsets.numel()
    steps = unit[:, :, None] * offsets[None, None, :]  # [B, D, J]
    z = mu[:, None, None, :].repeat(1, d, j, 1)  # [B, D, J, L]
    for n, dim in enumerate(dims):
        z[:, n, :, dim] += steps[:, n, :]
    flat_z = z.reshape(b * d * j, -1)
    flat_c = None if c is None else c[:, None, None, :].expand(b, d, j, c.shape[-1]).reshape(b * d * j, -1)
    images = torch.cat(
        [
            model.decode(flat_z[s : s + chunk], None if flat_c is None else flat_c[s : s + chunk])
            for s in range(0, len(flat_z), chunk)
        ]
    )
    maps = raw = None
    if with_maps:
        node = torch.as_tensor(dims, device=x.device)[None, :, None].expand(b, d, j).reshape(-1, 1)
        parts_raw, parts_norm = [], []
        for s in range(0, len(images), chunk):
            cc = None if flat_c is None else flat_c[s : s + chunk]
            cam = gradcam(
                model,
                images[s : s + chunk],
                targets.per_sample(node[s : s + chunk]),
                layer=layer,
                forward=targets.latent_mean(model, cc),
            )
            parts_raw.append(cam.upsampled()[:, 0])
            parts_norm.append(cam.normalized()[:, 0])
        raw = torch.cat(parts_raw).reshape(b, d, j, *x.shape[-2:])
        maps = torch.cat(parts_norm).reshape(b, d, j, *x.shape[-2:])
    return Sweep(images.reshape(b, d, j, *images.shape[1:]), maps, z, dims, offsets, steps, raw)


@torch.no_grad()
def attribute_sweep(
    model,
    inputs: torch.Tensor,
    target: targets.Columns | Sequence[int],
    *,
    c: torch.Tensor,
    values: Sequence[float] | torch.Tensor = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> torch.Tensor:
    """CVAE: [B, A, J, C, H, W] decodings of z = mu(x, c) with each condition entry the target
    selects (`targets.select(attribute indices)`) set to each value (the other entries as in c):
    what one attribute controls with the face held fixed."""
    x, attributes = inputs, targets.shared_columns(target, "condition entries")
    values = torch.as_tensor(values, dtype=c.dtype, device=c.device).flatten()
    mu, _ = model.encode(x, c)
    b, a, j = x.shape[0], len(attributes), values.numel()
    cond = c[:, None, None, :].repeat(1, a, j, 1)
    for i, attr in enumerate(attributes):
        cond[:, i, :, attr] = values
    z = mu[:, None, None, :].expand(b, a, j, mu.shape[-1])
    images = model.decode(z.reshape(b * a * j, -1), cond.reshape(b * a * j, -1))
    return images.reshape(b, a, j, *images.shape[1:])
