"""Weakly supervised segmentation from a classifier's saliency ([Simonyan2014],
section 3.1): a network trained only to classify says where the object is.

The paper takes the class saliency map (max over colour channels of |d score / d x|), estimates the
foreground colour model from the pixels above the map's 95 % quantile and the background model from
those below its 30 % quantile, and lets GrabCut [Rother2004] label the rest. Here:

    grabcut_masks     that, with OpenCV's GrabCut: seeds as definite foreground / background, every
                      other pixel 'probably background', `iterations` rounds of colour-model + graph cut
    threshold_masks   the baseline without a segmenter: the top `share` of the map's pixels
    saliency_segmentation(model, inputs, target, ...)  the whole method in the call shape of the
                      explanation methods: saliency of each target column, then one of the two

OpenCV (opencv-python-headless) is the GrabCut the paper used, maintained, and fast on small
images; scikit-image has no GrabCut and a hand-written graph cut would be a
second implementation of the same algorithm. It runs on the CPU, one image at a time; the rest
is torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from src.xai.core import Explanation

SEGMENTERS = ("grabcut", "threshold")


@dataclass
class SaliencySegmentation(Explanation):
    """masks [B, K, H, W] bool, the segmented object of each target column; `maps` [B, K, H, W] the
    saliency maps they were seeded from."""

    maps: torch.Tensor
    masks: torch.Tensor


def threshold_masks(saliency: torch.Tensor, share: float = 0.05) -> torch.Tensor:
    """[..., H, W] bool: each map's `share` of pixels with the highest values (ties at the cut
    included)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    flat = saliency.flatten(-2)
    k = max(1, round(share * flat.shape[-1]))
    cut = flat.topk(k, dim=-1).values[..., -1:]
    return (flat >= cut).view_as(saliency)


def grabcut_masks(
    images: torch.Tensor, saliency: torch.Tensor, foreground: float = 0.95, background: float = 0.3, iterations: int = 5
) -> torch.Tensor:
    """[B, H, W] bool: GrabCut of each image [B, C, H, W] (values in [0, 1]; one channel is repeated
    to three) seeded by its saliency map [B, H, W]: pixels above the map's `foreground` quantile
    are foreground, those below its `background` quantile background (ties at either quantile
    included: a map that is 0 on most pixels still seeds both), the rest 'probably background' for
    GrabCut to decide ([Simonyan2014]'s 95 % / 30 %). A map with no background seed left (all
    pixels tied) gets `threshold_masks` at the foreground share instead."""
    import cv2

    if not 0 <= background < foreground <= 1:
        raise ValueError(f"need 0 <= background < foreground <= 1 quantiles, got {background}, {foreground}")
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    pixels = (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    maps = saliency.detach().float().cpu()
    out = torch.zeros(maps.shape, dtype=torch.bool)
    for i in range(len(maps)):
        flat = maps[i].flatten()
        hi, lo = torch.quantile(flat, foreground), torch.quantile(flat, background)
        mask = np.full(maps[i].shape, cv2.GC_PR_BGD, np.uint8)
        mask[(maps[i] <= lo).numpy()] = cv2.GC_BGD
        mask[(maps[i] >= hi).numpy()] = cv2.GC_FGD  # last: a flat map is foreground-seeded, not empty
        if not (mask == cv2.GC_BGD).any():  # a flat map: nothing to tell the background model apart
            out[i] = threshold_masks(maps[i], 1 - foreground)
            continue
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        image = np.ascontiguousarray(pixels[i][..., ::-1])  # OpenCV's BGR order
        cv2.setRNGSeed(0)  # GrabCut's k-means start draws from OpenCV's global RNG: the same mask every call
        cv2.grabCut(image, mask, None, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_MASK)
        out[i] = torch.from_numpy((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD))
    return out.to(saliency.device)


def mask_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[...] intersection over union of boolean masks [..., H, W]; 1 where both are empty."""
    inter = (pred & truth).flatten(-2).sum(-1).double()
    union = (pred | truth).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def saliency_segmentation(
    model,
    inputs: torch.Tensor,
    target,
    *,
    segmenter: str = "grabcut",
    forward=None,
    foreground: float = 0.95,
    background: float = 0.3,
    share: float = 0.05,
    iterations: int = 5,
) -> SaliencySegmentation:
    """The object each target column (a class or attribute logit) is about, from the classifier's
    saliency map alone: `segmenter` "grabcut" (seeded at the `foreground` / `background` quantiles)
    or "threshold" (the top `share` of pixels). Inputs in [0, 1] for GrabCut's colour models."""
    from src.xai.methods.attribution import saliency

    if segmenter not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {segmenter!r}; choose one of {SEGMENTERS}")
    maps = saliency(model, inputs, target, forward=forward).maps  # max over channels of |gradient|
    if segmenter == "threshold":
        masks = threshold_masks(maps, share)
    else:
        b, k = maps.shape[:2]
        images = inputs.repeat_interleave(k, 0)
        masks = grabcut_masks(images, maps.flatten(0, 1), foreground, background, iterations).view(
            b, k, *maps.shape[2:]
        )
    return SaliencySegmentation(maps=maps, masks=masks)
