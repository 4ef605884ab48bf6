"""Heatmaps over images, and small text labels on image tiles."""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


@functools.cache
def _lut(name: str) -> torch.Tensor:
    from matplotlib import colormaps

    return torch.from_numpy(colormaps[name](np.linspace(0, 1, 256))[:, :3]).float()  # [256, 3]


def colormap(maps: torch.Tensor, name: str = "jet") -> torch.Tensor:
    """Maps in [0, 1], [N, H, W] -> RGB [N, 3, H, W] through a matplotlib colour map."""
    index = maps.detach().float().clamp(0, 1).mul(255).round().long().cpu()
    return _lut(name)[index].permute(0, 3, 1, 2).to(maps.device)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, name: str = "jet") -> torch.Tensor:
    """[N, C, H, W] images in [0, 1] (C = 1 or 3) under [N, H, W] maps in [0, 1] -> [N, 3, H, W]."""
    if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} do not line up")
    rgb = images.detach().float().clamp(0, 1).expand(-1, 3, -1, -1)
    return (1 - alpha) * rgb + alpha * colormap(maps, name).to(rgb.device)


def label_tiles(tiles: torch.Tensor, labels: list[str | None]) -> torch.Tensor:
    """Write a short label in the top-left corner of each [N, 3, H, W] tile (white on black), cut
    to the tile's width."""
    if len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} tiles")
    font = ImageFont.load_default()
    out = tiles.detach().float().clamp(0, 1).cpu().clone()
    for i, text in enumerate(labels):
        if not text:
            continue
        tile = Image.fromarray(out[i].mul(255).round().byte().permute(1, 2, 0).numpy())
        draw = ImageDraw.Draw(tile)
        while len(text) > 1 and draw.textlength(text, font=font) > tile.width - 2:  # cut to the tile's width
            text = text[:-1]
        _, _, right, bottom = draw.textbbox((1, 0), text, font=font)
        right, bottom = min(right + 1, tile.width - 1), min(bottom + 1, tile.height - 1)
        draw.rectangle((0, 0, right, bottom), fill=(0, 0, 0))
        draw.text((1, 0), text, fill=(255, 255, 255), font=font)
        strip = torch.from_numpy(np.array(tile)[: bottom + 1, : right + 1]).permute(2, 0, 1).float() / 255
        out[i, :, : bottom + 1, : right + 1] = strip  # only the label's box changes
    return out.to(tiles.device)
