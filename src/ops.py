"""Small tensor operations shared by the models and the explanations (below both `src/models/`
and `src/xai/`, importing neither): Gaussian blur, map scaling, seeded randomness and the KL of
a diagonal Gaussian to the standard normal prior, the total-correlation estimate and the
attention-overlap term of the latent losses."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], reflect-padded. `sigma`: one value, or one per image
    [B] (0 leaves that image as it is); kernel radius `radius`, default 3 x the largest sigma
    (cut to what the image size allows, then renormalised)."""
    b, c, h, w = x.shape
    kernel_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 input: a float64 kernel
    sig = torch.as_tensor(sigma, dtype=kernel_dtype).flatten().cpu()
    if float(sig.max()) <= 0:
        return x
    r = radius if radius is not None else int(3 * float(sig.max()) + 0.5)
    r = max(1, min(r, h - 1, w - 1))
    grid = torch.arange(-r, r + 1, dtype=kernel_dtype)
    k = torch.exp(-0.5 * (grid[None] / sig.clamp_min(1e-6)[:, None]) ** 2)  # [1 or B, K]; sigma 0 -> a delta
    k = (k / k.sum(1, keepdim=True)).expand(b, -1).repeat_interleave(c, 0).to(x.device, x.dtype)  # [B * C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def scale_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Divide each [H, W] map (the last two dims) by its maximum; maps that are all zero stay zero."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def min_max_scale(t: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """`t` scaled to [0, 1] over `dims` (each slice on its own); constant slices become 0."""
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    return torch.where(hi > lo, (t - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(t))


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the same draws on any device (move them afterwards)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def uniform_noise(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) noise of `like`'s shape, dtype and device, drawn on the CPU from `seed`."""
    return torch.rand(like.shape, generator=generator(seed)).to(like.device, like.dtype)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block under the global RNG seeded with `seed` (for library code that draws from
    it, such as Captum's NoiseTunnel); the RNG state outside is left as it was."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample and dimension, closed form: [B, D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[D] the KL of each latent dimension averaged over the batch: ~0 for unused dimensions."""
    return kl_standard_normal(mu, logvar).mean(0)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def total_correlation(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int, reduce: bool = True
) -> torch.Tensor:
    """Minibatch-stratified-sampling estimate (Chen et al. 2018, beta-TCVAE, appendix C.2) of the
    total correlation KL(q(z) || prod_d q(z_d)) of the aggregate posterior q(z) = (1/N) sum_n
    q(z | x_n), from samples z [B, D] of q(z | x_b) = N(mu_b, exp(logvar_b)), the batch drawn from
    `dataset_size` = N samples:

        log q(z_i) ~ logsumexp_j [log w_ij + log q(z_i | x_j)],  w_ii = 1/N (the sample's own
        point), w_i,i+1 = (N - M) / (N M) (cyclically; it stands for the N - M points outside the
        batch), the others 1/M, M = B - 1: each row sums to one;
        log q(z_id) likewise per dimension;  TC ~ mean_i [log q(z_i) - sum_d log q(z_id)].

    The FactorVAE paper (Kim & Mnih 2018) penalises the same quantity, estimated by a discriminator;
    this estimator needs no second network. With N = B (the batch is the whole data set) the weights
    are a uniform 1/B: the exact mixture's log density at each sample. Differentiable in z, mu and
    logvar. reduce=False: the [B] terms."""
    b = z.shape[0]
    if b < 2:
        raise ValueError(f"the total-correlation estimate needs at least 2 samples per batch, got {b}")
    n, m = max(int(dataset_size), b), b - 1
    if n == b:  # the batch is the whole data set: q(z) is exactly the mixture of its B posteriors
        weights = torch.full((b, b), 1.0 / b, dtype=z.dtype, device=z.device)
    else:
        weights = torch.full((b, b), 1.0 / m, dtype=z.dtype, device=z.device)
        rows = torch.arange(b, device=z.device)
        weights[rows, rows] = 1.0 / n  # the sample's own data point
        weights[rows, (rows + 1) % b] = (n - m) / (n * m)  # one other point stands for the unseen N - M
    log_w = weights.log()
    pair = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [B (i), B (j), D]
    log_qz = torch.logsumexp(pair.sum(2) + log_w, dim=1)
    log_prod = torch.logsumexp(pair + log_w[:, :, None], dim=1).sum(1)
    terms = log_qz - log_prod
    return terms.mean() if reduce else terms


def attention_overlap(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Liu et al.'s attention-disentanglement term between non-negative maps a and b:
    2 * sum min(a, b) / sum (a + b) over `dims` (1: identical maps, 0: disjoint supports; 0 where
    both maps are all zero)."""
    total = (a + b).sum(dims)
    return torch.where(total > 0, 2 * torch.minimum(a, b).sum(dims) / total.clamp_min(1e-12), torch.zeros_like(total))
