"""Segmentation models: the [Panday2021] segmentation VAE (image -> VAE bottleneck -> mask logits) and
the segmentation-models-pytorch U-Net baseline, sharing losses and metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import segmentation_models_pytorch as smp
import torch
import torchmetrics
from torch import nn

from src.base.errors import ConfigError
from src.base.gaussian import kl_standard_normal
from src.models.elbo import kl_weight
from src.models.nets import ConvDecoder, require_layer
from src.models.optim import build_optimizer
from src.models.stages import StagedSteps, TrainLogging
from src.models.vae import VAE, GaussianEncoder


class SegmentationModule(StagedSteps, TrainLogging, L.LightningModule):
    """Loss = BCE (binary) or cross-entropy (multiclass) + Jaccard (smp's losses, weights
    configurable); metrics: mean IoU and per-class IoU (torchmetrics JaccardIndex).

    Binary: one logit channel, target float [B, 1, H, W]; multiclass: K channels, target long
    [B, H, W]. Subclasses implement `logits(x)` and may add terms through `extra_terms`."""

    kind = "segmenter"  # src.base.contracts.KINDS, read from the class before anything is built

    def __init__(
        self,
        num_classes: int = 1,
        loss: dict | None = None,
        optimizer: dict | None = None,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("model.num_classes", num_classes, "1 for a binary mask, or the number of classes")
        self.num_classes = num_classes
        self.binary = num_classes == 1
        self.loss_cfg = {"ce_weight": 1.0, "jaccard_weight": 1.0, "beta": 0.0, "kl_warmup_steps": 0, **(loss or {})}
        self.optimizer_cfg = dict(optimizer or {"name": "Adam", "lr": 1e-3})
        mode = "binary" if self.binary else "multiclass"
        # smooth_factor must be given: smp 0.6 crashes on its default None in the multiclass loss
        self.ce = (
            smp.losses.SoftBCEWithLogitsLoss() if self.binary else smp.losses.SoftCrossEntropyLoss(smooth_factor=0.0)
        )
        self.jaccard = smp.losses.JaccardLoss(mode=mode, from_logits=True)
        self.classes = list(classes) if classes else (["mask"] if self.binary else [str(i) for i in range(num_classes)])
        metric = {"task": "binary"} if self.binary else {"task": "multiclass", "num_classes": num_classes}
        self.iou = nn.ModuleDict(
            {
                f"{stage}_{kind}": torchmetrics.JaccardIndex(**metric, average=avg)
                for stage in ("val", "test")
                for kind, avg in (("miou", "macro"), ("class_iou", "none" if not self.binary else "macro"))
            }
        )

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mask logits [B, K, H, W], extra loss terms already weighted)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)[0]

    def predict_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Binary: float 0/1 [B, 1, H, W]; multiclass: class map long [B, H, W]."""
        logits = self(x)
        return (logits > 0).float() if self.binary else logits.argmax(1)

    def seg_loss(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        target = target.float() if self.binary else target.long()
        return {"ce": self.ce(logits, target), "jaccard": self.jaccard(logits, target)}

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        target = batch["mask"]
        logits, extra = self.logits(batch["image"])
        terms = self.seg_loss(logits, target)
        loss = self.loss_cfg["ce_weight"] * terms["ce"] + self.loss_cfg["jaccard_weight"] * terms["jaccard"]
        loss = loss + sum(extra.values(), torch.zeros((), device=loss.device))
        logs = {f"{stage}/loss": loss, f"{stage}/ce": terms["ce"], f"{stage}/jaccard_loss": terms["jaccard"]}
        logs.update({f"{stage}/{k}": v for k, v in extra.items()})
        if stage == "train":  # per-step logging costs Lightning's loop the most (TrainLogging)
            self.last_terms = {k.removeprefix("train/"): v.detach() for k, v in logs.items()}  # for FiniteGuard
            self.log_train(
                {f"{k}_step": v for k, v in logs.items()}, {f"{k}_epoch": v for k, v in logs.items()}, len(target)
            )
        else:
            self.log_dict(logs, on_epoch=True, batch_size=len(target), sync_dist=True)
            pred = (logits > 0).long() if self.binary else logits.argmax(1)
            tgt = target.long()
            self.iou[f"{stage}_miou"].update(pred, tgt)
            self.iou[f"{stage}_class_iou"].update(pred, tgt)
            self.log(f"{stage}/miou", self.iou[f"{stage}_miou"], on_epoch=True, prog_bar=True)
        return loss

    def _log_class_iou(self, stage: str) -> None:
        if self.binary:
            return
        values = self.iou[f"{stage}_class_iou"].compute()
        self.iou[f"{stage}_class_iou"].reset()
        for name, value in zip(self.classes, values):
            self.log(f"{stage}/iou_{name}", value)

    def on_validation_epoch_end(self) -> None:
        self._log_class_iou("val")

    def on_test_epoch_end(self) -> None:
        self._log_class_iou("test")

    def setup(self, stage: str) -> None:
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if names and len(names) == max(self.num_classes, 2):
            self.classes = list(names)[-1:] if self.binary else list(names)

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.optimizer_cfg)


