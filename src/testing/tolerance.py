"""Float tolerances derived from the computation a test checks, not from what one machine produced.

Two float computations of the same quantity differ when they add their terms in another order:
another CPU's oneDNN/MKL kernels (vector width, blocking, direct vs im2col + GEMM), channels_last
vs contiguous, a batched vs a looped backward, Captum's reduction vs ours, compiled vs eager. For
a sum of n terms t_i in a precision with unit roundoff u = eps / 2, Higham & Mary ("A new approach
to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019) bound the error of
any summation order by

    |s_hat - s| <= lambda * sqrt(n) * u * sum_i |t_i|                      (to first order in u)

with probability at least 1 - 2 n exp(-lambda^2 / 2) (rounding errors independent, mean zero).
With lambda = 8 that is 1 - 3e-10 even for n = 10^4, on every CPU, whichever order its kernels
pick. (The deterministic worst case n * u * sum|t_i| is sqrt(n) times looser: for a 10^4-term
CNN chain it is 1e-3, no longer far below bf16's 4e-3 rounding.) Two computations differ by at
most the sum of their errors, lambda * sqrt(n) * eps * sum|t_i|. A chain of layers (a forward
and a backward pass through L conv / linear layers of n_l terms each) adds independent errors in
quadrature, which is the same bound with n = sum_l n_l: `chain_terms`.

sum|t_i| is not visible to a test. `assert_close_scaled` takes the scale of the terms to be
max|expected| over the whole tensor (near a map's peak its terms are of the map's size) unless
the test passes `scale`: where the compared value is a difference of larger quantities (an
occlusion map f(x) - f(x'), a loss against the sum of its parts), the size of those quantities.
The tolerance is absolute at that scale and no relative term is added: an element far below the
scale (a ReLU'd map's zeros, near-zero attributions, a normalised map's dark pixels) carries the
error of the terms that made it, not an error relative to itself, so it cannot be compared
relatively.

Genuine errors are orders of magnitude above these bounds: bf16 rounds every term by up to
2^-8 = 4e-3 relative, a wrong sign or a missing term changes elements by their own size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CONFIDENCE = 8.0  # lambda above


def eps(dtype: torch.dtype = torch.float32) -> float:
    return torch.finfo(dtype).eps


def relative_bound(terms: int, dtype: torch.dtype = torch.float32, k: float = CONFIDENCE) -> float:
    """k * eps(dtype) * sqrt(terms): how far two orderings of a `terms`-term float computation can
    differ, relative to the size of the terms (see the module docstring)."""
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    return k * eps(dtype) * math.sqrt(terms)


def chain_terms(*modules: nn.Module, backward: bool = True) -> int:
    """Accumulation length of a forward (and, with `backward`, a backward) pass through every
    Conv / Linear layer of `modules`: per layer, its fan-in (the terms of each output) plus its
    fan-out (the terms of each input gradient). Layers off the compared path only loosen it."""
    total = 0
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d):
                k = math.prod(m.kernel_size)
                total += m.in_channels // m.groups * k + (m.out_channels // m.groups * k if backward else 0)
            elif isinstance(m, nn.Linear):
                total += m.in_features + (m.out_features if backward else 0)
    return max(total, 1)


def assert_close_scaled(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    terms: int,
    scale: float | torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    k: float = CONFIDENCE,
    outliers: float = 0.0,
    msg: str = "",
) -> None:
    """|actual - expected| <= k * eps * sqrt(terms) * scale elementwise, scale = max|expected| over
    the whole tensor unless given (see the module docstring); `dtype` (default: expected's)
    sets eps.

    `outliers`: the fraction of elements that may exceed the bound. 0 except where a test says
    why: a piecewise-linear network (ReLU, max-pool) makes gradient maps discontinuous, and a
    pre-activation within rounding distance of 0 may take the other branch under another
    kernel, changing the map on that unit's receptive field by its whole contribution."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{msg} shapes {tuple(actual.shape)} != {tuple(expected.shape)}"
    dtype = dtype or (expected.dtype if expected.is_floating_point() else torch.float32)
    a, e = actual.detach().double(), expected.detach().double()
    s = float(e.abs().max()) if scale is None else float(torch.as_tensor(scale).abs().max())
    atol = relative_bound(terms, dtype, k) * s
    diff = (a - e).abs()
    over = ~(diff <= atol)  # NaN counts as over
    allowed = math.floor(outliers * diff.numel())
    if int(over.sum()) > allowed:
        worst = int(diff.nan_to_num(math.inf).argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)) if diff.dim() else ()
        raise AssertionError(
            f"{msg} {int(over.sum())} / {diff.numel()} elements differ by more than {atol:.3g} "
            f"= {k:g} * eps({dtype}) * sqrt({terms}) * scale {s:.3g} ({allowed} allowed); greatest "
            f"difference {float(diff.flatten()[worst]):.3g} ({float(diff.flatten()[worst]) / max(s, 1e-300):.3g} of "
            f"the scale) at {index}: {float(a.flatten()[worst]):.6g} vs {float(e.flatten()[worst]):.6g}"
        )


# Fast-path and plain renders of one checkpoint run the same fp32, uncompiled code (`eager`); the
# fast one with the channels_last weights that training left, so its convolutions take other
# kernels (oneDNN blocks NHWC and NCHW differently, and picks per CPU). Their maps differ by
# reordered float32 sums only: bounded by k * eps * sqrt(terms) * scale (above), per
# map key with the terms its error accumulates over. ReLU gates make gradient maps discontinuous:
# a pre-activation within rounding of 0 may switch under the other kernel and move the map on
# that unit's receptive field by the unit's whole contribution (seen: SmoothGrad, one 5x5 field of
# a second-layer unit of one noisy copy, 25 of 2,352 elements). So up to KINKS of a map's elements
# may exceed the bound; a real change moves most of them: bf16 rounds every term by up to 4e-3,
# past a ~1e-4 bound on every element above a few % of the peak; a perturbed weight likewise.
KINKS = 0.05


def map_budget(key: str, model: torch.nn.Module, options: dict, x: torch.Tensor) -> tuple[int, float | None]:
    """(terms, scale) for one saved map: a forward + backward through the model's layers, plus
    what the method stacks on top; scale None = the map's own max |value|."""
    chain = chain_terms(model)
    method, opts = key.rsplit("_top", 1)[0], options.get(key.rsplit("_top", 1)[0], {})
    if method == "smoothgrad":  # the mean of `samples` noisy gradients
        return chain + int(opts.get("samples", 25)), None
    if method == "integrated_gradients":  # a Riemann sum over `steps` gradients
        return chain + int(opts.get("steps", 50)), None
    if method == "mask_perturbation":  # Adam steps: each step's gradient error carries into the next
        return chain * int(opts.get("steps", 300)), None
    if method == "occlusion":  # f(x) - f(x occluded): terms of the size of the logits, not of the map
        with torch.no_grad():
            return chain, float(model(x).abs().max())
    return chain, None
