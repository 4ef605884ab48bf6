"""Convolutional VAE LightningModule implementing the generative model contract."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from src.base.cam import cam_from_gradients, layer_gradients
from src.base.errors import ConfigError
from src.base.gaussian import kl_standard_normal, total_correlation
from src.base.maps import attention_overlap
from src.base.rng import seeded
from src.models.elbo import VAELoss, kl_weight, reconstruction_loss
from src.models.nets import ConvDecoder, ConvEncoder, ConvSpec, require_layer
from src.models.optim import build_optimizer
from src.models.stages import TrainLogging

# sampling clamps the log-variance: exp(0.5 * logvar) overflows float32 past logvar ~ 177, which a
# large-fan-in layer can reach in a few optimizer steps when nothing (beta = 0) pulls it back
LOGVAR_RANGE = (-30.0, 20.0)
OUTPUT_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda t: t}


def attention_disentanglement(
    activation: torch.Tensor, mu: torch.Tensor, kl_dims: torch.Tensor, top: int
) -> torch.Tensor:
    """[Liu2020]'s attention-disentanglement loss for one batch: the Grad-CAM maps
    M^i = ReLU(sum_c alpha^i_c A_c) of the `top` dimensions with the most KL in this batch, at the
    layer whose output is `activation` [B, C, h, w], and the mean over all pairs (i, j) of
    2 * sum min(M^i, M^j) / sum (M^i + M^j), each sum over the batch and the pixels (as
    [FACT2021]; `src.base.maps.attention_overlap`). alpha^i_c is the spatial mean of
    d mu_i / d A_c, from one batched backward pass for all `top` dimensions (`src.base.cam`, the
    Grad-CAM the explanations use), and is held constant
    (as both public implementations do), so the loss reaches the encoder through the activations.
    In train mode BatchNorm couples the samples, so alpha is the gradient of the batch sum of mu_i."""
    k = min(int(top), mu.shape[1])
    dims = kl_dims.detach().mean(0).topk(k).indices
    grads = torch.cat(list(layer_gradients(activation, mu[:, dims], chunk_size=k)))  # [k, B, C, h, w]
    maps, _ = cam_from_gradients(activation, grads.detach(), "gradcam")  # [k, B, h, w], alpha held constant
    i, j = torch.triu_indices(k, k, 1, device=mu.device)
    return attention_overlap(maps[i], maps[j], dims=(1, 2, 3)).mean()


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
        [Panday2021] choice)."""
        return f"encoder.blocks.{len(spec.channels) - 1}.conv"

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def encode_mean(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """mu alone, = encode(x, c)[0] without computing logvar (forward-mode differentiation,
        e.g. all-latent Grad-CAM, would otherwise carry every tangent through fc_logvar too)."""
        return self.fc_mu(self.encoder(x))


class VAE(GaussianEncoder, TrainLogging, L.LightningModule):
    """x -> conv encoder -> (mu, logvar) -> z -> mirrored decoder -> x_hat.

    Contracts (src/base/contracts.py): GenerativeModel. encode(x, c=None) -> (mu, logvar); decode(z, c=None)
    -> x_hat; decode_logits(z) -> pre-activation output; sample(n); latent_dim; cam_layer.
    """

    kind = "generative"  # src.base.contracts.KINDS, read from the class before anything is built

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
        self.loss_cfg = VAELoss.of(loss)
        if self.loss_cfg.reconstruction == "bce" and output_activation != "sigmoid":
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
        self.ad_layer = self.loss_cfg.ad_layer or self.cam_layer
        require_layer(self, self.ad_layer, key="model.loss.ad_layer")

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
        """The objective and its terms: recon_weight * reconstruction + beta * KL, plus
        tc_weight * total correlation (FactorVAE's penalty; `src.base.gaussian.total_correlation`) and
        ad_weight * attention overlap ([Liu2020]'s AD loss; `attention_disentanglement`) when
        their weights are > 0. The AD term needs gradients, so it is computed only where they
        are on (training), and evaluation losses leave it out."""
        x, c = batch["image"], self.condition(batch)
        with_ad = float(self.loss_cfg.ad_weight) > 0 and torch.is_grad_enabled()
        captured: list[torch.Tensor] = []
        handle = (
            self.get_submodule(self.ad_layer).register_forward_hook(lambda m, i, o: captured.append(o))
            if with_ad
            else None
        )
        try:
            out = self(x, c)
        finally:
            if handle is not None:
                handle.remove()
        decoded = OUTPUT_ACTIVATIONS[self.output_activation](out["logits"])
        recon = reconstruction_loss(out["logits"], x, self.loss_cfg.reconstruction, decoded).mean()
        kl_dims = kl_standard_normal(out["mu"], out["logvar"])  # [B, D]
        kl = kl_dims.sum(1).mean()
        loss = self.loss_cfg.recon_weight * recon + beta * kl
        terms = {"recon": recon, "kl": kl}
        if float(self.loss_cfg.tc_weight) > 0 and len(x) >= 2:  # one sample has no correlation to estimate
            logvar = out["logvar"].clamp(*LOGVAR_RANGE)
            if self.training:
                z = out["z"]
            else:  # evaluation draws z with a fixed seed: val/loss is repeatable and the global RNG untouched
                with seeded(0, x.device):
                    z = self.reparameterize(out["mu"], out["logvar"])
            terms["tc"] = total_correlation(z, out["mu"], logvar, self.dataset_size(len(x)))
            loss = loss + float(self.loss_cfg.tc_weight) * terms["tc"]
        if with_ad:
            terms["ad"] = attention_disentanglement(captured[0], out["mu"], kl_dims, int(self.loss_cfg.ad_dims))
            loss = loss + float(self.loss_cfg.ad_weight) * terms["ad"]
        return {"loss": loss, **terms}

    def dataset_size(self, batch_size: int) -> int:
        """The training set's size (the total-correlation estimate's N), or the batch's outside a fit."""
        trainer = self._trainer
        dataset = getattr(getattr(trainer, "datamodule", None), "train_set", None) if trainer is not None else None
        try:
            return max(len(dataset), batch_size) if dataset is not None else batch_size
        except (RuntimeError, TypeError):
            return batch_size

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        beta = kl_weight(self.global_step, self.loss_cfg.beta, self.loss_cfg.kl_warmup_steps)
        terms = self.loss_terms(batch, beta)
        self.last_terms = {k: v.detach() for k, v in terms.items()}  # named in a non-finite-loss error
        step = {"train/loss_step": terms["loss"]}
        if self.loss_cfg.kl_warmup_steps > 0:
            step["train/beta"] = beta
        epoch = {"train/loss_epoch": terms["loss"], **{f"train/{k}": v for k, v in terms.items() if k != "loss"}}
        self.log_train(step, epoch, len(batch["image"]))
        return terms["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        # evaluation uses the target beta, so val/loss is comparable across epochs of a warm-up
        terms = self.loss_terms(batch, self.loss_cfg.beta)
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
