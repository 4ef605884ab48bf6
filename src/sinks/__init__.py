"""One log_images / log_table API over W&B, TensorBoard, CSV and files on disk.

Every image is written as PNG under `<run dir>/explanations/<callback>/epoch_<NNN>/` and, for
each configured Lightning logger that can show images, sent there as `explain/<callback>/<name>`.
Summaries (log_summary) are JSON files; their numbers reach the loggers that show numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from src.sinks.disk import DiskSink


class Sink(Protocol):
    def log_images(
        self,
        callback: str,
        name: str,
        images: Sequence[np.ndarray],
        epoch: int,
        step: int,
        captions: Sequence[str] | None = None,
        files: Sequence[Path] | None = None,
    ) -> None:
        """`files`: the same images as the disk sink wrote them (PNG), for sinks that upload files."""

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> None: ...


class SinkSet:
    """Fans each call out to every sink; the disk sink is always present."""

    def __init__(self, disk: DiskSink, others: Sequence[Sink] = ()) -> None:
        self.disk = disk
        self.sinks: list[Sink] = [disk, *others]

    def log_images(
        self,
        callback: str,
        name: str,
        images: Sequence[np.ndarray],
        epoch: int,
        step: int,
        captions: Sequence[str] | None = None,
    ) -> None:
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
                raise ValueError(f"{callback}/{name}: images must be uint8 HxWxC, got {image.dtype} {image.shape}")
        files = self.disk.log_images(callback, name, images, epoch, step, captions)
        for sink in self.sinks[1:]:
            sink.log_images(callback, name, images, epoch, step, captions, files=files)

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> None:
        for sink in self.sinks:
            sink.log_table(callback, name, columns, rows, epoch, step)

    def log_animation(
        self,
        callback: str,
        name: str,
        frames: Sequence[np.ndarray],
        epoch: int,
        step: int,
        fps: float = 4.0,
        caption: str | None = None,
    ) -> Path:
        """A looping GIF on disk; sinks that can show one (W&B, as a video) get that file."""
        if not frames:
            raise ValueError(f"{callback}/{name}: an animation needs at least one frame")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1 or any(f.dtype != np.uint8 for f in frames):
            raise ValueError(f"{callback}/{name}: frames must be uint8 HxWxC of one shape, got {sorted(shapes)}")
        path = self.disk.log_animation(callback, name, frames, epoch, step, fps)
        for sink in self.sinks[1:]:
            if hasattr(sink, "log_animation"):
                sink.log_animation(callback, name, path, epoch, step, caption)
        return path

    def log_summary(self, callback: str, name: str, data: dict, epoch: int, step: int, run_level: bool = False) -> Path:
        """`data` as JSON in `<callback's epoch folder>/<name>.json`, or in `<run dir>/<name>.json`
        when `run_level` (each call overwrites it: the latest epoch's); its top-level int and float
        values go to the sinks that can show numbers (log_summary: W&B's run summary, TensorBoard
        scalars) as `<callback>/<key>`."""
        path = self.disk.log_summary(callback, name, data, epoch, step, run_level)
        numbers = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for sink in self.sinks[1:]:
            if numbers and hasattr(sink, "log_summary"):
                sink.log_summary(callback, name, numbers, epoch, step)
        return path

    def save_tensors(self, callback: str, name: str, tensors: dict[str, torch.Tensor], epoch: int) -> Path:
        return self.disk.save_tensors(callback, name, tensors, epoch)


def sinks_for_trainer(trainer) -> SinkSet:
    """The disk sink under the trainer's run folder plus one sink per logger that shows images."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    from src.sinks.tensorboard_sink import TensorBoardSink
    from src.sinks.wandb_sink import WandbSink

    others: list[Sink] = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            others.append(WandbSink(logger))
        elif isinstance(logger, TensorBoardLogger):
            others.append(TensorBoardSink(logger))
    return SinkSet(DiskSink(Path(trainer.default_root_dir)), others)
