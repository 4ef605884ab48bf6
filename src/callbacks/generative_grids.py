"""Reconstruction and prior-sample grids for generative models."""

from __future__ import annotations

import lightning as L
import torch

from src.callbacks.base import ImageCallback
from src.viz.grid import image_grid, paired_rows


class ReconstructionGrid(ImageCallback):
    """Probe inputs over their reconstructions (posterior mean decoded), `per_row` per row."""

    def __init__(self, name: str = "reconstructions", per_row: int = 8, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.per_row = per_row

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x = probes["image"]
        with torch.no_grad():
            recon = pl_module.reconstruct(x, pl_module.condition(probes))
        per_row = min(self.per_row, len(x))
        grid = image_grid(paired_rows(x, recon, per_row), nrow=per_row)
        self.log_grid(trainer, "grid", grid, "rows: inputs over reconstructions", {"input": x, "reconstruction": recon})


class PriorSamples(ImageCallback):
    """Decodings of the same `num_samples` prior draws every epoch, so epochs are comparable."""

    def __init__(self, name: str = "samples", num_samples: int = 64, per_row: int = 8, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.num_samples = num_samples
        self.per_row = per_row

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        condition = pl_module.condition(probes)
        if condition is not None:  # cycle the probes' conditions over the samples
            condition = condition[torch.arange(self.num_samples, device=condition.device) % len(condition)]
        samples = pl_module.sample(self.num_samples, condition, generator=generator)
        grid = image_grid(samples, nrow=self.per_row)
        caption = "decoded draws from the prior N(0, I), same draws every epoch"
        self.log_grid(trainer, "grid", grid, caption, {"samples": samples})
