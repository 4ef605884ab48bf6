"""Score attention maps against ground-truth part masks (synthetic faces know where every part is).

For each latent dimension: which part holds the largest share of its Grad-CAM mass, which part its
sweep changes most, and how much of its attention falls inside that part, next to the part's share
of the image area (what attention spread evenly would score)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.ops import kl_per_dimension
from src.xai import targets
from src.xai.gradcam import grad_cam
from src.xai.sweeps import latent_sweep, rank_dimensions


def part_shares(weights: torch.Tensor, parts: torch.Tensor, num_parts: int) -> torch.Tensor:
    """[K, P]: for non-negative maps `weights` [B, K, H, W] and class maps `parts` [B, H, W], the
    share of each map's mass in each part, averaged over the samples whose map is not all zero."""
    if weights.shape[0] != parts.shape[0] or weights.shape[-2:] != parts.shape[-2:]:
        raise ValueError(f"maps {tuple(weights.shape)} and part masks {tuple(parts.shape)} do not line up")
    onehot = torch.nn.functional.one_hot(parts.long(), num_parts).permute(0, 3, 1, 2).to(weights.dtype)  # [B,P,H,W]
    mass = torch.einsum("bkhw,bphw->bkp", weights, onehot)  # [B, K, P]
    total = mass.sum(-1, keepdim=True)
    valid = (total > 0).to(weights.dtype)
    shares = torch.where(total > 0, mass / total.clamp_min(torch.finfo(weights.dtype).tiny), torch.zeros_like(mass))
    return (shares * valid).sum(0) / valid.sum(0).clamp_min(1)


def sweep_change(images: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] how much each pixel moves over a sweep [B, D, J, C, H, W]: the range over the
    steps, summed over channels."""
    return (images.amax(dim=2) - images.amin(dim=2)).sum(dim=2)


def score_dimensions(
    maps: torch.Tensor,
    change: torch.Tensor,
    parts: torch.Tensor,
    part_names: Sequence[str],
    dims: Sequence[int],
) -> list[dict]:
    """One row per dimension: maps [B, D, H, W] (raw Grad-CAM of each dimension on the probes),
    change [B, D, H, W] (its sweep's pixel change), parts [B, H, W] class maps."""
    p = len(part_names)
    attention = part_shares(maps, parts, p)  # [D, P]
    changed = part_shares(change, parts, p)
    area = torch.nn.functional.one_hot(parts.long(), p).float().mean(dim=(0, 1, 2))  # [P]
    rows = []
    for n, dim in enumerate(dims):
        top = int(attention[n].argmax())
        target = int(changed[n].argmax())
        rows.append({
            "dim": int(dim),
            "top_attention_part": part_names[top],
            "top_attention_share": float(attention[n, top]),
            "most_changed_part": part_names[target],
            "change_share": float(changed[n, target]),
            "attention_in_changed_part": float(attention[n, target]),
            "changed_part_area": float(area[target]),
        })  # fmt: skip
    return rows


@dataclass
class PartAttention:
    """`kl` [latent_dim] KL per dimension on the inputs; `scores` {layer: one `score_dimensions`
    row per scored dimension}."""

    kl: torch.Tensor
    scores: dict[str, list[dict]]

    def summary(self, layer: str | None = None) -> dict:
        """For one layer's rows (the only layer when None): the mean share of attention inside the
        part each dimension changes most, next to that part's mean share of the image area, and
        the rows themselves."""
        rows = self.scores[layer] if layer is not None else next(iter(self.scores.values()))
        n = max(len(rows), 1)
        return {"mean_attention_in_changed_part": sum(r["attention_in_changed_part"] for r in rows) / n,
                "mean_changed_part_area": sum(r["changed_part_area"] for r in rows) / n,
                "dimensions": rows}  # fmt: skip


def part_attention(
    model,
    inputs: torch.Tensor,
    target: targets.Columns | Sequence[int] | None = None,
    *,
    parts: torch.Tensor,
    part_names: Sequence[str],
    num_dims: int = 10,
    offsets: Sequence[float] = (-2.0, 2.0),
    scale: str = "aggregate",
    layers: Sequence[str | None] = (None,),
    c: torch.Tensor | None = None,
) -> PartAttention:
    """Attention of each latent dimension scored against part masks: for the dimensions the
    target selects (`targets.select(dims)`; None = the `num_dims` with the most KL on the
    inputs [B, C, H, W]) with class maps `parts` [B, H, W]: one sweep per dimension, then each
    layer's Grad-CAM maps (None = the model's cam_layer) scored against it."""
    x = inputs
    with torch.no_grad():
        mu, logvar = model.encode(x, c)
    kl = kl_per_dimension(mu, logvar)
    dims = rank_dimensions(kl, num_dims) if target is None else targets.shared_columns(target, "latent dimensions")
    sweep = latent_sweep(model, x, targets.select(dims), offsets=offsets, c=c, scale=scale, with_maps=False)
    change = sweep_change(sweep.images)
    result = {}
    for layer in layers:
        cam = grad_cam(model, x, targets.select(dims), layer=layer, forward=targets.latent_mean(model, c))
        result[layer or model.cam_layer] = score_dimensions(cam.maps, change, parts, part_names, dims)
    return PartAttention(kl, result)
