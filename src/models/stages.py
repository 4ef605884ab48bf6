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


class TrainLogging:
    """Training-step logs at the cost of the steps that reach the loggers.

    Each `self.log` call costs Lightning bookkeeping per step (it walks its result collection),
    a noticeable share of a small model's step on a CPU.
    Lightning writes per-step values to the loggers only every `trainer.log_every_n_steps` steps,
    so `log_train` passes them to `self.log` on those steps alone (the loggers get the same points)
    and keeps batch-weighted running sums for the epoch means, logged once by
    `on_train_epoch_end` (under DDP the mean of the ranks' means). The sums travel in checkpoints,
    so a run resumed mid-epoch reports the whole epoch's means."""

    _epoch_sums: dict[str, torch.Tensor] | None = None
    _epoch_count: int = 0
    _sums_epoch: int = -1

    def log_train(self, step: dict[str, torch.Tensor | float], epoch: dict[str, torch.Tensor], batch_size: int) -> None:
        """`step`: values logged under their names on the steps Lightning writes; `epoch`: values
        whose mean over the epoch's samples is logged under their names at the epoch's end."""
        trainer = self._trainer
        if trainer is None:
            return
        if self._sums_epoch != trainer.current_epoch:
            self._epoch_sums, self._epoch_count, self._sums_epoch = None, 0, trainer.current_epoch
        values = {k: v.detach() * batch_size for k, v in epoch.items()}
        sums = self._epoch_sums
        self._epoch_sums = values if sums is None else {k: sums[k].to(v.device) + v for k, v in values.items()}
        self._epoch_count += batch_size
        if step and (trainer._logger_connector.should_update_logs or trainer.fast_dev_run):
            for name, value in step.items():
                self.log(name, value, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is not None and self._sums_epoch == self.current_epoch and self._epoch_count:
            for name, total in self._epoch_sums.items():
                self.log(name, total / self._epoch_count, on_step=False, on_epoch=True, sync_dist=True)
        self._epoch_sums, self._epoch_count = None, 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._epoch_sums is not None:
            checkpoint["train_epoch_sums"] = {
                "epoch": self._sums_epoch,
                "count": self._epoch_count,
                "sums": dict(self._epoch_sums),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("train_epoch_sums")
        if saved:
            self._sums_epoch, self._epoch_count, self._epoch_sums = saved["epoch"], saved["count"], saved["sums"]
