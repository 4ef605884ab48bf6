"""How faithful is an explanation? Batched torch metrics in update() / compute() style.

- PerturbationCurve: deletion / insertion curves, most- or least-relevant first, with the area
  over the MoRF perturbation curve (AOPC, Samek et al. 2017) and the area under the curve.
- Localization: pointing game and attribution mass inside ground-truth masks.
- cascading_randomization: the model-parameter sanity check of Adebayo et al. 2018.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from src.xai.attribution import attribute, baseline_for, gaussian_blur, relevance_map, to_map

REMOVALS = ("constant", "blur", "noise")


def _as_map(attribution: torch.Tensor) -> torch.Tensor:
    """[B, H, W] relevance per pixel: [B, C, H, W] attributions are summed over channels (signed
    relevance, so a method's negative evidence is removed last)."""
    return attribution.sum(1) if attribution.dim() == 4 else attribution


def removal_image(x: torch.Tensor, removal: str = "constant", value: float = 0.0, sigma: float = 5.0,
                  seed: int = 0) -> torch.Tensor:  # fmt: skip
    """What a removed pixel becomes: a constant, the blurred image, or uniform noise (seeded)."""
    if removal == "constant":
        return torch.full_like(x, float(value))
    if removal == "blur":
        return gaussian_blur(x, sigma)
    if removal == "noise":
        return baseline_for(x, "noise", seed=seed)
    raise ValueError(f"unknown removal {removal!r}; choose one of {REMOVALS}")


@torch.no_grad()
def perturbation_scores(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    relevance: torch.Tensor,
    target: torch.Tensor,
    steps: int = 20,
    order: str = "morf",
    mode: str = "deletion",
    removal: str = "constant",
    value: float = 0.0,
    sigma: float = 5.0,
    seed: int = 0,
    score: str = "prob",
    chunk: int = 512,
) -> torch.Tensor:
    """[B, steps + 1] target scores as pixels are removed (deletion: from x towards the removal
    image) or inserted (insertion: from the removal image towards x), k / steps of the pixels at
    step k, in order of relevance (morf: most relevant first; lerf: least relevant first).
    score: 'prob' (softmax of the target) or 'logit'."""
    if order not in ("morf", "lerf") or mode not in ("deletion", "insertion") or score not in ("prob", "logit"):
        raise ValueError(f"order must be morf|lerf, mode deletion|insertion, score prob|logit; got "
                         f"{order!r}, {mode!r}, {score!r}")  # fmt: skip
    b, c, h, w = x.shape
    rel = _as_map(relevance).to(x.device).reshape(b, h * w).float()
    # ties (flat regions of Grad-CAM, occlusion, masks) are broken in a seeded random order, not raster order
    shuffle = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed)).to(x.device)
    order_idx = shuffle[torch.argsort(rel[:, shuffle], dim=1, descending=order == "morf", stable=True)]
    ranks = torch.empty_like(rel, dtype=torch.long)
    ranks.scatter_(1, order_idx, torch.arange(h * w, device=x.device).expand(b, -1))
    counts = torch.round(torch.linspace(0, h * w, steps + 1, device=x.device)).long()  # pixels changed per step
    changed = (ranks[None] < counts[:, None, None]).view(steps + 1, b, 1, h, w)  # [S, B, 1, H, W]
    reference = removal_image(x, removal, value, sigma, seed)
    start, end = (x, reference) if mode == "deletion" else (reference, x)
    images = torch.where(changed, end[None], start[None]).reshape((steps + 1) * b, c, h, w)
    t = target.view(1, b).expand(steps + 1, b).reshape(-1)
    outs = []
    for i in range(0, len(images), chunk):
        logits = model(images[i : i + chunk])
        vals = F.softmax(logits, 1) if score == "prob" else logits
        outs.append(vals.gather(1, t[i : i + chunk].view(-1, 1)).squeeze(1))
    return torch.cat(outs).view(steps + 1, b).T


class PerturbationCurve:
    """Accumulates perturbation curves over batches; compute() gives the mean curve, AOPC =
    mean_k (f_0 - f_k) over the L + 1 steps (Samek et al.; high for deletion-MoRF means the
    map found what the model uses) and the normalised area under the curve (low for deletion,
    high for insertion when the map is good)."""

    def __init__(self, steps: int = 20, order: str = "morf", mode: str = "deletion", removal: str = "constant",
                 value: float = 0.0, sigma: float = 5.0, seed: int = 0, score: str = "prob") -> None:  # fmt: skip
        self.options = dict(steps=steps, order=order, mode=mode, removal=removal, value=value, sigma=sigma, seed=seed,
                            score=score)  # fmt: skip
        self.reset()

    def reset(self) -> None:
        self._curves: list[torch.Tensor] = []

    def update(self, model, x: torch.Tensor, relevance: torch.Tensor, target: torch.Tensor) -> None:
        self._curves.append(perturbation_scores(model, x, relevance, target, **self.options).cpu())

    def compute(self) -> dict[str, torch.Tensor | float]:
        if not self._curves:
            raise RuntimeError("PerturbationCurve.compute() before any update()")
        curves = torch.cat(self._curves)  # [N, S]
        mean = curves.mean(0)
        aopc = (curves[:, :1] - curves).mean(1)  # per sample
        auc = torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)
        return {"curve": mean, "aopc": float(aopc.mean()), "aopc_std": float(aopc.std()) if len(aopc) > 1 else 0.0,
                "auc": float(auc.mean()), "n": len(curves)}  # fmt: skip


