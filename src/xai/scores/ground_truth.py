"""Ground truth for latent explanations, and the scores that compare maps with it.

An encoder-side map of latent dimension k (Grad-CAM of mu_k, a saliency of mu_k, ...) claims
"dimension k is about these pixels". Two independent answers to where a dimension acts:

- the decoder: `decoder_action` - |d x_hat / d z_k| per pixel at z = mu(x), the pixels the
  decoder moves when z_k moves (exact forward-mode derivatives, no sweep step to choose);
- the data: counterfactual pairs (the same synthetic face rendered with an attribute off and
  on, rendered by the data layer) - `encoding` says which dimensions encode the attribute,
  the pairs' changed pixels are the attribute's region.

Scores (maps are compared by ranking, so any positive scaling of a map scores the same):
`auroc` (Mann-Whitney, ties averaged), `region_scores` (pointing game, mass inside, density,
AUROC against a region), `agreement` (encoder-side maps against action maps, per dimension,
with a mismatched-pair and a uniform-map baseline), `counterfactual_localisation`.

Which method produced a map is the caller's choice: these functions take maps, the caller runs
the methods with the call shape (`method(model, inputs, target) -> result`) and passes
`result.maps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from src.xai import targets
from src.xai.core import Explanation, get_method
from src.xai.scores.metrics import _ranks, spearman

__all__ = [
    "Agreement",
    "DecoderAction",
    "Encoding",
    "agreement",
    "auroc",
    "condition_action",
    "counterfactual_localisation",
    "decoder_action",
    "encoding",
    "region_scores",
    "top_fraction",
]


# -- where each dimension acts: the decoder's Jacobian ---------------------------------------------


@dataclass
class DecoderAction(Explanation):
    """`maps` [B, K, H, W]: ||d x_hat / d z_k||_2 over the image channels at z = mu(x), one map per
    selected dimension `dims[k]`; `mu` [B, latent_dim] the point the derivatives are taken at."""

    maps: torch.Tensor
    dims: list[int]
    mu: torch.Tensor = field(repr=False)


def decoder_action(
    model,
    inputs: torch.Tensor,
    target: targets.Columns | Sequence[int] | None = None,
    *,
    c: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> DecoderAction:
    """Where each latent dimension acts on the image: |d x_hat / d z_k| per pixel (the L2 norm over
    the image channels) at z = mu(inputs), for the dimensions the target selects
    (`targets.select(dims)`; None = all latent_dim), in that order.

    All K Jacobian columns at once: forward-mode JVPs through `model.decode(z, c)` (torch.func.jvp),
    vmapped over the K basis vectors, `chunk_size` of them at a time. Call `.eval()` first: the
    derivative is of the decoder as it runs at inference (BatchNorm on its running statistics;
    batch statistics would couple the samples)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.no_grad():
        mu, _ = model.encode(inputs, c)
    latent_dim = mu.shape[1]
    dims = list(range(latent_dim)) if target is None else targets.shared_columns(target, "latent dimensions")
    if not dims:
        raise ValueError("decoder_action needs at least one dimension")
    bad = [d for d in dims if not 0 <= d < latent_dim]
    if bad:
        raise ValueError(f"dimensions {bad} are outside the model's latent_dim = {latent_dim}")
    basis = torch.zeros(len(dims), latent_dim, dtype=mu.dtype, device=mu.device)
    basis[torch.arange(len(dims), device=mu.device), torch.as_tensor(dims, device=mu.device)] = 1.0

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z, c)

    def column(e: torch.Tensor) -> torch.Tensor:  # e [latent_dim] -> d x_hat / d z . e [B, C, H, W]
        return torch.func.jvp(decode, (mu,), (e.expand_as(mu),))[1]

    with torch.no_grad():  # forward-mode AD runs under no_grad; no backward graph is kept
        tangents = torch.func.vmap(column, chunk_size=chunk_size)(basis)  # [K, B, C, H, W]
    maps = tangents.norm(dim=2).transpose(0, 1).contiguous()  # [B, K, H, W]
    return DecoderAction(maps, dims, mu)


