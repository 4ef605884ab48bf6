"""PNG images, CSV tables, JSON summaries and raw .pt tensors under the run folder."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class DiskSink:
    """Writes `<root>/explanations/<callback>/epoch_<NNN>/<name>[_<i>].png` (and .csv, .json, .pt)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, callback: str, epoch: int) -> Path:
        path = self.root / "explanations" / callback / f"epoch_{epoch:03d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_images(
        self,
        callback: str,
        name: str,
        images: Sequence[np.ndarray],
        epoch: int,
        step: int,
        captions: Sequence[str] | None = None,
    ) -> list[Path]:
        folder = self.folder(callback, epoch)
        paths = []
        for i, image in enumerate(images):
            path = folder / (f"{name}.png" if len(images) == 1 else f"{name}_{i:02d}.png")
            # zlib level 1: much faster to write than PIL's default 6, for somewhat larger files
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(path, compress_level=1)
            paths.append(path)
        return paths

    def log_animation(
        self, callback: str, name: str, frames: Sequence[np.ndarray], epoch: int, step: int, fps: float = 4.0
    ) -> Path:
        """An animated GIF (looping) of HxWxC uint8 frames."""
        path = self.folder(callback, epoch) / f"{name}.gif"
        images = [Image.fromarray(f[..., 0] if f.shape[2] == 1 else f) for f in frames]
        # GIF holds 256 colours per frame: the fast octree palette instead of Pillow's far slower
        # default (median cut), for a preview whose full-colour frames are the PNG grids
        images = [im if im.mode == "L" else im.quantize(method=Image.Quantize.FASTOCTREE) for im in images]
        images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
        return path

    def log_table(
        self, callback: str, name: str, columns: Sequence[str], rows: Sequence[Sequence], epoch: int, step: int
    ) -> Path:
        path = self.folder(callback, epoch) / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(rows)
        return path

    def log_summary(self, callback: str, name: str, data: dict, epoch: int, step: int, run_level: bool = False) -> Path:
        """`<epoch folder>/<name>.json`, or `<root>/<name>.json` when `run_level`."""
        folder = self.root if run_level else self.folder(callback, epoch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(data, indent=2))
        return path

    def save_tensors(self, callback: str, name: str, tensors: dict[str, torch.Tensor], epoch: int) -> Path:
        path = self.folder(callback, epoch) / f"{name}.pt"
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, path)
        return path