class SegVAE(GaussianEncoder, SegmentationModule):
    """Image -> conv encoder -> (mu, logvar) -> z -> mirrored decoder -> mask logits; loss adds
    beta * KL (beta = 0, the [Panday2021] setting, makes it a plain bottleneck). Encoder and
    bottleneck shared with the VAE (GaussianEncoder).

    Contracts (src/base/contracts.py): Segmenter (model(x) -> mask logits, predict_mask) and
    GenerativeModel (encode, decode -> mask logits, sample, latent_dim, cam_layer)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        latent_dim: int = 5,
        num_classes: int = 1,
        encoder: dict | None = None,
        decoder: dict | None = None,
        norm: str = "batch",
        activation: str = "leaky_relu",
        activation_kwargs: dict | None = None,
        bias: bool = True,
        loss: dict | None = None,
        optimizer: dict | None = None,
        cam_layer: str | None = None,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, loss=loss, optimizer=optimizer, classes=classes)
        self.save_hyperparameters()
        if int(latent_dim) <= 0:
            raise ConfigError("model.latent_dim", latent_dim, "must be a positive integer")
        enc, dec = dict(encoder or {}), dict(decoder or {})
        self.latent_dim, self.image_size, self.in_channels = int(latent_dim), int(image_size), int(in_channels)
        common = dict(norm=norm, activation=activation, activation_kwargs=activation_kwargs, bias=bias)
        spec = self.build_encoder(image_size, in_channels, self.latent_dim, enc, [32, 64, 64, 64, 64], **common)
        self.decoder = ConvDecoder(
            spec,
            self.latent_dim,
            num_classes,
            hidden=dec.get("hidden", []),
            project_norm_act=dec.get("project_norm_act", False),
            final_norm=False,
            dropout=dec.get("dropout", 0.0),
            **common,
        )
        self.cam_layer = cam_layer or self.encoder_cam_layer(spec)
        require_layer(self, self.cam_layer)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits [B, K, H, W]."""
        return self.decoder(z)

    @torch.no_grad()
    def sample(self, n: int, c: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator)
        return self.decode(z.to(self.device))

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, logvar = self.encode(x)
        z = VAE.reparameterize(mu, logvar) if self.training else mu
        extra = {}
        if self.loss_cfg["beta"] > 0:  # beta = 0 ([Panday2021]): a plain bottleneck, no KL term at all
            beta = kl_weight(self.global_step, self.loss_cfg["beta"], self.loss_cfg["kl_warmup_steps"])
            kl = kl_standard_normal(mu, logvar).sum(1).mean()
            extra["kl"] = (beta if self.training else self.loss_cfg["beta"]) * kl
        return self.decode(z), extra


def last_conv_run(encoder: nn.Module, in_channels: int, size: int) -> str:
    """Name of the last Conv2d that `encoder` runs on a [1, in_channels, size, size] input."""
    ran: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, n=name: ran.append(n))
        for name, m in encoder.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            encoder.eval()(torch.zeros(1, in_channels, size, size))
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train()
    return ran[-1]


class UNet(SegmentationModule):
    """segmentation-models-pytorch U-Net, randomly initialised (no download): the baseline.

    Contracts (src/base/contracts.py): Segmenter."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        encoder_name: str = "resnet18",
        encoder_depth: int = 5,
        decoder_channels: list[int] | None = None,
        loss: dict | None = None,
        optimizer: dict | None = None,
        cam_layer: str | None = None,
        classes: list[str] | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, loss=loss, optimizer=optimizer, classes=classes)
        self.save_hyperparameters()
        decoder_channels = list(decoder_channels or [256, 128, 64, 32, 16][-encoder_depth:])
        if image_size is not None and image_size % (2**encoder_depth):
            raise ConfigError(
                "data.image_size", image_size, f"a depth-{encoder_depth} U-Net needs a multiple of {2**encoder_depth}"
            )
        try:
            self.net = smp.Unet(
                encoder_name=encoder_name,
                encoder_weights=None,
                encoder_depth=encoder_depth,
                decoder_channels=decoder_channels,
                in_channels=in_channels,
                classes=num_classes,
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                "model.encoder_name", encoder_name, f"segmentation-models-pytorch rejects it ({exc})"
            ) from exc
        # Seg-Grad-CAM looks at the bottleneck: the last encoder convolution that runs (smp keeps the
        # deeper ResNet stages as modules when encoder_depth < 5, but skips them in forward)
        self.cam_layer = cam_layer or f"net.encoder.{last_conv_run(self.net.encoder, in_channels, 2**encoder_depth)}"

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.net(x), {}
