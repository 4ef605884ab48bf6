"""Images, tables and summary numbers into a Lightning TensorBoardLogger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class TensorBoardSink:
    def __init__(self, logger) -> None:
        self.logger = logger

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
        for i, image in enumerate(images):
            tag = f"explain/{callback}/{name}" + (f"/{i}" if len(images) > 1 else "")
            self.logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")

    def log_summary(self, callback: str, name: str, numbers: dict[str, float], epoch: int, step: int) -> None:
        """One scalar per number, `<callback>/<key>` at `step`."""
        for key, value in numbers.items():
            self.logger.experiment.add_scalar(f"{callback}/{key}", value, global_step=step)

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> None:
        header = "| " + " | ".join(map(str, columns)) + " |\n|" + "---|" * len(columns) + "\n"
        body = "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
        self.logger.experiment.add_text(f"explain/{callback}/{name}", header + body, global_step=step)
