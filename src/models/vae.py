"""Convolutional VAE LightningModule implementing the generative model contract."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from src.errors import ConfigError
from src.models.elbo import RECONSTRUCTIONS, kl_weight, reconstruction_loss
from src.models.nets import ConvDecoder, ConvEncoder, ConvSpec, require_layer
from src.models.optim import build_optimizer
from src.models.stages import TrainLogging
from src.ops import kl_standard_normal

# sampling clamps the log-variance: exp(0.5 * logvar) overflows float32 past logvar ~ 177, which a
# large-fan-in layer can reach in a few optimizer steps when nothing (beta = 0) pulls it back
LOGVAR_RANGE = (-30.0, 20.0)
OUTPUT_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda t: t}


class GaussianEncoder:
    """Mixin for the VAE-style models (VAE, CVAE, SegVAE): a conv encoder and the linear heads of the
    Gaussian posterior, registered as `encoder`, `fc_mu`, `fc_logvar` (the checkpoint keys), and
    encode(x) -> (mu, logvar)."""

    encoder: ConvEncoder
    fc_mu: nn.Linear
    fc_logvar: nn.Linear

    def build_encoder(
        self, image_size: int, in_channels: int, latent_dim: int, enc: dict, default_channels: list[int], **common: Any
    ) -> ConvSpec:
        """Build the encoder and the (mu, logvar) heads from the `encoder` config `enc` (channels,
        kernel_size, stride, padding, hidden, dropout); `common` holds norm, activation,
        activation_kwargs and bias. Returns the spec, which the mirrored decoder reuses."""
        spec = ConvSpec.build(
            image_size,
            enc.get("channels", default_channels),
            enc.get("kernel_size", 3),
            enc.get("stride", 2),
            enc.get("padding", 1),
        )
        self.encoder = ConvEncoder(
            spec, in_channels, hidden=enc.get("hidden", []), dropout=enc.get("dropout", 0.0), **common
        )
        self.fc_mu = nn.Linear(self.encoder.out_features, latent_dim)
        self.fc_logvar = nn.Linear(self.encoder.out_features, latent_dim)
        return spec

    @staticmethod
    def encoder_cam_layer(spec: ConvSpec) -> str:
        """The default Grad-CAM layer: the last encoder convolution, before its activation (the
        Stuttgart paper's choice)."""
        return f"encoder.blocks.{len(spec.channels) - 1}.conv"

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)


class VAE(GaussianEncoder, TrainLogging, L.LightningModule):
    """x -> conv encoder -> (mu, logvar) -> z -> mirrored decoder -> x_hat.

    Contracts (src/contracts.py): GenerativeModel. encode(x, c=None) -> (mu, logvar); decode(z, c=None)
    -> x_hat; decode_logits(z) -> pre-activation output; sample(n); latent_dim; cam_layer.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        latent_dim: int = 100,
        encoder: dict | None = None,
        decoder: dict | None = None,
        norm: str = "batch",
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        bias: bool = False,
        output_activation: str = "sigmoid",
        loss: dict | None = None,
        optimizer: dict | None = None,
        cam_layer: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if int(latent_dim) <= 0:
            raise ConfigError("model.latent_dim", latent_dim, "must be a positive integer (e.g. 100)")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ConfigError(
                "model.output_activation", output_activation, f"choose one of {sorted(OUTPUT_ACTIVATIONS)}"
            )
        enc = dict(encoder or {})
        dec = dict(decoder or {})
        self.loss_cfg = {
            "reconstruction": "bce",
            "recon_weight": 1.0,
            "beta": 1.0,
            "kl_warmup_steps": 0,
            **(loss or {}),
        }
        if self.loss_cfg["reconstruction"] not in RECONSTRUCTIONS:
            raise ConfigError(
                "model.loss.reconstruction", self.loss_cfg["reconstruction"], f"choose one of {list(RECONSTRUCTIONS)}"
            )
        if self.loss_cfg["reconstruction"] == "bce" and output_activation != "sigmoid":
            raise ConfigError(
                "model.output_activation", output_activation, "bce reconstruction needs 'sigmoid' (or use mse)"
            )
        self.optimizer_cfg = dict(optimizer or {"name": "Adam", "lr": 1e-3})
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.output_activation = output_activation

        common = dict(norm=norm, activation=activation, activation_kwargs=activation_kwargs, bias=bias)
        spec = self.build_encoder(
            image_size, self.condition_channels + in_channels, self.latent_dim, enc, [32, 64], **common
        )
        self.decoder = ConvDecoder(
            spec,
            self.latent_dim + self.condition_features,
            in_channels,
            hidden=dec.get("hidden", []),
            project_norm_act=dec.get("project_norm_act", False),
            final_norm=dec.get("final_norm", False),
            dropout=dec.get("dropout", 0.0),
            block_condition=self.condition_features if self.condition_every_block else 0,
            **common,
        )
        self.cam_layer = cam_layer or self.encoder_cam_layer(spec)
        require_layer(self, self.cam_layer)

    # conditional subclasses set these before calling VAE.__init__: extra encoder input planes
    # and extra decoder input features
    condition_channels = 0
    condition_features = 0
    condition_every_block = False

    def decode_logits(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return OUTPUT_ACTIVATIONS[self.output_activation](self.decode_logits(z, c))

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x, c)
        z = self.reparameterize(mu, logvar) if self.training else mu
        logits = self.decode_logits(z, c)
        return {"mu": mu, "logvar": logvar, "z": z, "logits": logits}

    @torch.no_grad()
    def sample(self, n: int, c: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n codes drawn from the prior N(0, I)."""
        z = torch.randn(n, self.latent_dim, generator=generator)  # on CPU: same draws on any device
        return self.decode(z.to(self.device), c)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of x."""
        mu, _ = self.encode(x, c)
        return self.decode(mu, c)

    def condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def loss_terms(self, batch: dict[str, Any], beta: float) -> dict[str, torch.Tensor]:
        x, c = batch["image"], self.condition(batch)
        out = self(x, c)
        decoded = OUTPUT_ACTIVATIONS[self.output_activation](out["logits"])
        recon = reconstruction_loss(out["logits"], x, self.loss_cfg["reconstruction"], decoded).mean()
        kl = kl_standard_normal(out["mu"], out["logvar"]).sum(1).mean()
        loss = self.loss_cfg["recon_weight"] * recon + beta * kl
        return {"loss": loss, "recon": recon, "kl": kl}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        beta = kl_weight(self.global_step, self.loss_cfg["beta"], self.loss_cfg["kl_warmup_steps"])
        terms = self.loss_terms(batch, beta)
        self.last_terms = {k: v.detach() for k, v in terms.items()}  # named in a non-finite-loss error
        step = {"train/loss_step": terms["loss"]}
        if self.loss_cfg["kl_warmup_steps"] > 0:
            step["train/beta"] = beta
        epoch = {"train/loss_epoch": terms["loss"], "train/recon": terms["recon"], "train/kl": terms["kl"]}
        self.log_train(step, epoch, len(batch["image"]))
        return terms["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        # evaluation uses the target beta, so val/loss is comparable across epochs of a warm-up
        terms = self.loss_terms(batch, self.loss_cfg["beta"])
        self.log_dict(
            {f"{stage}/{k}": v for k, v in terms.items()},
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["image"]),
            sync_dist=True,
        )
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.optimizer_cfg)
