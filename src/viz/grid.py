"""Image grids as uint8 HxWxC arrays, ready for any sink."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (values outside are clipped)."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> one HxWx(1|3) uint8 array, `nrow` images per row."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)
    if images.shape[1] == 1:  # make_grid repeats grey to 3 channels; keep one
        grid = grid[:1]
    return to_uint8(grid).permute(1, 2, 0).numpy()


def paired_rows(top: torch.Tensor, bottom: torch.Tensor, per_row: int) -> torch.Tensor:
    """Interleave two [N, C, H, W] batches in blocks of `per_row`, so each row of `top`
    is followed by the matching row of `bottom` (inputs over their reconstructions)."""
    if top.shape != bottom.shape:
        raise ValueError(f"shapes differ: {tuple(top.shape)} vs {tuple(bottom.shape)}")
    rows = []
    for start in range(0, len(top), per_row):
        rows += [top[start : start + per_row], bottom[start : start + per_row]]
    if len(top) % per_row:  # pad the short final pair of rows with blanks
        blank = top.new_ones((per_row - len(top) % per_row, *top.shape[1:]))
        rows[-2] = torch.cat([rows[-2], blank])
        rows[-1] = torch.cat([rows[-1], blank])
    return torch.cat(rows)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, 1|3, H, W] -> [N, 3, H, W]."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def signed_unit(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] signed images (e.g. deconvnet projections) -> [0, 1], each scaled by its own
    largest |value|: 0.5 = zero, brighter = positive."""
    scale = images.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return images / (2 * scale) + 0.5


def table_grid(rows: list[list[torch.Tensor]], labels: list[list[str | None]] | None = None) -> np.ndarray:
    """A grid from rows of [3, H, W] tiles (equal counts per row), each tile optionally labelled."""
    from src.viz.heatmap import label_tiles

    width = {len(r) for r in rows}
    if len(width) != 1:
        raise ValueError(f"every row needs the same number of tiles, got {sorted(width)}")
    tiles = torch.stack([t.detach().float().cpu() for r in rows for t in r])
    if labels is not None:
        tiles = label_tiles(tiles, [lab for r in labels for lab in r])
    return image_grid(tiles, nrow=width.pop())


def header_labels(row_names: list[str | None], col_names: list[str]) -> list[list[str | None]]:
    """Labels for a table grid: the first row's tiles carry the column names, the first column's
    tiles the row names (the corner gets both)."""
    labels = []
    for r, name in enumerate(row_names):
        row: list[str | None] = [None] * len(col_names)
        if r == 0:
            row = list(col_names)
        if name:
            row[0] = f"{name} {row[0]}" if row[0] else name
        labels.append(row)
    return labels
