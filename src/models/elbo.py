"""The VAE objective's settings (`VAELoss`) and terms: reconstruction losses and the KL warm-up
(the KL to the standard normal prior itself is `src.base.gaussian.kl_standard_normal`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from src.base.errors import ConfigError

RECONSTRUCTIONS = ("bce", "mse")


@dataclass(frozen=True)
class VAELoss:
    """`model.loss` of the VAE-family models, and the one place its defaults live
    (conf/model/vae.yaml shows the same, which tests/models/test_latent_losses.py checks):
    recon_weight * reconstruction (`reconstruction`: bce | mse, summed per image, averaged over
    the batch) + beta * KL, beta ramped up over `kl_warmup_steps` optimizer steps; plus
    tc_weight * the total correlation of q(z) and ad_weight * [Liu2020]'s attention overlap of the
    `ad_dims` dimensions with the most KL, at `ad_layer` (None: the model's cam_layer). A checkpoint
    stores these keys in its hyper-parameters, so their names stay."""

    reconstruction: str = "bce"
    recon_weight: float = 1.0
    beta: float = 1.0
    kl_warmup_steps: int = 0
    tc_weight: float = 0.0
    ad_weight: float = 0.0
    ad_dims: int = 4
    ad_layer: str | None = None

    def __post_init__(self) -> None:
        for key in ("beta", "tc_weight", "ad_weight", "kl_warmup_steps"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"model.loss.{key}", getattr(self, key), "must be >= 0 (0 switches the term off)")
        if not float(self.recon_weight) > 0:
            raise ConfigError("model.loss.recon_weight", self.recon_weight, "must be > 0")
        if int(self.ad_dims) < 2:
            raise ConfigError("model.loss.ad_dims", self.ad_dims, "the overlap needs pairs: use >= 2")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(
                "model.loss.reconstruction", self.reconstruction, f"choose one of {list(RECONSTRUCTIONS)}"
            )

    @classmethod
    def of(cls, values: Mapping | None) -> VAELoss:
        """The config's `model.loss` mapping (None: the defaults) as a VAELoss; an unknown key is a
        ConfigError naming it."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                "model.loss", unknown, f"unknown key(s); the VAE loss takes {[f.name for f in fields(cls)]}"
            )
        return cls(**values)


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