def condition_action(
    model,
    inputs: torch.Tensor,
    target: targets.Columns | Sequence[int],
    *,
    c: torch.Tensor,
    chunk_size: int = 16,
) -> DecoderAction:
    """A CVAE's attribute action maps: |d x_hat / d c_j| per pixel (L2 over the image channels) at
    z = mu(inputs, c), for the condition entries j the target selects (`targets.select(entries)`):
    where turning attribute j up changes each face, by batched forward-mode JVPs as in
    `decoder_action`. `dims` holds the entries."""
    entries = targets.shared_columns(target, "condition entries")
    if not entries or not all(0 <= j < c.shape[1] for j in entries):
        raise ValueError(f"condition entries {entries} must lie in 0..{c.shape[1] - 1}")
    with torch.no_grad():
        mu, _ = model.encode(inputs, c)
    basis = torch.zeros(len(entries), c.shape[1], dtype=c.dtype, device=c.device)
    basis[torch.arange(len(entries), device=c.device), torch.as_tensor(entries, device=c.device)] = 1.0

    def column(e: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda cond: model.decode(mu, cond), (c,), (e.expand_as(c),))[1]

    with torch.no_grad():
        tangents = torch.func.vmap(column, chunk_size=chunk_size)(basis)
    return DecoderAction(tangents.norm(dim=2).transpose(0, 1).contiguous(), entries, mu)


# -- ranking scores ----------------------------------------------------------------------------------


