"""Semantic morphing [PathMaskThesis]: move an image's code until its decoding is classified o
while the code's norm stays typical for o, each sample stopping on its own criterion."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.xai.core import OnStep

Fn = Callable[[torch.Tensor], torch.Tensor]


def radial_path(c0: torch.Tensor, c1: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """[S, B, D] sqrt(1 - a) c0 + sqrt(a) c1 for a = 0 .. 1: between (near-)orthogonal codes of
    equal norm the norm stays constant, where the straight line passes through the low-norm,
    atypical middle of a Gaussian latent space."""
    a = torch.linspace(0, 1, steps, device=c0.device, dtype=c0.dtype).view(-1, 1, 1)
    return (1 - a).sqrt() * c0[None] + a.sqrt() * c1[None]


def linear_path(c0: torch.Tensor, c1: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """[S, B, D] (1 - a) c0 + a c1."""
    a = torch.linspace(0, 1, steps, device=c0.device, dtype=c0.dtype).view(-1, 1, 1)
    return (1 - a) * c0[None] + a * c1[None]


@torch.no_grad()
def code_norms(encode: Callable, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[N] ||mu(x)|| for each image."""
    return torch.cat([encode(images[i : i + chunk])[0].norm(dim=1) for i in range(0, len(images), chunk)])


def class_norm_means(norms: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K] the mean code norm of each class (the [PathMaskThesis] `norm_means`); NaN for an absent class."""
    sums = torch.zeros(num_classes, dtype=norms.dtype).index_add_(0, labels.long().cpu(), norms.cpu())
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).to(norms.dtype)
    return sums / counts


def two_class_entropy(logits: torch.Tensor, a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """[B] entropy (bits) of the softmax restricted to classes a and o, renormalised."""
    pair = torch.stack([logits.gather(1, a.view(-1, 1)), logits.gather(1, o.view(-1, 1))], 1).squeeze(-1)
    p = F.softmax(pair, dim=1)
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(1)


def morph_targets(logits: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, o): the predicted class and the class to morph into - the second most likely one, or the
    true class where the prediction is wrong (`targets.runner_up`)."""
    from src.xai.targets import runner_up

    return logits.topk(1, dim=1).indices[:, 0], runner_up(labels).resolve(logits).indices[:, 0]


@torch.no_grad()
def starting_code(
    encode: Callable,
    decode: Fn,
    classify: Fn,
    x: torch.Tensor,
    samples: int = 100,
    seed: int = 0,
    progress: OnStep | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [B, D], kept [B]): among `samples` draws from q(z|x), the one whose decoding is
    nearest to x (L2) among those that keep the classifier's top-2 classes (in order); where no
    draw keeps them, the nearest draw overall (kept = False). `progress(done, samples)` after
    each draw."""
    mu, logvar = encode(x)
    top2 = classify(x).topk(2, dim=1).indices
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((samples, *mu.shape), generator=g).to(mu.device, mu.dtype)
    z = mu[None] + eps * (0.5 * logvar).exp()[None]  # [S, B, D]
    best_ok = torch.full((len(x),), float("inf"), device=x.device, dtype=mu.dtype)
    best_any = best_ok.clone()
    code_ok, code_any = mu.clone(), mu.clone()
    for s in range(samples):
        dec = decode(z[s])
        dist = (dec - x).flatten(1).norm(dim=1)
        ok = (classify(dec).topk(2, dim=1).indices == top2).all(1)
        better = ok & (dist < best_ok)
        code_ok[better], best_ok[better] = z[s][better], dist[better]
        better = dist < best_any
        code_any[better], best_any[better] = z[s][better], dist[better]
        if progress is not None:
            progress(s + 1, samples)
    kept = torch.isfinite(best_ok)
    return torch.where(kept[:, None], code_ok, code_any), kept


@dataclass
class Morph:
    """codes [B, D] where each sample stopped; steps [B] the step it stopped at (max_steps when it
    did not converge); converged [B]; entropy [B] at the stop."""

    codes: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    entropy: torch.Tensor


def semantic_morph(
    decode: Fn,
    classify: Fn,
    start: torch.Tensor,
    a: torch.Tensor,
    o: torch.Tensor,
    norm_means: torch.Tensor,
    alpha_lk: float = 10.0,
    lr: float = 1e-3,
    max_steps: int = 5000,
    entropy_tol: float = 0.01,
    progress: OnStep | None = None,
    autocast: torch.dtype | None = None,
) -> Morph:
    """Adam on the codes to minimise -logit_o + alpha_lk * r * (||c|| - n_o)^2, r = (running mean of
    |logit term|) / (running mean of the norm term), per sample. A sample stops (its code frozen)
    as soon as its 2-class entropy between a and o is below `entropy_tol` and the argmax is o.
    Each sample's trajectory is its own (Adam is per-element, the models run in eval mode), so a
    batch gives what each sample gives alone; samples that have stopped are no longer decoded or
    classified. `progress(step, max_steps)` after each step. `autocast` (e.g. torch.bfloat16):
    decode and classify under autocast in that dtype: the logits, the stopping test and the losses
    read values rounded to it; the codes and Adam stay in the codes' dtype."""
    b = len(start)
    c = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=lr)
    n_o = norm_means.to(start.device, start.dtype)[o]
    sum_pred = torch.zeros(b, device=start.device, dtype=start.dtype)
    sum_lk = torch.zeros_like(sum_pred)
    active = torch.ones(b, dtype=torch.bool, device=start.device)
    steps = torch.full((b,), max_steps, dtype=torch.long, device=start.device)
    entropy = torch.full((b,), float("nan"), device=start.device, dtype=start.dtype)
    final = start.detach().clone()
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(max_steps + 1):
            # only the samples still moving are decoded and classified (stopped ones cost nothing);
            # reading how many there are is the step's one host sync, every other choice stays on
            # the device as masks over those rows
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
            code = c if len(rows) == b else c[rows]
            with torch.autocast(code.device.type, dtype=autocast) if autocast is not None else nullcontext():
                logits = classify(decode(code)).to(start.dtype)
            h = two_class_entropy(logits.detach(), a[rows], o[rows])
            done = (h < entropy_tol) & (logits.detach().argmax(1) == o[rows])
            if step == max_steps:
                done = torch.ones_like(done)
            final[rows] = torch.where(done[:, None], code.detach(), final[rows])
            entropy[rows] = torch.where(done, h, entropy[rows])
            if step < max_steps:
                steps[rows] = torch.where(done, step, steps[rows])
                active[rows] = ~done
            else:
                active[rows] &= (h >= entropy_tol) | (logits.detach().argmax(1) != o[rows])
                break
            keep = (~done).to(start.dtype)  # the rows that stopped now take no part in the loss
            pred = -logits.gather(1, o[rows].view(-1, 1)).squeeze(1)
            lk = (code.norm(dim=1) - n_o[rows]).pow(2)
            sum_pred[rows] += pred.detach().abs() * keep
            sum_lk[rows] += lk.detach() * keep
            ratio = sum_pred[rows] / sum_lk[rows].clamp_min(1e-12)
            loss = ((pred + alpha_lk * ratio * lk) * keep).sum()
            (c.grad,) = torch.autograd.grad(loss, c)
            opt.step()
            with torch.no_grad():  # stopped samples keep their codes (Adam's momentum would move them)
                c.copy_(torch.where(active[:, None], c, final))
            if progress is not None:
                progress(step + 1, max_steps)
    return Morph(final, steps, ~active, entropy)
