"""Segmentation masks as colour images."""

from __future__ import annotations

import torch

from src.viz.grid import as_rgb

# 19 distinct colours (class 0 black); enough for CelebAMask-HQ's classes
PALETTE = (
    torch.tensor(
        [
            [0, 0, 0],
            [204, 153, 128],
            [230, 100, 60],
            [40, 40, 200],
            [60, 180, 75],
            [0, 130, 200],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
            [210, 245, 60],
            [250, 190, 212],
            [0, 128, 128],
            [220, 190, 255],
            [170, 110, 40],
            [255, 250, 200],
            [128, 0, 0],
            [170, 255, 195],
            [128, 128, 0],
            [255, 215, 180],
        ],
        dtype=torch.float32,
    )
    / 255
)


def colorize(mask: torch.Tensor) -> torch.Tensor:
    """Class map long [B, H, W] -> RGB [B, 3, H, W] in [0, 1]; binary float [B, 1, H, W] -> grey RGB."""
    if mask.dim() == 4:
        return mask.float().clamp(0, 1).expand(-1, 3, -1, -1)
    colours = PALETTE.to(mask.device)[mask.long() % len(PALETTE)]  # [B, H, W, 3]
    return colours.permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, masks: torch.Tensor, dim: float = 0.2) -> torch.Tensor:
    """RGB [B, 3, H, W]: each image [B, C, H, W] where its boolean mask [B, H, W] is set, dimmed to
    `dim` of its brightness elsewhere (the segmented object stands out)."""
    rgb = as_rgb(images)
    keep = masks[:, None].to(rgb.dtype)
    return rgb * (keep + dim * (1 - keep))
