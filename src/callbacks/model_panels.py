"""Per-model validation panels: CVAE attribute toggles, segmentation input | truth | prediction,
and the classifier's confusion matrix."""

from __future__ import annotations

import logging

import lightning as L
import torch

from src.callbacks.base import ImageCallback
from src.viz.grid import image_grid
from src.viz.masks import colorize
from src.viz.plots import confusion_matrix_image
from src.xai import targets
from src.xai.latent.sweeps import attribute_sweep

log = logging.getLogger(__name__)


class AttributeGrid(ImageCallback):
    """CVAE control check: each probe's code z (posterior mean under its own condition) decoded
    with one attribute set off, then on; rows = attribute x {off, on}, columns = probes."""

    def __init__(
        self,
        name: str = "attributes",
        attributes: list[str] | None = None,
        max_attributes: int = 6,
        num_probes: int = 8,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        self.attributes = attributes
        self.max_attributes = max_attributes

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        names = pl_module.attribute_names or [str(i) for i in range(pl_module.condition_dim)]
        wanted = self.attributes or names[: self.max_attributes]
        missing = [a for a in wanted if a not in names]
        if missing:
            raise ValueError(f"attributes {missing} are not conditions of this model ({names})")
        c = pl_module.condition(probes)
        with torch.no_grad():
            index = targets.select([names.index(a) for a in wanted])
            images = attribute_sweep(pl_module, probes["image"], index, c=c, values=(0.0, 1.0))
        # [B, A, 2, C, H, W] -> rows attribute x (off, on), columns probes
        grid = image_grid(images.permute(1, 2, 0, 3, 4, 5).flatten(0, 2), nrow=len(c))
        captions = [f"{attr}={state}" for attr in wanted for state in ("off", "on")]
        self.log_grid(trainer, "toggles", grid, "rows: " + ", ".join(captions))


class SegmentationPanels(ImageCallback):
    """Rows of probes: input | ground truth | prediction."""

    def __init__(self, name: str = "segmentation", num_probes: int = 8, **kwargs) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x = probes["image"]
        with torch.no_grad():
            pred = pl_module.predict_mask(x)
        panels = torch.stack([x, colorize(probes["mask"]), colorize(pred)], dim=1).flatten(0, 1)
        self.log_grid(
            trainer,
            "panels",
            image_grid(panels, nrow=3),
            "columns: input | ground truth | prediction",
            {"image": x, "mask": probes["mask"], "pred": pred},
        )


class ConfusionMatrix(ImageCallback):
    """The classifier's validation confusion matrix (computed and synced by the model on every
    rank; rendered here on rank 0). Runs at on_validation_end, after the model has computed it."""

    def __init__(self, name: str = "confusion", **kwargs) -> None:
        super().__init__(name, **kwargs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return  # the matrix is ready only after the module's own epoch-end hook

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)

    def probes(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        return {}

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        matrix = pl_module.val_confusion
        if matrix is None or matrix.dim() != 2:
            return  # multilabel models have per-label 2x2 matrices: per-label accuracy is logged instead
        image = confusion_matrix_image(matrix.numpy(), pl_module.classes, f"validation, epoch {trainer.current_epoch}")
        self.sinks(trainer).log_images(self.name, "matrix", [image], trainer.current_epoch, trainer.global_step)
        rows = [[true, *row] for true, row in zip(pl_module.classes, matrix.long().tolist())]
        self.sinks(trainer).log_table(
            self.name,
            "matrix",
            ["true \\ predicted", *pl_module.classes],
            rows,
            trainer.current_epoch,
            trainer.global_step,
        )
