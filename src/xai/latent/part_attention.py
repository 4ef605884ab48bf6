"""Score attention maps against ground-truth part masks (synthetic faces know where every part is).

For each latent dimension: the part its sweep acts on, found by change density (the share of the
sweep's pixel change in a part divided by the part's share of the image area, so that a large
part such as the background does not win by its size alone), and how the dimension's attention
sits on that part: its density there (1 = attention spread evenly, what the part's area alone
predicts) and its AUROC for that part's pixels (0.5 = chance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.base.gaussian import kl_per_dimension
from src.xai import targets
from src.xai.latent.sweeps import latent_sweep, rank_dimensions
from src.xai.methods.gradcam import gradcam
from src.xai.scores.ground_truth import auroc


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
    *,
    min_area: float = 0.01,
) -> list[dict]:
    """One row per dimension: maps [B, D, H, W] (raw Grad-CAM of each dimension on the probes),
    change [B, D, H, W] (its sweep's pixel change), parts [B, H, W] class maps.

    Densities are a part's share of a map's mass (`part_shares`) divided by the part's share of
    the image area (over all samples); parts covering less than `min_area` of the image are not
    candidates (a few pixels make densities noisy). Row keys:
      dim;
      acted_part          the part with the highest change density (where the dimension acts);
      change_density      the change density there, change_share its share of the change,
      part_area           that part's area share;
      attention_share     the share of the attention in that part, attention_density the
                          same over the part's area (1 = no preference for the part);
      attention_auroc     the attention map ranking that part's pixels, per sample (samples
                          showing the part), averaged (0.5 = chance);
      densest_attention_part   the candidate part with the highest attention density.
    A dimension whose sweep changes nothing gets acted_part None and NaN scores; an all-zero
    attention map, densest_attention_part None."""
    p = len(part_names)
    attention = part_shares(maps, parts, p)  # [D, P]
    changed = part_shares(change, parts, p)
    area = torch.nn.functional.one_hot(parts.long(), p).to(attention.dtype).mean(dim=(0, 1, 2))  # [P]
    candidate = area >= min_area
    if not candidate.any():
        candidate = area > 0
    spread = area.clamp_min(torch.finfo(area.dtype).tiny)
    change_density = torch.where(candidate, changed / spread, torch.full_like(changed, -1.0))
    attention_density = torch.where(candidate, attention / spread, torch.full_like(attention, -1.0))
    nan = float("nan")
    rows = []
    for n, dim in enumerate(dims):
        row = {
            "dim": int(dim),
            "acted_part": None,
            "change_density": nan,
            "change_share": nan,
            "part_area": nan,
            "attention_share": nan,
            "attention_density": nan,
            "attention_auroc": nan,
            "densest_attention_part": None,
        }
        if attention[n].sum() > 0:
            row["densest_attention_part"] = part_names[int(attention_density[n].argmax())]
        if changed[n].sum() > 0:
            target = int(change_density[n].argmax())
            inside = (parts == target).flatten(1)
            row.update(
                {
                    "acted_part": part_names[target],
                    "change_density": float(change_density[n, target]),
                    "change_share": float(changed[n, target]),
                    "part_area": float(area[target]),
                    "attention_share": float(attention[n, target]),
                    "attention_density": float(attention[n, target] / spread[target]),
                    "attention_auroc": float(auroc(maps[:, n].flatten(1), inside).nanmean()),
                }
            )
        rows.append(row)
    return rows


SCORES = ("attention_density", "attention_auroc", "attention_share", "change_density", "part_area")


@dataclass
class PartAttention:
    """`kl` [latent_dim] KL per dimension on the inputs; `scores` {layer: one `score_dimensions`
    row per scored dimension}."""

    kl: torch.Tensor
    scores: dict[str, list[dict]]

    def summary(self, layer: str | None = None) -> dict:
        """For one layer's rows (the only layer when None): `mean_<key>` for each key of SCORES
        over the dimensions (those without a value left out) - mean_attention_density (1 =
        attention spread evenly), mean_attention_auroc (0.5 = chance), mean_attention_share,
        mean_change_density, mean_part_area - and the rows themselves under `dimensions`."""
        rows = self.scores[layer] if layer is not None else next(iter(self.scores.values()))
        means = {}
        for key in SCORES:
            values = [r[key] for r in rows if r[key] == r[key]]  # NaN != NaN
            means[f"mean_{key}"] = sum(values) / len(values) if values else float("nan")
        return {**means, "dimensions": rows}


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
    min_area: float = 0.01,
) -> PartAttention:
    """Attention of each latent dimension scored against part masks: for the dimensions the
    target selects (`targets.select(dims)`; None = the `num_dims` with the most KL on the
    inputs [B, C, H, W]) with class maps `parts` [B, H, W]: one sweep per dimension gives the part
    it acts on (highest change density among the parts covering at least `min_area` of the
    image), then each layer's Grad-CAM maps (None = the model's cam_layer) are scored on that
    part (`score_dimensions`)."""
    x = inputs
    with torch.no_grad():
        mu, logvar = model.encode(x, c)
    kl = kl_per_dimension(mu, logvar)
    dims = rank_dimensions(kl, num_dims) if target is None else targets.shared_columns(target, "latent dimensions")
    sweep = latent_sweep(model, x, targets.select(dims), offsets=offsets, c=c, scale=scale, with_maps=False)
    change = sweep_change(sweep.images)
    result = {}
    for layer in layers:
        cam = gradcam(model, x, targets.select(dims), layer=layer, forward=targets.latent_mean(model, c))
        result[layer or model.cam_layer] = score_dimensions(
            cam.maps, change, parts, part_names, dims, min_area=min_area
        )
    return PartAttention(kl, result)
