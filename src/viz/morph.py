"""Drawing for the morphing paths (src.callbacks.morph): enlarged tiles, the signed change in red
and blue, and the path-mask panel rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.viz.grid import as_rgb
from src.viz.heatmap import colormap, overlay


def enlarge(tiles: torch.Tensor, min_size: int = 84) -> torch.Tensor:
    """[N, C, H, W] tiles scaled up by an integer factor (nearest) to at least `min_size` px, so
    their labels fit."""
    factor = -(-min_size // tiles.shape[-1])
    return F.interpolate(tiles, scale_factor=factor, mode="nearest") if factor > 1 else tiles


def signed_map(signed: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] signed changes -> RGB [N, 3, H, W]: summed over channels, each map scaled by
    its largest |value|, through "bwr": red = brighter, white = unchanged, blue = darker."""
    total = signed.sum(1)
    scale = total.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return colormap((total / scale + 1) / 2, "bwr")


def path_mask_rows(
    images: torch.Tensor, recon: torch.Tensor, morphed: torch.Tensor, mask: torch.Tensor, signed: torch.Tensor
) -> list[list[torch.Tensor]]:
    """One row of enlarged [3, h, w] tiles per probe: original | reconstruction | morphed | mask
    [N, 1, H, W] in green over the reconstruction | signed change (signed_map); for table_grid."""
    green = overlay(recon, mask[:, 0], alpha=0.6, name="Greens")
    red_blue = signed_map(signed)
    rows = []
    for b in range(len(mask)):
        tiles = torch.cat(
            [as_rgb(torch.stack([images[b], recon[b], morphed[b]])), green[b : b + 1], red_blue[b : b + 1]]
        )
        rows.append(list(enlarge(tiles)))
    return rows
