"""Along a morph path: the two-class entropy, its window around the flip, and path-mask
attribution [PathMaskThesis], the mask of pixels whose change along the path flips the decision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from src.xai.core import OnStep
from src.xai.morph.semantic import two_class_entropy

Fn = Callable[[torch.Tensor], torch.Tensor]


# -- along the path ------------------------------------------------------------------------------


def path_entropy(logits: torch.Tensor, a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """[S, B] 2-class entropy of each path image from its logits [S, B, K]."""
    s, b = logits.shape[:2]
    return two_class_entropy(logits.flatten(0, 1), a.repeat(s), o.repeat(s)).view(s, b)


def entropy_window(entropy: torch.Tensor, z: float = 1.96) -> dict[str, torch.Tensor]:
    """Per sample: the entropy-weighted mean step and std over the path [S, B], and the window
    mean +- z * std where the decision changes."""
    steps = torch.arange(entropy.shape[0], dtype=entropy.dtype, device=entropy.device).view(-1, 1)
    w = entropy / entropy.sum(0, keepdim=True).clamp_min(1e-12)
    mean = (w * steps).sum(0)
    std = (w * (steps - mean).pow(2)).sum(0).sqrt()
    return {"mean": mean, "std": std, "low": mean - z * std, "high": mean + z * std}


def path_gradients(
    classify: Fn, images: torch.Tensor, cls: torch.Tensor, chunk: int = 1024, progress: OnStep | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [S, B, K], ||d softmax_cls / d x|| [S, B]) for each path image [S, B, C, H, W], one forward
    and backward pass per `chunk` images ([PathMaskThesis] takes the gradient of the original
    label's probability). `progress(done, chunks)` after each chunk."""
    s, b = images.shape[:2]
    flat, labels = images.flatten(0, 1), cls.repeat(s).view(-1, 1)
    logits, norms = [], []
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(0, len(flat), chunk):
            x = flat[i : i + chunk].detach().clone().requires_grad_(True)
            out = classify(x)
            p = F.softmax(out, dim=1).gather(1, labels[i : i + chunk]).sum()
            (g,) = torch.autograd.grad(p, x)
            logits.append(out.detach())
            norms.append(g.flatten(1).norm(dim=1))
            if progress is not None:
                progress(len(norms), -(-len(flat) // chunk))
    return torch.cat(logits).view(s, b, -1), torch.cat(norms).view(s, b)


def pearson(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B] Pearson correlation of u[:, b] and v[:, b] (along dim 0)."""
    u, v = u - u.mean(0), v - v.mean(0)
    return (u * v).sum(0) / (u.pow(2).sum(0) * v.pow(2).sum(0)).sqrt().clamp_min(1e-12)


# -- path-mask attribution ------------------------------------------------------------------------


def _blur3(m: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    k = torch.exp(-0.5 * (torch.arange(-1, 2, dtype=m.dtype, device=m.device) / sigma) ** 2)
    k2 = (k[:, None] * k[None, :]) / (k.sum() ** 2)
    return F.conv2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), k2.view(1, 1, 3, 3))


@dataclass
class PathMask:
    """mask [B, 1, H, W] in [0, 1]; signed [B, C, H, W] = mask * (morphed - original): positive
    (red) where the pixel brightens on the way to o, negative (blue) where it darkens; gains
    [S - 1, B]: the final mask's gain in p_o at each path step (all blends, exactly); loss [T, B]
    per optimisation step (0 after a sample has stopped); steps [B] the steps each sample took."""

    mask: torch.Tensor
    signed: torch.Tensor
    gains: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor | None = None


def _mask_gains(
    classify: Fn, mask: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor, base: torch.Tensor, o_flat: torch.Tensor
) -> torch.Tensor:
    """[S', B] p_o(x_i (1 - mask) + x_{i+1} mask) - p_o(x_i) for path steps x_i [S', B, ...]; `o_flat`
    [S' * B, 1] the target classes and `base` [S', B] the p_o(x_i)."""
    n_blends, b = x_i.shape[:2]
    blend = x_i * (1 - mask[None]) + x_next * mask[None]
    return F.softmax(classify(blend.flatten(0, 1)), dim=1).gather(1, o_flat).view(n_blends, b) - base


PROPOSALS = ("uniform", "gain")


@dataclass(frozen=True)
class PathMaskConfig:
    """How `path_mask` learns a mask. The defaults are [PathMaskThesis]'s procedure: every blend
    of the path at each of `steps` Adam steps (learning rate `lr`, L1 weight `reg`).

    Faster, the same objective estimated (the L1 weight's running ratio then averages |estimates|
    of the gain, a little above |gain| where the estimate is noisy):
      num_blends  K < S - 1: each step estimates the sum over the path from K blends, without bias
                  in value and gradient (`gain_estimator`): `proposal="uniform"` draws them
                  uniformly, `proposal="gain"` by the gains at an exact anchor step every
                  `refresh` steps (`AnchoredBlends`);
      tol         a sample stops once its mask has moved less than `tol` (max over pixels) in the
                  last `patience` steps; it is no longer evaluated and its mask is kept."""

    steps: int = 3000
    lr: float = 1e-3
    reg: float = 1.0
    num_blends: int | None = None
    proposal: str = "gain"
    refresh: int = 100
    tol: float | None = None
    patience: int = 200

    def __post_init__(self) -> None:
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown path-mask proposal {self.proposal!r}; choose one of {PROPOSALS}")
        if int(self.refresh) < 1:
            raise ValueError(f"refresh must be >= 1 (steps between proposal updates), got {self.refresh}")
        if self.num_blends is not None and int(self.num_blends) < 1:
            raise ValueError(f"num_blends must be >= 1 (or None: every blend), got {self.num_blends}")


@dataclass
class Blends:
    """The blends of the samples still learning: each path image x_i [S', B', C, H, W], its
    successor x_{i+1}, the base p_o(x_i) [S', B'] and the classes o [B']."""

    images: torch.Tensor
    successors: torch.Tensor
    base: torch.Tensor
    o: torch.Tensor

    def rows(self, rows: torch.Tensor) -> Blends:
        return Blends(self.images[:, rows], self.successors[:, rows], self.base[:, rows], self.o[rows])


class GainEstimator(Protocol):
    """[B'] the sum over the path of each learning sample's gain in p_o through `mask`
    [B', 1, H, W], differentiable in the mask, at optimisation step `step`; `rows` [B'] are the
    learning samples' positions in the batch (for an estimator that keeps per-sample state)."""

    def __call__(self, step: int, mask: torch.Tensor, blends: Blends, rows: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EveryBlend:
    """The exact sum: every blend at every step ([PathMaskThesis])."""

    classify: Fn

    def __call__(self, step: int, mask: torch.Tensor, blends: Blends, rows: torch.Tensor) -> torch.Tensor:
        o_flat = blends.o.repeat(blends.images.shape[0]).view(-1, 1)
        return _mask_gains(self.classify, mask, blends.images, blends.successors, blends.base, o_flat).sum(0)


@dataclass
class UniformBlends:
    """K blends drawn without replacement each step, scaled by S' / K (`path_gain_estimate`)."""

    classify: Fn
    k: int
    generator: torch.Generator

    def __call__(self, step: int, mask: torch.Tensor, blends: Blends, rows: torch.Tensor) -> torch.Tensor:
        return path_gain_estimate(self.classify, mask, blends, self.k, self.generator)


class AnchoredBlends:
    """Every `refresh` steps the gains and mask gradients of every blend at the current mask (the
    anchor, one exact step); between, each sample draws K blends with replacement from
    q_i = (1/2) / S' + (1/2) |gain_i| / sum_j |gain_j| (`gain_proposal`: most draws land where
    the class changes, every weight stays <= 2 S' / K) and corrects the anchor's sums by the
    drawn blends' change since the anchor, weighted 1 / (K q_i) (`anchored_gain_estimate`,
    SVRG's control variate): unbiased for any q, nearly exact while the mask stays near the anchor."""

    def __init__(self, classify: Fn, k: int, refresh: int, generator: torch.Generator, path: torch.Tensor) -> None:
        n_blends, b, _, h, w = path.shape
        n_blends -= 1
        self.classify, self.k, self.refresh, self.generator = classify, k, refresh, generator
        self.q = torch.full((n_blends, b), 1.0 / n_blends, device=path.device, dtype=path.dtype)
        self.gain = torch.zeros(n_blends, b, device=path.device, dtype=path.dtype)
        self.grad = torch.zeros(n_blends, b, 1, h, w, device=path.device, dtype=path.dtype)

    def __call__(self, step: int, mask: torch.Tensor, blends: Blends, rows: torch.Tensor) -> torch.Tensor:
        if step % self.refresh == 0:
            gain, grad = blend_gains_and_grads(self.classify, mask.detach(), blends)
            self.gain[:, rows], self.grad[:, rows] = gain, grad
            self.q[:, rows] = gain_proposal(gain)
        return anchored_gain_estimate(
            self.classify,
            mask,
            blends,
            self.q[:, rows],
            self.gain[:, rows],
            self.grad[:, rows],
            self.k,
            self.generator,
        )


def gain_estimator(config: PathMaskConfig, classify: Fn, path: torch.Tensor, seed: int) -> GainEstimator:
    """The estimator `config` asks for on `path` [S, B, C, H, W]; its draws are seeded `seed + 1`."""
    if config.num_blends is None:
        return EveryBlend(classify)
    if not 1 <= int(config.num_blends) <= path.shape[0] - 1:
        raise ValueError(f"num_blends must be in 1..{path.shape[0] - 1} (the path's blends), got {config.num_blends}")
    generator = torch.Generator().manual_seed(seed + 1)
    if config.proposal == "uniform":
        return UniformBlends(classify, int(config.num_blends), generator)
    return AnchoredBlends(classify, int(config.num_blends), int(config.refresh), generator, path)


def path_mask(
    classify: Fn,
    path: torch.Tensor,
    o: torch.Tensor,
    config: PathMaskConfig = PathMaskConfig(),
    *,
    seed: int = 0,
    init: torch.Tensor | None = None,
    progress: OnStep | None = None,
) -> PathMask:
    """Path-mask attribution ([PathMaskThesis], section 4.6) for a path [S, B, C, H, W] from the
    original to the morphed image, learnt as `config` says.

    The mask blur3x3(sigmoid(m)), m ~ N(0, 1) seeded, is learnt (Adam) so that blending each path
    image x_i with its successor through the mask raises the probability of o: maximise
    sum_i p_o(x_i (1 - mask) + x_{i+1} mask) - p_o(x_i), with an L1 penalty on the mask rescaled
    per sample by the ratio of the two terms' running means (weight `config.reg`). Each sample's
    mask is its own: a batch gives what each sample gives alone from the same `init`
    [B, 1, H, W] (the mask parameters before the sigmoid; default: seeded N(0, 1) draws).
    `progress(done, steps)` after each step. The final `gains` are always computed over the
    whole path; `steps` records when each sample stopped."""
    s, b, c, h, w = path.shape
    estimate = gain_estimator(config, classify, path, seed)
    steps, tol, patience = int(config.steps), config.tol, int(config.patience)
    if init is None:
        init = torch.randn((b, 1, h, w), generator=torch.Generator().manual_seed(seed))
    m = init.detach().clone().to(path.device, path.dtype).requires_grad_(True)
    opt = torch.optim.Adam([m], lr=config.lr)
    x_i, x_next = path[:-1].detach(), path[1:].detach()
    o_flat = o.repeat(s - 1).view(-1, 1)
    with torch.no_grad():
        base = F.softmax(classify(x_i.flatten(0, 1)), dim=1).gather(1, o_flat).view(s - 1, b)
    everything = Blends(x_i, x_next, base, o)
    sum_attr = torch.zeros(b, device=path.device, dtype=path.dtype)
    sum_l1 = torch.zeros_like(sum_attr)
    losses = []
    active = torch.ones(b, dtype=torch.bool, device=path.device)
    taken = torch.full((b,), steps, dtype=torch.long, device=path.device)
    history: list[torch.Tensor] = []  # masks of the last `patience` steps (only with tol)
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(steps):
            # how many samples still learn: the step's one host sync (the rest are masks on the device)
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
            everyone = len(rows) == b  # no copies while every sample is still learning
            mask = _blur3(torch.sigmoid(m if everyone else m[rows]))
            gain = estimate(i, mask, everything if everyone else everything.rows(rows), rows)
            l1 = mask.flatten(1).abs().mean(1)
            sum_attr[rows] += gain.detach().abs()
            sum_l1[rows] += l1.detach()
            ratio = sum_attr[rows] / sum_l1[rows].clamp_min(1e-12)
            loss = -gain + config.reg * ratio * l1
            step_loss = torch.zeros(b, device=path.device, dtype=path.dtype)
            step_loss[rows] = loss.detach()
            losses.append(step_loss)
            (m.grad,) = torch.autograd.grad(loss.sum(), m)
            if everyone:
                opt.step()
            else:  # stopped samples keep their masks (Adam's momentum would move them)
                frozen = m.detach().clone()
                opt.step()
                with torch.no_grad():
                    m.copy_(torch.where(active[:, None, None, None], m, frozen))
            if progress is not None:
                progress(i + 1, steps)
            if tol is not None:
                with torch.no_grad():
                    history.append(_blur3(torch.sigmoid(m)).detach())
                    if len(history) > patience:
                        oldest = history.pop(0)
                        moved = (history[-1] - oldest).abs().flatten(1).amax(1)
                        done = active & (moved < tol)
                        taken = torch.where(done, i + 1, taken)
                        active &= ~done
    with torch.no_grad():
        mask = _blur3(torch.sigmoid(m))
        gains = _mask_gains(classify, mask, x_i, x_next, base, o_flat)
    loss = torch.stack(losses) if losses else torch.zeros(0, b, device=path.device)
    return PathMask(mask.detach(), (mask * (path[-1] - path[0])).detach(), gains, loss, taken)


def path_gain_estimate(
    classify: Fn, mask: torch.Tensor, blends: Blends, k: int, generator: torch.Generator
) -> torch.Tensor:
    """[B] an unbiased estimate of sum_i gain_i over the S' `blends`: the sum over k of them drawn
    without replacement (sorted; with k = S' all of them, in order) times S' / k."""
    n_blends = blends.images.shape[0]
    pick = torch.randperm(n_blends, generator=generator)[:k].sort().values.to(blends.images.device)
    o_flat = blends.o.repeat(k).view(-1, 1)
    gains = _mask_gains(classify, mask, blends.images[pick], blends.successors[pick], blends.base[pick], o_flat)
    return gains.sum(0) * (n_blends / k)


def gain_proposal(gains: torch.Tensor) -> torch.Tensor:
    """[S', B] the sampling probabilities of `path_mask(proposal="gain")` from the blends' gains
    [S', B]: half uniform, half proportional to |gain| (all uniform where every gain is 0)."""
    size = gains.abs()
    total = size.sum(0, keepdim=True)
    share = torch.where(total > 0, size / total.clamp_min(torch.finfo(gains.dtype).tiny), 1.0 / len(gains))
    return 0.5 / len(gains) + 0.5 * share


def blend_gains_and_grads(
    classify: Fn, mask: torch.Tensor, blends: Blends, rows: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gains [S', B], their gradients w.r.t. the mask [S', B, 1, H, W]) of each blend of x_i
    [S', B, C, H, W] with x_next through `mask` [B, 1, H, W] (held fixed): one backward gives every
    blend's own input gradient (each gain reads only its blend), and d blend / d mask = x_next - x_i,
    summed over the channels. In chunks of about `rows` classifier inputs."""
    x_i, x_next, base, o = blends.images, blends.successors, blends.base, blends.o
    n_blends, b = x_i.shape[:2]
    gains, grads = [], []
    step = max(1, rows // max(b, 1))
    with torch.inference_mode(False), torch.enable_grad():
        for j in range(0, n_blends, step):
            now, after = x_i[j : j + step], x_next[j : j + step]
            blend = (now * (1 - mask[None]) + after * mask[None]).detach().requires_grad_(True)
            p = F.softmax(classify(blend.flatten(0, 1)), dim=1).gather(1, o.repeat(len(now)).view(-1, 1)).view(-1, b)
            (g,) = torch.autograd.grad(p.sum(), blend)
            gains.append(p.detach() - base[j : j + step])
            grads.append((g * (after - now)).sum(2, keepdim=True))
    return torch.cat(gains), torch.cat(grads)


def anchored_gain_estimate(
    classify: Fn,
    mask: torch.Tensor,
    blends: Blends,
    q: torch.Tensor,
    anchor_gain: torch.Tensor,
    anchor_grad: torch.Tensor,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """[B] sum_i gain_i over the S' `blends`, estimated without bias in value and in gradient
    w.r.t. `mask`: the anchor's sums (the gains [S', B] and mask gradients [S', B, 1, H, W] of
    every blend at an earlier mask) plus, for k blends each sample draws with replacement from its
    probabilities q [S', B] (all > 0), (change of gain_i since the anchor) / (k q_i). Differentiable:
    its gradient w.r.t. `mask` is the anchor's gradient sum plus the drawn blends' weighted
    gradient changes (the gains at the current mask are first-order exact at it)."""
    n_blends, b = blends.images.shape[:2]
    # inverse-CDF draws: uniform numbers from the (CPU) generator, the search on q's device (no host sync)
    u = torch.rand((b, k), generator=generator, dtype=torch.float64).to(q.device)
    cdf = q.T.detach().double().cumsum(1)  # [B, S']
    pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_max(n_blends - 1).T  # [k, B]
    cols = torch.arange(b, device=q.device).expand(k, b)
    weight = 1.0 / (k * q[pick, cols])  # [k, B]
    drawn = Blends(blends.images[pick, cols], blends.successors[pick, cols], blends.base[pick, cols], blends.o)
    now_gain, now_grad = blend_gains_and_grads(classify, mask.detach(), drawn)
    value = anchor_gain.sum(0) + ((now_gain - anchor_gain[pick, cols]) * weight).sum(0)
    grad = anchor_grad.sum(0) + ((now_grad - anchor_grad[pick, cols]) * weight[..., None, None, None]).sum(0)
    # the value, with `grad` as its gradient w.r.t. the mask (a linear surrogate around the current mask)
    return value + ((mask - mask.detach()) * grad).flatten(1).sum(1)
