"""Semantic morphing through a VAE's latent space (the path-mask thesis).

Why does the classifier say class a rather than o? Move the image's code until the decoding is
classified o while its norm stays typical for o (the path-mask thesis' manifold-likelihood proxy), walk the
radial path between the two codes, see where along it the decision flips (2-class entropy), and
learn the mask of pixels whose change along the path flips it (path-mask attribution).
All functions work on batches; every sample follows (and stops on) its own criterion.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from src.xai.inference import agrees, folded

Fn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]  # progress(done, total) once per step; may raise to stop the loop


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
    """[K] the mean code norm of each class (the path-mask thesis' `norm_means`); NaN for an absent class."""
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
def starting_code(encode: Callable, decode: Fn, classify: Fn, x: torch.Tensor, samples: int = 100,
                  seed: int = 0, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
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
    progress: Progress | None = None,
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


def path_gradients(classify: Fn, images: torch.Tensor, cls: torch.Tensor, chunk: int = 1024,
                   progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logits [S, B, K], ||d softmax_cls / d x|| [S, B]) for each path image [S, B, C, H, W], one forward
    and backward pass per `chunk` images (the path-mask thesis takes the gradient of the original
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


def _mask_gains(classify: Fn, mask: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor, base: torch.Tensor,
                oo: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """[S', B] p_o(x_i (1 - mask) + x_{i+1} mask) - p_o(x_i) for path steps x_i [S', B, ...]; `oo`
    [S' * B, 1] the target classes and `base` [S', B] the p_o(x_i)."""
    s1, b = x_i.shape[:2]
    blend = x_i * (1 - mask[None]) + x_next * mask[None]
    return F.softmax(classify(blend.flatten(0, 1)), dim=1).gather(1, oo).view(s1, b) - base


PROPOSALS = ("uniform", "gain")
PRECISIONS = ("32", "bf16")  # of the semantic morph


def path_mask(classify: Fn, path: torch.Tensor, o: torch.Tensor, steps: int = 3000, lr: float = 1e-3,
              reg: float = 1.0, seed: int = 0, init: torch.Tensor | None = None, progress: Progress | None = None,
              blends: int | None = None, tol: float | None = None, patience: int = 200, proposal: str = "gain",
              refresh: int = 100) -> PathMask:  # fmt: skip
    """Path-mask attribution (the path-mask thesis, section 4.6) for a path [S, B, C, H, W] from the original to
    the morphed image.

    The mask blur3x3(sigmoid(m)), m ~ N(0, 1) seeded, is learnt (Adam) so that blending each path
    image x_i with its successor through the mask raises the probability of o: maximise
    sum_i p_o(x_i (1 - mask) + x_{i+1} mask) - p_o(x_i), with an L1 penalty on the mask rescaled
    per sample by the ratio of the two terms' running means (weight `reg`). Each sample's mask
    is its own: a batch gives what each sample gives alone from the same `init` [B, 1, H, W]
    (the mask parameters before the sigmoid; default: seeded N(0, 1) draws). `progress(done, steps)`
    after each step.

    The thesis' procedure (the defaults, `blends=None, tol=None`) evaluates all S - 1 blends at
    each of `steps` steps. Faster, the same objective estimated (the L1 weight's running ratio then
    averages |estimates| of the gain, a little above |gain| where the estimate is noisy):
      blends  K < S - 1: each step estimates the sum over the path from K blends, an unbiased
              estimate of the sum and of its gradient. `proposal="uniform"`: K blends drawn
              without replacement (seeded; one draw for the batch), scaled by (S - 1) / K
              (`path_gain_estimate`). `proposal="gain"`: every `refresh` steps the gains and
              their mask gradients are computed for every blend at the current mask (the anchor,
              one exact step); between refreshes each sample draws K blends with replacement from
              q_i = (1/2) / (S - 1) + (1/2) |gain_i| / sum_j |gain_j| (the anchor's gains: most
              draws land in the window where the class changes, every weight stays <= 2 (S - 1) / K)
              and corrects the anchor's sums by the drawn blends' change since the anchor,
              weighted 1 / (K q_i) (`anchored_gain_estimate`, SVRG's control variate) - unbiased
              for any q, and nearly exact while the mask stays close to the anchor;
      tol     a sample stops once its mask has moved less than `tol` (max over pixels) in the last
              `patience` steps; it is no longer evaluated and its mask is kept; `steps` records
              when each stopped.
    The final `gains` are always computed over the whole path."""
    s, b, c, h, w = path.shape
    if blends is not None and not 1 <= int(blends) <= s - 1:
        raise ValueError(f"blends must be in 1..{s - 1} (the path's blends), got {blends}")
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown path-mask proposal {proposal!r}; choose one of {PROPOSALS}")
    if int(refresh) < 1:
        raise ValueError(f"refresh must be >= 1 (steps between proposal updates), got {refresh}")
    if init is None:
        init = torch.randn((b, 1, h, w), generator=torch.Generator().manual_seed(seed))
    m = init.detach().clone().to(path.device, path.dtype).requires_grad_(True)
    opt = torch.optim.Adam([m], lr=lr)
    x_i, x_next = path[:-1].detach(), path[1:].detach()
    oo = o.repeat(s - 1).view(-1, 1)
    with torch.no_grad():
        base = F.softmax(classify(x_i.flatten(0, 1)), dim=1).gather(1, oo).view(s - 1, b)
    sum_attr = torch.zeros(b, device=path.device, dtype=path.dtype)
    sum_l1 = torch.zeros_like(sum_attr)
    losses = []
    active = torch.ones(b, dtype=torch.bool, device=path.device)
    taken = torch.full((b,), int(steps), dtype=torch.long, device=path.device)
    picker = torch.Generator().manual_seed(seed + 1)
    if proposal == "gain" and blends is not None:  # every blend's gain and mask gradient at the last refresh
        q = torch.full((s - 1, b), 1.0 / (s - 1), device=path.device, dtype=path.dtype)
        anchor_gain = torch.zeros(s - 1, b, device=path.device, dtype=path.dtype)
        anchor_grad = torch.zeros(s - 1, b, 1, h, w, device=path.device, dtype=path.dtype)
    history: list[torch.Tensor] = []  # masks of the last `patience` steps (only with tol)
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(int(steps)):
            # how many samples still learn: the step's one host sync (the rest are masks on the device)
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
            everyone = len(rows) == b  # no copies while every sample is still learning
            mask = _blur3(torch.sigmoid(m if everyone else m[rows]))
            xs, xn, bs, os_ = (x_i, x_next, base, o) if everyone else (x_i[:, rows], x_next[:, rows], base[:, rows],
                                                                        o[rows])  # fmt: skip
            if blends is None:
                gain = _mask_gains(classify, mask, xs, xn, bs, oo if everyone else os_.repeat(s - 1).view(-1, 1)).sum(0)
            elif proposal == "uniform":
                gain = path_gain_estimate(classify, mask, xs, xn, bs, os_, int(blends), picker)
            else:
                if i % int(refresh) == 0:
                    a_gain, a_grad = blend_gains_and_grads(classify, mask.detach(), xs, xn, bs, os_)
                    anchor_gain[:, rows], anchor_grad[:, rows] = a_gain, a_grad
                    q[:, rows] = gain_proposal(a_gain)
                gain = anchored_gain_estimate(classify, mask, xs, xn, bs, os_, q[:, rows], anchor_gain[:, rows],
                                              anchor_grad[:, rows], int(blends), picker)  # fmt: skip
            l1 = mask.flatten(1).abs().mean(1)
            sum_attr[rows] += gain.detach().abs()
            sum_l1[rows] += l1.detach()
            ratio = sum_attr[rows] / sum_l1[rows].clamp_min(1e-12)
            loss = -gain + reg * ratio * l1
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
                progress(i + 1, int(steps))
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
        gains = _mask_gains(classify, mask, x_i, x_next, base, oo)
    loss = torch.stack(losses) if losses else torch.zeros(0, b, device=path.device)
    return PathMask(mask.detach(), (mask * (path[-1] - path[0])).detach(), gains, loss, taken)


def path_gain_estimate(classify: Fn, mask: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor, base: torch.Tensor,
                       o: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """[B] an unbiased estimate of sum_i gain_i over the S' blends of x_i [S', B, ...]: the sum over
    k of them drawn without replacement (sorted; with k = S' all of them, in order) times S' / k."""
    s1 = x_i.shape[0]
    pick = torch.randperm(s1, generator=generator)[:k].sort().values.to(x_i.device)
    oo = o.repeat(k).view(-1, 1)
    gains = _mask_gains(classify, mask, x_i[pick], x_next[pick], base[pick], oo)
    return gains.sum(0) * (s1 / k)


def gain_proposal(gains: torch.Tensor) -> torch.Tensor:
    """[S', B] the sampling probabilities of `path_mask(proposal="gain")` from the blends' gains
    [S', B]: half uniform, half proportional to |gain| (all uniform where every gain is 0)."""
    size = gains.abs()
    total = size.sum(0, keepdim=True)
    share = torch.where(total > 0, size / total.clamp_min(torch.finfo(gains.dtype).tiny), 1.0 / len(gains))
    return 0.5 / len(gains) + 0.5 * share


def blend_gains_and_grads(classify: Fn, mask: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor,
                          base: torch.Tensor, o: torch.Tensor,
                          rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(gains [S', B], their gradients w.r.t. the mask [S', B, 1, H, W]) of each blend of x_i
    [S', B, C, H, W] with x_next through `mask` [B, 1, H, W] (held fixed): one backward gives every
    blend's own input gradient (each gain reads only its blend), and d blend / d mask = x_next - x_i,
    summed over the channels. In chunks of about `rows` classifier inputs."""
    s1, b = x_i.shape[:2]
    gains, grads = [], []
    step = max(1, rows // max(b, 1))
    with torch.inference_mode(False), torch.enable_grad():
        for j in range(0, s1, step):
            xi, xn = x_i[j : j + step], x_next[j : j + step]
            blend = (xi * (1 - mask[None]) + xn * mask[None]).detach().requires_grad_(True)
            p = F.softmax(classify(blend.flatten(0, 1)), dim=1).gather(1, o.repeat(len(xi)).view(-1, 1)).view(-1, b)
            (g,) = torch.autograd.grad(p.sum(), blend)
            gains.append(p.detach() - base[j : j + step])
            grads.append((g * (xn - xi)).sum(2, keepdim=True))
    return torch.cat(gains), torch.cat(grads)


def anchored_gain_estimate(classify: Fn, mask: torch.Tensor, x_i: torch.Tensor, x_next: torch.Tensor,
                           base: torch.Tensor, o: torch.Tensor, q: torch.Tensor, anchor_gain: torch.Tensor,
                           anchor_grad: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """[B] sum_i gain_i over the S' blends of x_i [S', B, ...], estimated without bias in value and
    in gradient w.r.t. `mask`: the anchor's sums (the gains [S', B] and mask gradients
    [S', B, 1, H, W] of every blend at an earlier mask) plus, for k blends each sample draws with replacement from its
    probabilities q [S', B] (all > 0), (change of gain_i since the anchor) / (k q_i). Differentiable:
    its gradient w.r.t. `mask` is the anchor's gradient sum plus the drawn blends' weighted
    gradient changes (the gains at the current mask are first-order exact at it)."""
    s1, b = x_i.shape[:2]
    # inverse-CDF draws: uniform numbers from the (CPU) generator, the search on q's device (no host sync)
    u = torch.rand((b, k), generator=generator, dtype=torch.float64).to(q.device)
    cdf = q.T.detach().double().cumsum(1)  # [B, S']
    pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_max(s1 - 1).T  # [k, B]
    cols = torch.arange(b, device=x_i.device).expand(k, b)
    weight = 1.0 / (k * q[pick, cols])  # [k, B]
    now_gain, now_grad = blend_gains_and_grads(classify, mask.detach(), x_i[pick, cols], x_next[pick, cols],
                                               base[pick, cols], o)  # fmt: skip
    value = anchor_gain.sum(0) + ((now_gain - anchor_gain[pick, cols]) * weight).sum(0)
    grad = anchor_grad.sum(0) + ((now_grad - anchor_grad[pick, cols]) * weight[..., None, None, None]).sum(0)
    # the value, with `grad` as its gradient w.r.t. the mask (a linear surrogate around the current mask)
    return value + ((mask - mask.detach()) * grad).flatten(1).sum(1)


# -- the whole method ------------------------------------------------------------------------------


@dataclass
class MorphPath:
    """The method's output for B images: classes a (predicted) and o (target); the starting codes
    (and whether a draw kept the top-2 classes); the morph; the radial path's codes [S, B, D] and
    decodings [S, B, C, H, W] from the start to the morphed code; 2-class entropy, its window and
    the input-gradient norm of p_a along the path [S, B]; their Pearson correlation [B]; the
    classifier's logits along the path [S, B, K]; wall-clock seconds of the morph; the path mask
    of the first samples (None when not asked for)."""

    a: torch.Tensor
    o: torch.Tensor
    start: torch.Tensor
    kept: torch.Tensor
    morph: Morph
    codes: torch.Tensor
    images: torch.Tensor
    entropy: torch.Tensor
    window: dict[str, torch.Tensor]
    gradient: torch.Tensor
    pearson: torch.Tensor
    logits: torch.Tensor
    morph_seconds: float
    mask: PathMask | None

    @property
    def probabilities(self) -> torch.Tensor:
        """[S, B, K] the classifier's softmax along the path."""
        return torch.softmax(self.logits, dim=2)

    def path_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([S, B], [S, B]) the code norm along the radial path and along the straight line between
        the same two codes (which dips through the atypical low-norm middle)."""
        line = linear_path(self.start, self.morph.codes, len(self.codes))
        return self.codes.norm(dim=2), line.norm(dim=2)

    @property
    def final_class(self) -> torch.Tensor:
        """[B] the classifier's answer on the morphed decoding."""
        return self.logits[-1].argmax(1)

    @property
    def error(self) -> torch.Tensor:
        """[B] the path-mask thesis' morphing error: the morphed decoding is not classified o."""
        return self.final_class != self.o

    def summary(self) -> dict[str, float]:
        n = len(self.o)
        both = torch.isfinite(self.pearson)
        pooled = pearson(self.entropy.flatten()[:, None], self.gradient.flatten()[:, None])
        return {
            "samples": n,
            "error_rate": self.error.float().mean().item(),
            "converged_rate": self.morph.converged.float().mean().item(),
            "start_kept_top2_rate": self.kept.float().mean().item(),
            "mean_steps": self.morph.steps.float().mean().item(),
            "seconds_per_sample": self.morph_seconds / max(n, 1),
            "pearson_entropy_gradient_pooled": pooled.item(),
            "pearson_entropy_gradient_mean": self.pearson[both].mean().item() if both.any() else float("nan"),
        }


def morph_path(model: Fn, inputs: torch.Tensor, target=None, *, vae, norm_means: torch.Tensor,
               alpha_lk: float = 10.0, lr: float = 1e-3, max_steps: int = 5000, entropy_tol: float = 0.01,
               start_samples: int = 100, path_steps: int = 100, mask_count: int = 0, mask_steps: int = 3000,
               mask_lr: float = 1e-3, mask_reg: float = 1.0, mask_blends: int | None = None,
               mask_tol: float | None = None, mask_patience: int = 200, mask_proposal: str = "gain",
               mask_refresh: int = 100, precision: str = "32", fold: bool = True, seed: int = 0,
               progress: Callable[[str], Progress] | None = None) -> MorphPath:  # fmt: skip
    """Why does the classifier `model` say a rather than o? Semantic morphing of `inputs` through
    the latent space of `vae` (encode / decode) into the target class o, the radial path, its
    entropy/gradient analysis and (for the first `mask_count` samples) path-mask attribution,
    all batched. `target` names o per sample (`targets.classes(o)`); None = `targets.runner_up()`
    (the second most likely class); `targets.runner_up(labels)` also morphs misclassified
    samples into their true class. `norm_means` [K] the mean code norm of each class
    (`class_norm_means`). `progress(phase)` gives the progress callable of each long phase in
    turn: "starting codes", "semantic morph", "path gradients", "path mask". `mask_blends`, `mask_tol`,
    `mask_patience`, `mask_proposal` and `mask_refresh` are `path_mask`'s `blends`, `tol`, `patience`,
    `proposal` and `refresh` (blends None, tol None: the thesis' exact procedure). `precision`:
    "32", or "bf16" to decode and classify under bfloat16 autocast during the semantic morph.
    `fold`: morph with `inference.folded` shadows of the models (batch norm folded into the layer
    before it, channels-last convolutions; the models themselves are not touched): the same
    functions up to float rounding (checked on `inputs` first; where they differ, the models as
    they are, with a warning), faster (BENCHMARKS.md); False: the models as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown morphing precision {precision!r}; choose one of {PRECISIONS}")
    from src.xai import targets as tg

    if fold:
        model, vae = _folded_if_same(model, vae, inputs)
    encode, decode, classify, x = vae.encode, vae.decode, model, inputs

    def phase(name: str) -> Progress | None:
        return progress(name) if progress is not None else None

    with torch.no_grad():
        logits = classify(x)
    a = logits.topk(1, dim=1).indices[:, 0]
    o = tg.class_indices(tg.runner_up() if target is None else tg.as_target(target), logits)[:, 0]
    start, kept = starting_code(encode, decode, classify, x, samples=start_samples, seed=seed,
                                progress=phase("starting codes"))  # fmt: skip
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    morph = semantic_morph(decode, classify, start, a, o, norm_means, alpha_lk=alpha_lk, lr=lr,
                           max_steps=max_steps, entropy_tol=entropy_tol, progress=phase("semantic morph"),
                           autocast=torch.bfloat16 if precision == "bf16" else None)  # fmt: skip
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - t0
    codes = radial_path(start, morph.codes, path_steps)
    with torch.no_grad():
        images = torch.stack([decode(c) for c in codes])
    logits, gradient = path_gradients(classify, images, a, progress=phase("path gradients"))
    entropy = path_entropy(logits, a, o)
    out = MorphPath(
        a,
        o,
        start,
        kept,
        morph,
        codes,
        images,
        entropy,
        entropy_window(entropy),
        gradient,
        pearson(entropy, gradient),
        logits,
        seconds,
        None,
    )
    if mask_count > 0:
        out = with_path_mask(
            classify,
            out,
            mask_count,
            steps=mask_steps,
            lr=mask_lr,
            reg=mask_reg,
            seed=seed,
            progress=phase("path mask"),
            blends=mask_blends,
            tol=mask_tol,
            patience=mask_patience,
            proposal=mask_proposal,
            refresh=mask_refresh,
        )
    return out


def with_path_mask(model: Fn, out: MorphPath, count: int, *, fold: bool = False, **options) -> MorphPath:
    """`out` with the path mask (`path_mask(model, ..., **options)`) of its first `count` samples'
    paths added: the last phase of `morph_path`, on its own so that a caller can write the morph's
    panels before the (longer) mask is learnt, or morph in chunks and learn the masks once. `fold`:
    learn it on the `inference.folded` shadow of `model` where that computes what `model` computes
    on the paths' first images (`morph_path` passes its folded model and fold=False)."""
    k = min(int(count), len(out.o))
    path = out.images[:, :k]
    if fold:
        (fast,) = folded(model)
        model = fast if fast is model or agrees(fast, model, path[0]) else model
    return replace(out, mask=path_mask(model, path, out.o[:k], **options))


def concat(parts: Sequence[MorphPath]) -> MorphPath:
    """One MorphPath of the samples of `parts` (morphed chunk by chunk) in order; the morph's
    seconds add up. The parts carry no path mask (`with_path_mask` adds it to the whole)."""
    if any(part.mask is not None for part in parts):
        raise ValueError("concat joins morphs without path masks; add the mask to the result (with_path_mask)")
    if len(parts) == 1:
        return parts[0]

    def cat(name: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([getattr(part, name) for part in parts], dim=dim)

    morph = Morph(*(torch.cat([getattr(part.morph, f.name) for part in parts]) for f in fields(Morph)))
    window = {key: torch.cat([part.window[key] for part in parts]) for key in parts[0].window}
    return MorphPath(
        cat("a"),
        cat("o"),
        cat("start"),
        cat("kept"),
        morph,
        cat("codes", 1),
        cat("images", 1),
        cat("entropy", 1),
        window,
        cat("gradient", 1),
        cat("pearson"),
        cat("logits", 1),
        sum(part.morph_seconds for part in parts),
        None,
    )


def _folded_if_same(model: Fn, vae, x: torch.Tensor) -> tuple:
    """(model, vae) as `inference.folded` shadows when they compute what the originals compute on x
    and its codes (`inference.agrees`); else the originals, with a warning."""
    fast_model, fast_vae = folded(model, vae)
    same = fast_model is model or agrees(fast_model, model, x)
    if fast_vae is not vae and same:
        with torch.no_grad():
            mu = vae.encode(x)[0]
        same = agrees(fast_vae.encode, vae.encode, x) and agrees(fast_vae.decode, vae.decode, mu)
    if same:
        return fast_model, fast_vae
    warnings.warn("morph_path: the models with batch norm folded (fold=True) do not compute what the models "
                  "compute (a Sequential's layers read outside its forward?); morphing with the models as they are",
                  stacklevel=3)  # fmt: skip
    return model, vae


@torch.no_grad()
def norm_statistics(encode: Callable, batches, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(||mu|| [N], labels [N]) over `batches`, a sized iterable of (images, labels) pairs (the
    training set, chunk by chunk): the input of `class_norm_means`. `progress(done, total)`
    after each batch."""
    norms, labels = [], []
    total = len(batches)
    for images, y in batches:
        norms.append(code_norms(encode, images).cpu())
        labels.append(y.cpu())
        if progress is not None:
            progress(len(norms), total)
    return torch.cat(norms), torch.cat(labels)
