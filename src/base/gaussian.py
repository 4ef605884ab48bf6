"""Diagonal Gaussians in the latent space: the KL to the standard normal prior (whole and per
dimension), the log density, and the minibatch estimate of the total correlation of q(z)."""

from __future__ import annotations

import math

import torch


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
    """Minibatch-stratified-sampling estimate ([Chen2018], beta-TCVAE, appendix C.2) of the
    total correlation KL(q(z) || prod_d q(z_d)) of the aggregate posterior q(z) = (1/N) sum_n
    q(z | x_n), from samples z [B, D] of q(z | x_b) = N(mu_b, exp(logvar_b)), the batch drawn from
    `dataset_size` = N samples:

        log q(z_i) ~ logsumexp_j [log w_ij + log q(z_i | x_j)],  w_ii = 1/N (the sample's own
        point), w_i,i+1 = (N - M) / (N M) (cyclically; it stands for the N - M points outside the
        batch), the others 1/M, M = B - 1: each row sums to one;
        log q(z_id) likewise per dimension;  TC ~ mean_i [log q(z_i) - sum_d log q(z_id)].

    The FactorVAE paper [Kim2018] penalises the same quantity, estimated by a discriminator;
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
