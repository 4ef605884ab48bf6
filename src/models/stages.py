"""The train/val/test step boilerplate for modules whose three steps differ only by stage name."""

from __future__ import annotations

from typing import Any

import torch


class StagedSteps:
    """Routes Lightning's three step hooks to `self._step(batch, stage)`."""

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")
