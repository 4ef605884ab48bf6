"""Conditional VAE (the [Panday2021] CVAE): c -> Dense(H*W) -> one plane concatenated to the image
channels at the encoder input; z concatenated with c at the decoder input."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.base.errors import ConfigError
from src.models.vae import VAE


class CVAE(VAE):
    """encode(x, c), decode(z, c), sample(n, c). The condition is batch['attributes'] (0/1
    vectors, e.g. CelebA attributes) when condition='attributes', or a one-hot of
    batch['label'] when condition='label'. condition_every_block=True also feeds c to every
    decoder block as constant planes (not in [Panday2021]; a decoder that obeys c more firmly).

    Contracts (src/base/contracts.py): GenerativeModel and ConditionalModel (condition_dim,
    attribute_names, condition(batch))."""

    kind = "conditional"  # src.base.contracts.KINDS, read from the class before anything is built

    def __init__(
        self, condition_dim: int, condition: str = "attributes", condition_every_block: bool = False, **kwargs: Any
    ) -> None:
        if int(condition_dim) <= 0:
            raise ConfigError("model.condition_dim", condition_dim, "must be the number of condition entries (> 0)")
        if condition not in ("attributes", "label"):
            raise ConfigError("model.condition", condition, "choose 'attributes' or 'label'")
        self.condition_features = int(condition_dim)  # read by VAE.__init__ when sizing the decoder
        self.condition_channels = 1
        self.condition_every_block = bool(condition_every_block)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.condition_key = condition
        self.condition_dim = int(condition_dim)
        self.condition_plane = nn.Linear(self.condition_dim, self.image_size * self.image_size)
        self.attribute_names: list[str] = []

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "attribute_names", None) or getattr(datamodule, "class_names", None)
        if names and len(names) == self.condition_dim:
            self.attribute_names = list(names)
        elif names:
            raise ConfigError(
                "model.condition_dim",
                self.condition_dim,
                f"the data has {len(names)} condition entries ({', '.join(names)})",
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["attribute_names"] = self.attribute_names

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.attribute_names = list(checkpoint.get("attribute_names", []))

    def _require(self, c: torch.Tensor | None) -> torch.Tensor:
        if c is None or c.shape[-1] != self.condition_dim:
            got = None if c is None else tuple(c.shape)
            raise ValueError(f"CVAE needs a condition of shape [B, {self.condition_dim}], got {got}")
        return c.float()

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._require(c)
        plane = self.condition_plane(c).view(-1, 1, self.image_size, self.image_size)
        return super().encode(torch.cat([x, plane], dim=1))

    def encode_mean(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = self._require(c)
        plane = self.condition_plane(c).view(-1, 1, self.image_size, self.image_size)
        return super().encode_mean(torch.cat([x, plane], dim=1))

    def decode_logits(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = self._require(c)
        return self.decoder(torch.cat([z, c], dim=1), c if self.condition_every_block else None)

    def condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.condition_key == "label":
            return F.one_hot(batch["label"].long(), self.condition_dim).float()
        if "attributes" not in batch:
            raise ConfigError("model.condition", "attributes", "the data gives no 'attributes'; use condition=label")
        return batch["attributes"].float()
