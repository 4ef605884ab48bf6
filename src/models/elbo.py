"""Terms of the VAE objective: reconstruction losses and the KL warm-up (the KL to the standard
normal prior itself is `src.base.gaussian.kl_standard_normal`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.base.errors import ConfigError

RECONSTRUCTIONS = ("bce", "mse")


def reconstruction_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str, output: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image reconstruction loss summed over pixels: [B].

    bce: Bernoulli negative log-likelihood computed from logits (stable where the sigmoid
    saturates); mse: squared error of the decoded image `output` (defaults to sigmoid(logits)).
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "mse":
        decoded = torch.sigmoid(logits) if output is None else output
        per_pixel = (decoded - target).pow(2)
    else:
        raise ConfigError("model.loss.reconstruction", kind, f"choose one of {list(RECONSTRUCTIONS)}")
    return per_pixel.flatten(1).sum(1)


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """beta, ramped linearly from 0 over the first `warmup_steps` optimizer steps."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)
