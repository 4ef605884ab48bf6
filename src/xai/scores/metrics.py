"""How faithful is an explanation? Batched torch metrics in update() / compute() style.

- deletion / insertion (`perturbation_curve`, accumulated over batches by PerturbationCurve):
  curves most- or least-relevant first, with the area over the MoRF perturbation curve (AOPC,
  [Samek2017]) and the area under the curve. Same call shape as the methods:
  `deletion(model, inputs, target, explanation=result)` -> Curve.
- cascading_randomization: the model-parameter sanity check of [Adebayo2018].
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.base.maps import min_max_scale
from src.base.rng import generator, seeded
from src.xai import targets as tg
from src.xai.core import ZERO, Attribution, Baseline, Explanation, get_method, to_map

ORDERS = ("morf", "lerf")
MODES = ("deletion", "insertion")
SCORES = ("prob", "logit")


def relevance_of(explanation: Explanation | torch.Tensor, k: int = 0) -> torch.Tensor:
    """[B, H, W] the relevance a metric ranks pixels by: an Explanation's map of target column k,
    a map [B, H, W] as it is, or an attribution [B, C, H, W] summed over channels (signed, so a
    method's negative evidence is removed last; `core.to_map(a, "sum")`)."""
    if isinstance(explanation, Explanation):
        return explanation.maps[:, k]
    return to_map(explanation, "sum")


@dataclass
class Curve:
    """Perturbation curves of B samples: `scores` [B, steps + 1] the target score at each step
    (step k changes k / steps of the pixels), `aopc` [B] mean_k (f_0 - f_k) ([Samek2017];
    high for deletion-MoRF means the map found what the model uses), `auc` [B] the normalised
    area under the curve (low for deletion, high for insertion when the map is good)."""

    scores: torch.Tensor
    aopc: torch.Tensor
    auc: torch.Tensor

    @classmethod
    def of(cls, scores: torch.Tensor) -> Curve:
        aopc = (scores[:, :1] - scores).mean(1)
        auc = torch.trapezoid(scores, dx=1.0 / (scores.shape[1] - 1), dim=1)
        return cls(scores, aopc, auc)

    def summary(self) -> dict[str, torch.Tensor | float | int]:
        """Mean curve, mean and std of the AOPC over samples, mean AUC, sample count."""
        n = len(self.aopc)
        return {
            "curve": self.scores.mean(0),
            "aopc": float(self.aopc.mean()),
            "aopc_std": float(self.aopc.std()) if n > 1 else 0.0,
            "auc": float(self.auc.mean()),
            "n": n,
        }


@torch.no_grad()
def perturbation_curve(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target,
    *,
    explanation: Explanation | torch.Tensor,
    steps: int = 20,
    order: str = "morf",
    mode: str = "deletion",
    baseline: Baseline | str | float | torch.Tensor = ZERO,
    score: str = "prob",
    seed: int = 0,
    chunk: int = 512,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Curve:
    """Target scores as pixels are removed (deletion: from x towards the baseline image) or
    inserted (insertion: from the baseline towards x), k / steps of the pixels at step k, in
    order of the explanation's relevance (morf: most relevant first; lerf: least relevant
    first); ties are broken in a seeded random order. score: the target read from the softmax
    of the output ('prob') or from the output itself ('logit'). The target's first column is
    scored against the explanation's first map; a noise baseline named by kind draws from `seed`."""
    if order not in ORDERS or mode not in MODES or score not in SCORES:
        raise ValueError(
            f"order must be morf|lerf, mode deletion|insertion, score prob|logit; got {order!r}, {mode!r}, {score!r}"
        )
    fn, target = forward or model, tg.as_target(target)
    x = inputs
    b, c, h, w = x.shape
    rel = relevance_of(explanation).to(x.device).reshape(b, h * w).float()
    shuffle = torch.randperm(h * w, generator=generator(seed)).to(x.device)
    order_idx = shuffle[torch.argsort(rel[:, shuffle], dim=1, descending=order == "morf", stable=True)]
    ranks = torch.empty_like(rel, dtype=torch.long)
    ranks.scatter_(1, order_idx, torch.arange(h * w, device=x.device).expand(b, -1))
    counts = torch.round(torch.linspace(0, h * w, steps + 1, device=x.device)).long()  # pixels changed per step
    changed = (ranks[None] < counts[:, None, None]).view(steps + 1, b, 1, h, w)  # [S, B, 1, H, W]
    reference = Baseline.parse(baseline, seed=seed)(x)
    start, end = (x, reference) if mode == "deletion" else (reference, x)
    images = torch.where(changed, end[None], start[None]).reshape((steps + 1) * b, c, h, w)
    outs = torch.cat([fn(images[i : i + chunk]) for i in range(0, len(images), chunk)])
    outs = outs.view(steps + 1, b, *outs.shape[1:])
    vals = torch.stack([target(F.softmax(o, 1) if score == "prob" else o)[:, 0] for o in outs])  # [S, B]
    return Curve.of(vals.T.contiguous())


def _curve(mode: str, doc: str) -> Callable[..., Curve]:
    """`perturbation_curve(..., mode=mode)`, with perturbation_curve's signature but `mode`."""

    def curve(model, inputs: torch.Tensor, target, **options) -> Curve:
        return perturbation_curve(model, inputs, target, mode=mode, **options)

    signature = inspect.signature(perturbation_curve)
    curve.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "mode"])
    curve.__name__ = curve.__qualname__ = mode
    curve.__doc__ = doc + " See `perturbation_curve`."
    return curve


deletion = _curve(
    "deletion",
    "The deletion curve: the explanation's most relevant pixels (order='morf') replaced by the baseline first.",
)
insertion = _curve(
    "insertion", "The insertion curve: from the baseline image, the most relevant pixels of x put back first."
)