def auroc(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N] the area under the ROC curve of each row of `scores` [N, P] ranking the pixels marked in
    `truth` [N, P] (bool) above the others, from ranks (Mann-Whitney U / (n_pos n_neg); tied
    scores get their mean rank, so a tie counts 1/2). 1: every positive above every negative, 0.5:
    chance (or a constant row), 0: inverted. NaN where a row has no positives or no negatives."""
    if scores.shape != truth.shape or scores.dim() != 2:
        raise ValueError(
            f"auroc takes scores and truth of one shape [N, P], got {tuple(scores.shape)} and {tuple(truth.shape)}"
        )
    truth = truth.bool()
    ranks = _ranks(scores.detach().double()) + 1  # 1-based, ties averaged; double: sums stay exact
    pos = truth.sum(1).double()
    neg = truth.shape[1] - pos
    u = (ranks * truth).sum(1) - pos * (pos + 1) / 2
    valid = (pos > 0) & (neg > 0)
    out = torch.where(valid, u / (pos * neg).clamp_min(1), torch.full_like(u, float("nan")))
    return out.to(scores.dtype if scores.is_floating_point() else torch.float32)


def region_scores(maps: torch.Tensor, region: torch.Tensor) -> dict[str, torch.Tensor]:
    """How map [B, H, W] (any real values; larger = more relevant) sits on a region [B, H, W] bool:
    one [B] tensor each of

      pointing      the share of the map's maximal pixels that lie in the region (the pointing
                    game's hit: 1 or 0 unless the maximum is tied; a constant map scores the
                    region's area share);
      mass_inside   the share of the map's positive mass in the region (NaN for a map without
                    positive mass);
      density       mass_inside / the region's area share: 1 = spread evenly, > 1 = concentrated
                    on the region, at most 1 / area;
      auroc         the map ranking the region's pixels above the others (`auroc`; 0.5 chance);
      area          the region's share of the image.

    pointing, mass_inside and density are NaN where the region is empty, auroc also where it is
    the whole image."""
    if maps.shape != region.shape or maps.dim() != 3:
        raise ValueError(
            f"region_scores takes maps and regions of one shape [B, H, W], got {tuple(maps.shape)} "
            f"and {tuple(region.shape)}"
        )
    flat, inside = maps.detach().flatten(1).double(), region.flatten(1).bool()
    nan = torch.full((flat.shape[0],), float("nan"), dtype=torch.float64, device=flat.device)
    area = inside.double().mean(1)
    peak = flat == flat.amax(1, keepdim=True)
    pointing = (peak & inside).sum(1) / peak.sum(1)
    positive = flat.clamp_min(0)
    total = positive.sum(1)
    mass = torch.where(total > 0, (positive * inside).sum(1) / total.clamp_min(1e-300), nan)
    empty = area == 0
    density = torch.where(empty, nan, mass / area.clamp_min(1e-300))
    out = {
        "pointing": torch.where(empty, nan, pointing),
        "mass_inside": torch.where(empty, nan, mass),
        "density": density,
        "auroc": auroc(flat, inside),
        "area": area,
    }
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    return {k: v.to(dtype) for k, v in out.items()}


# -- encoder-side maps against the decoder's action ----------------------------------------------------


@dataclass
class Agreement:
    """Per dimension k (`dims[k]`), [K] each: `spearman` the rank correlation of the map with the
    action map of the same dimension, and `auroc` the map ranking the top `top` fraction of the
    action map's pixels, each per sample then averaged over samples (samples where it is
    undefined - an action map without a top set apart from the rest - are left out); `mismatched_*`
    the same against the action map of dimension (k + 1) % K (a map that only knows where faces
    are, not where its dimension acts, scores about as well there); NaN when K = 1.
    The uniform map scores AUROC 0.5 and Spearman 0 by definition (a constant map ranks nothing:
    its pixels tie), so those are the chance levels: `UNIFORM`."""

    spearman: torch.Tensor
    auroc: torch.Tensor
    mismatched_spearman: torch.Tensor
    mismatched_auroc: torch.Tensor
    dims: list[int]
    top: float

    UNIFORM: ClassVar[dict[str, float]] = {"spearman": 0.0, "auroc": 0.5}

    def rows(self) -> list[dict]:
        """One dict per dimension: dim, spearman, auroc, mismatched_spearman, mismatched_auroc,
        uniform_spearman (0), uniform_auroc (0.5)."""
        return [
            {
                "dim": int(d),
                "spearman": float(self.spearman[k]),
                "auroc": float(self.auroc[k]),
                "mismatched_spearman": float(self.mismatched_spearman[k]),
                "mismatched_auroc": float(self.mismatched_auroc[k]),
                "uniform_spearman": self.UNIFORM["spearman"],
                "uniform_auroc": self.UNIFORM["auroc"],
            }
            for k, d in enumerate(self.dims)
        ]

    def summary(self) -> dict:
        """Means over the dimensions (NaN ones left out), the uniform baseline, the top fraction and
        the number of dimensions."""
        out = {
            key: float(getattr(self, key).nanmean())
            for key in ("spearman", "auroc", "mismatched_spearman", "mismatched_auroc")
        }
        return {
            **out,
            "uniform_spearman": self.UNIFORM["spearman"],
            "uniform_auroc": self.UNIFORM["auroc"],
            "top": self.top,
            "dimensions": len(self.dims),
        }


def top_fraction(action: torch.Tensor, top: float) -> torch.Tensor:
    """[N, P] bool: the ceil(top * P) largest pixels of each row of `action` [N, P], ties at the cut
    included (a constant row is all True: it has no top set)."""
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    n = max(1, math.ceil(top * action.shape[1] - 1e-9))  # - 1e-9: 0.3 * 10 is 3.0000000000000004
    cut = action.topk(n, dim=1).values[:, -1:]
    return action >= cut


def _pair_scores(maps: torch.Tensor, action: torch.Tensor, top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """maps, action [B, H, W] -> (spearman [B], auroc [B])."""
    flat_action = action.detach().flatten(1).double()
    return spearman(maps.detach().double(), action.detach().double()), auroc(
        maps.detach().flatten(1).double(), top_fraction(flat_action, top)
    )


def agreement(
    maps: torch.Tensor,
    action: torch.Tensor,
    top: float = 0.1,
    *,
    dims: Sequence[int] | None = None,
) -> Agreement:
    """Encoder-side maps [B, K, H, W] (e.g. Grad-CAM of mu_k) against where each dimension acts,
    action [B, K, H, W] (`decoder_action(...).maps`), dimension by dimension; `dims` names the K
    columns in the rows (default 0..K-1). See `Agreement`."""
    if maps.shape != action.shape or maps.dim() != 4:
        raise ValueError(
            f"agreement takes maps and action maps of one shape [B, K, H, W], got "
            f"{tuple(maps.shape)} and {tuple(action.shape)}"
        )
    k_count = maps.shape[1]
    dims = list(range(k_count)) if dims is None else [int(d) for d in dims]
    if len(dims) != k_count:
        raise ValueError(f"{len(dims)} dims name {k_count} map columns")
    nan = torch.full((k_count,), float("nan"), dtype=torch.float64)
    rho, area, rho_x, area_x = nan.clone(), nan.clone(), nan.clone(), nan.clone()
    for k in range(k_count):
        s, a = _pair_scores(maps[:, k], action[:, k], top)
        rho[k], area[k] = s.mean().cpu(), a.nanmean().cpu()
        if k_count > 1:
            s, a = _pair_scores(maps[:, k], action[:, (k + 1) % k_count], top)
            rho_x[k], area_x[k] = s.mean().cpu(), a.nanmean().cpu()
    return Agreement(rho, area, rho_x, area_x, dims, float(top))


# -- counterfactual pairs -------------------------------------------------------------------------------


@dataclass
class Encoding:
    """How the encoder encodes an attribute, from pairs (x_off, x_on) that differ only in it; per
    latent dimension, [latent_dim] each:

      shift      mean over pairs of |mu_on - mu_off| / sigma, sigma = exp(0.5 logvar) averaged over
                 the pair's two posteriors (how many posterior widths the attribute moves mu_i);
      direction  mean over pairs of mu_on - mu_off (the attribute's direction in latent space);
      sigma      the mean posterior sigma over both sides of all pairs;
    `norm` ||direction / sigma||: the direction's length in sigma units; `n` the number of pairs."""

    shift: torch.Tensor
    direction: torch.Tensor
    sigma: torch.Tensor
    norm: float
    n: int

    def top_dims(self, k: int | None = None) -> list[int]:
        """The k dimensions the attribute moves most (by `shift`), most first; all when None."""
        order = torch.argsort(self.shift.detach().float().cpu(), descending=True, stable=True).tolist()
        return order[:k] if k is not None else order


@torch.no_grad()
def encoding(model, x_off: torch.Tensor, x_on: torch.Tensor, c: torch.Tensor | None = None) -> Encoding:
    """Encode counterfactual pairs x_off, x_on [N, C, H, W] (the same N faces, attribute off and on,
    rendered by the caller) under the same condition c; see `Encoding`."""
    if x_off.shape != x_on.shape:
        raise ValueError(f"pairs must line up: {tuple(x_off.shape)} vs {tuple(x_on.shape)}")
    mu_off, logvar_off = model.encode(x_off, c)
    mu_on, logvar_on = model.encode(x_on, c)
    sigma = 0.5 * ((0.5 * logvar_off).exp() + (0.5 * logvar_on).exp())  # [N, L]
    delta = mu_on - mu_off
    shift = (delta.abs() / sigma).mean(0)
    direction = delta.mean(0)
    mean_sigma = sigma.mean(0)
    return Encoding(shift, direction, mean_sigma, float((direction / mean_sigma).norm()), len(x_off))


def counterfactual_localisation(maps: torch.Tensor, region: torch.Tensor) -> dict[str, float]:
    """Maps [B, H, W] (a method's map of, e.g., the attribute direction or its top dimension on the
    faces) against the pixels the attribute changes, region [B, H, W] bool: the means of
    `region_scores` over the faces whose region is not empty (NaN entries left out), and `n` the
    number of those faces."""
    scores = region_scores(maps, region)
    keep = region.flatten(1).any(1)
    out = {k: float(v[keep].double().nanmean()) if keep.any() else float("nan") for k, v in scores.items()}
    return {**out, "n": int(keep.sum())}


# -- the whole evaluation: methods x targets against the ground truth ----------------------------------


def _abs_maps(result: Explanation) -> torch.Tensor:
    """|maps| [B, K, H, W]: where a map looks, whatever the sign of its evidence."""
    return result.maps.abs()


def latent_localisation(
    model,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    methods: dict[str, tuple[str, dict]],
    *,
    top_dims: int = 3,
    c: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Counterfactual localisation of latent explanations. `pairs`: attribute -> (x_off, x_on,
    region) rendered by the caller; `methods`: label -> (registered method name, options, e.g.
    {"layer": ...}); `c`: attribute -> the CVAE condition of the "on" faces (None for a VAE).

    Per attribute, the encoding (`encoding`) says which `top_dims` dimensions move most and the
    attribute's direction; each method then explains, on the faces with the attribute, (a) each
    of those dimensions (scores averaged over them), (b) the direction (`targets.direction`), and
    (c) as a baseline `top_dims` dimensions drawn at random among the others; the |maps| are scored
    against the changed pixels (`counterfactual_localisation`). One row per attribute, method and
    target, with the encoding strength (`shift_top`: the top dimension's shift in sigma units,
    `direction_norm`) beside the scores; plus one 'uniform' row per attribute (pointing = the
    region's area share, AUROC 0.5, density 1)."""
    rows = []
    g = torch.Generator().manual_seed(seed)
    for attribute, (x_off, x_on, region) in pairs.items():
        cond = None if c is None else c[attribute]
        enc = encoding(model, x_off, x_on, cond)
        dims = enc.top_dims(top_dims)
        rest = [d for d in range(len(enc.shift)) if d not in dims]
        random_dims = [rest[i] for i in torch.randperm(len(rest), generator=g)[:top_dims].tolist()]
        base = {
            "attribute": attribute,
            "shift_top": float(enc.shift[dims[0]]),
            "direction_norm": enc.norm,
            "top_dims": dims,
        }
        forward = targets.latent_mean(model, cond)
        uniform = counterfactual_localisation(torch.ones(region.shape, dtype=x_on.dtype), region)
        rows.append({**base, "method": "uniform", "target": "-", **uniform})
        for label, (name, options) in methods.items():
            fn = get_method(name)
            for target_name, target in (
                ("dims", targets.select(dims)),
                ("direction", targets.direction(enc.direction)),
                ("random dims", targets.select(random_dims)),
            ):
                maps = _abs_maps(fn(model, x_on, target, forward=forward, **options))
                per_column = [counterfactual_localisation(maps[:, k], region) for k in range(maps.shape[1])]
                scores = {k: sum(s[k] for s in per_column) / len(per_column) for k in per_column[0]}
                rows.append({**base, "method": label, "target": target_name, **scores})
    return rows


def latent_agreement(
    model,
    inputs: torch.Tensor,
    dims: Sequence[int],
    methods: dict[str, tuple[str, dict]],
    *,
    c: torch.Tensor | None = None,
    top: float = 0.1,
) -> list[dict]:
    """Encoder-side maps against decoder action maps (`agreement`) for latent dimensions `dims`
    on `inputs`: one row per method label with the mean Spearman and AUROC over the dimensions,
    and the mismatched-pair baseline beside them (uniform maps: Spearman 0, AUROC 0.5)."""
    action = decoder_action(model, inputs, targets.select(list(dims)), c=c).maps
    rows = []
    for label, (name, options) in methods.items():
        result = get_method(name)(
            model, inputs, targets.select(list(dims)), forward=targets.latent_mean(model, c), **options
        )
        rows.append({"method": label, **agreement(_abs_maps(result), action, top, dims=dims).summary()})
    return rows