def faithfulness(model, x: torch.Tensor, relevance: torch.Tensor, target: torch.Tensor, steps: int = 20,
                 removal: str = "constant") -> dict[str, float]:  # fmt: skip
    """One batch's deletion (most relevant first) AOPC and AUC and insertion AUC."""
    deletion = PerturbationCurve(steps=steps, order="morf", mode="deletion", removal=removal)
    insertion = PerturbationCurve(steps=steps, order="morf", mode="insertion", removal=removal)
    deletion.update(model, x, relevance, target)
    insertion.update(model, x, relevance, target)
    d, i = deletion.compute(), insertion.compute()
    return {"aopc": d["aopc"], "aopc_std": d["aopc_std"], "deletion_auc": d["auc"], "insertion_auc": i["auc"]}


class Localization:
    """Pointing game (is the map's maximum inside the ground-truth mask?) and the share of the
    positive attribution mass inside the mask, over samples with a non-empty mask."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._hits: list[torch.Tensor] = []
        self._mass: list[torch.Tensor] = []

    def update(self, relevance: torch.Tensor, mask: torch.Tensor) -> None:
        rel = _as_map(relevance).float()
        mask = mask.reshape(rel.shape).bool()
        keep = mask.flatten(1).any(1)
        rel, mask = rel[keep], mask[keep]
        if not len(rel):
            return
        flat = rel.flatten(1)
        top = flat.argmax(1)
        self._hits.append(mask.flatten(1).gather(1, top.view(-1, 1)).squeeze(1).float().cpu())
        pos = flat.clamp_min(0)
        total = pos.sum(1)
        inside = (pos * mask.flatten(1)).sum(1)
        self._mass.append(torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total)).cpu())

    def compute(self) -> dict[str, float]:
        if not self._hits:
            raise RuntimeError("Localization.compute() before any update() with a non-empty mask")
        hits, mass = torch.cat(self._hits), torch.cat(self._mass)
        return {"pointing_game": float(hits.mean()), "mass_inside": float(mass.mean()), "n": len(hits)}


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dim (ties share their mean rank), for Spearman."""
    order = torch.argsort(v, dim=-1, stable=True)
    sorted_v = torch.gather(v, -1, order)
    ranks = torch.empty_like(v)
    n = v.shape[-1]
    base = torch.arange(n, dtype=v.dtype, device=v.device).expand_as(v)
    # mean rank over runs of equal values
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[..., 1:] = sorted_v[..., 1:] != sorted_v[..., :-1]
    run_id = new_run.cumsum(-1) - 1
    sums = torch.zeros_like(v).scatter_add_(-1, run_id, base)
    counts = torch.zeros_like(v).scatter_add_(-1, run_id, torch.ones_like(v))
    mean_rank = torch.gather(sums / counts.clamp_min(1), -1, run_id)
    ranks.scatter_(-1, order, mean_rank)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] Spearman rank correlation between flattened maps a[i] and b[i] (0 where one is constant)."""
    ra, rb = _ranks(a.flatten(1).float()), _ranks(b.flatten(1).float())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp_min(1e-12), torch.zeros_like(denom))


def _normalised(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m))


def map_similarity(a: torch.Tensor, b: torch.Tensor, absolute: bool = True) -> dict[str, float]:
    """Spearman rank correlation and SSIM of the min-max normalised maps ([B, H, W] each), averaged
    over the batch; of |a| and |b| by default, of the signed maps with absolute=False."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = (a.abs().float(), b.abs().float()) if absolute else (a.float(), b.float())
    kernel = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    s = ssim(_normalised(a).unsqueeze(1), _normalised(b).unsqueeze(1), data_range=1.0, kernel_size=kernel,
             gaussian_kernel=False, reduction="none")  # fmt: skip
    return {"spearman": float(spearman(a, b).mean()), "ssim": float(s.mean())}


def parametric_layers(model: nn.Module) -> list[str]:
    """Names of the leaf modules with parameters, input to output."""
    return [n for n, m in model.named_modules() if not list(m.children()) and any(True for _ in m.parameters(False))]


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    target,
    method: str,
    layers: list[str] | None = None,
    seed: int = 0,
    reduce: str | None = None,
    **options,
) -> list[dict]:
    """Adebayo et al. 2018: re-initialise the layers from the top (logits) down, cumulatively, and
    compare each step's attribution map with the trained model's. A faithful method's maps should
    decorrelate. Returns one row per step: {'layer' (the last one randomised), 'spearman', 'ssim'
    (of |maps|), 'spearman_signed', 'ssim_signed'}. Maps: `relevance_map` (by the method's kind)
    unless `reduce` names a `to_map` reduction.
    Works on a copy; `model` is left as it was. Layers are re-drawn by their own reset_parameters()
    under a seeded RNG (BatchNorm: running statistics kept, affine re-drawn)."""
    import copy

    layers = layers or list(reversed(parametric_layers(model)))

    def as_map(a: torch.Tensor) -> torch.Tensor:
        return relevance_map(method, a) if reduce is None else to_map(a, reduce)

    original = as_map(attribute(method, model, x, target, **options))
    net = copy.deepcopy(model).eval()
    rows = []
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in layers:
            module = net.get_submodule(name)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.uniform_(module.weight, 0.5, 1.5) if module.affine else None
                nn.init.normal_(module.bias, 0, 0.1) if module.affine else None
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                raise ValueError(f"cannot re-initialise layer {name!r} ({type(module).__name__})")
            randomised = as_map(attribute(method, net, x, target, **options))
            signed = map_similarity(original, randomised, absolute=False)
            rows.append({"layer": name, **map_similarity(original, randomised),
                         "spearman_signed": signed["spearman"], "ssim_signed": signed["ssim"]})  # fmt: skip
    return rows