class PerturbationCurve:
    """Accumulates perturbation curves (`perturbation_curve`) over batches; compute() gives the
    mean curve, the AOPC (mean and std over samples) and the mean normalised AUC (see `Curve`)."""

    def __init__(
        self,
        steps: int = 20,
        order: str = "morf",
        mode: str = "deletion",
        baseline: Baseline | str | float | torch.Tensor = ZERO,
        seed: int = 0,
        score: str = "prob",
    ) -> None:
        self.options = dict(
            steps=steps, order=order, mode=mode, score=score, seed=seed, baseline=Baseline.parse(baseline, seed=seed)
        )
        self.reset()

    def reset(self) -> None:
        self._curves: list[torch.Tensor] = []

    def update(self, model, x: torch.Tensor, explanation: Explanation | torch.Tensor, target) -> None:
        self._curves.append(perturbation_curve(model, x, target, explanation=explanation, **self.options).scores.cpu())

    def compute(self) -> dict[str, torch.Tensor | float]:
        if not self._curves:
            raise RuntimeError("PerturbationCurve.compute() before any update()")
        return Curve.of(torch.cat(self._curves)).summary()


def faithfulness(
    model,
    x: torch.Tensor,
    explanation: Explanation | torch.Tensor,
    target,
    steps: int = 20,
    baseline: Baseline | str | float | torch.Tensor = ZERO,
) -> dict[str, float]:
    """One batch's deletion (most relevant first) AOPC and AUC and insertion AUC."""
    base = Baseline.parse(baseline)
    d = deletion(model, x, target, explanation=explanation, steps=steps, baseline=base).summary()
    i = insertion(model, x, target, explanation=explanation, steps=steps, baseline=base).summary()
    return {"aopc": d["aopc"], "aopc_std": d["aopc_std"], "deletion_auc": d["auc"], "insertion_auc": i["auc"]}


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


def map_similarity(a: torch.Tensor, b: torch.Tensor, absolute: bool = True) -> dict[str, float]:
    """Spearman rank correlation and SSIM of the min-max normalised maps ([B, H, W] each), averaged
    over the batch; of |a| and |b| by default, of the signed maps with absolute=False."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = (a.abs().float(), b.abs().float()) if absolute else (a.float(), b.float())
    kernel = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    s = ssim(
        min_max_scale(a).unsqueeze(1),
        min_max_scale(b).unsqueeze(1),
        data_range=1.0,
        kernel_size=kernel,
        gaussian_kernel=False,
        reduction="none",
    )
    return {"spearman": float(spearman(a, b).mean()), "ssim": float(s.mean())}


def parametric_layers(model: nn.Module) -> list[str]:
    """Names of the leaf modules with parameters, input to output."""
    return [n for n, m in model.named_modules() if not list(m.children()) and any(True for _ in m.parameters(False))]


@dataclass
class Randomization:
    """Cascading randomisation: one entry per step (layers re-drawn from the top down,
    cumulatively): `layers` the last layer re-drawn at each step, and the similarity of each
    step's maps to the trained model's: Spearman rank correlation and SSIM of |maps|
    (`spearman`, `ssim`) and of the signed maps (`spearman_signed`, `ssim_signed`)."""

    layers: list[str]
    spearman: list[float]
    ssim: list[float]
    spearman_signed: list[float]
    ssim_signed: list[float]

    def rows(self) -> list[dict]:
        """One dict a step: layer, spearman, ssim, spearman_signed, ssim_signed."""
        return [
            {"layer": n, "spearman": a, "ssim": b, "spearman_signed": c, "ssim_signed": d}
            for n, a, b, c, d in zip(self.layers, self.spearman, self.ssim, self.spearman_signed, self.ssim_signed)
        ]


def cascading_randomization(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    method: str = "saliency",
    layers: list[str] | None = None,
    seed: int = 0,
    reduce: str | None = None,
    options: dict | None = None,
) -> Randomization:
    """[Adebayo2018]: re-initialise the layers from the top (logits) down, cumulatively, and
    compare each step's map from the registered `method` (run with `options`) with the trained
    model's. A faithful method's maps should decorrelate. Maps: the method's own (`maps`, reduced
    by its registered reduction) unless `reduce` names a `core.to_map` reduction.
    Works on a copy; `model` is left as it was. Layers are re-drawn by their own reset_parameters()
    under a seeded RNG (BatchNorm: running statistics kept, affine re-drawn)."""
    import copy

    fn, target, options = get_method(method), tg.as_target(target), dict(options or {})
    layers = layers or list(reversed(parametric_layers(model)))

    def as_map(m: nn.Module) -> torch.Tensor:
        result = fn(m, inputs, target, **options)
        if reduce is None or not isinstance(result, Attribution):
            return result.maps[:, 0]
        return to_map(result.attributions[:, 0], reduce)

    original = as_map(model)
    net = copy.deepcopy(model).eval()
    out = Randomization([], [], [], [], [])
    with seeded(seed, inputs.device):
        for name in layers:
            module = net.get_submodule(name)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.uniform_(module.weight, 0.5, 1.5) if module.affine else None
                nn.init.normal_(module.bias, 0, 0.1) if module.affine else None
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                raise ValueError(f"cannot re-initialise layer {name!r} ({type(module).__name__})")
            randomised = as_map(net)
            absolute, signed = map_similarity(original, randomised), map_similarity(original, randomised, False)
            out.layers.append(name)
            out.spearman.append(absolute["spearman"])
            out.ssim.append(absolute["ssim"])
            out.spearman_signed.append(signed["spearman"])
            out.ssim_signed.append(signed["ssim"])
    return out
