"""Pairs of faces that differ in one attribute only, with the pixels it changes."""

from __future__ import annotations

import torch

from src.data.synthfaces.parameters import ATTRIBUTES, EXCLUSIVE_HAIR, intervene, sample_parameters
from src.data.synthfaces.render import render


def counterfactual_pairs(name: str, n: int, size: int, seed: int, *, threshold: float = 0.01) -> dict:
    """n faces from `sample_parameters(n, seed)` rendered twice, attribute `name` off and on, all
    else equal (the same parameters and noise seed). The other attributes are mended as
    `intervene` mends them, and the hair colour follows the hair attributes: a hair colour on
    replaces the face's own; off, a face of that colour turns auburn (none of the four) and any
    other keeps its own. `No_Beard` off makes the face male, `Male` off removes the beard.

    Returns {'off', 'on': float images [n, 3, H, W] in [0, 1]; 'region': [n, H, W] bool, the
    pixels whose largest channel difference exceeds `threshold` (in [0, 1] units); 'masks_off',
    'masks_on': the uint8 class maps [n, H, W] of the two renders (classes in PARTS order);
    'attributes_off', 'attributes_on': [n, len(ATTRIBUTES)] 0/1 rows (a CVAE's conditions)}."""
    if name not in ATTRIBUTES:
        raise KeyError(f"{name!r} is not one of the generator's attributes {ATTRIBUTES}")
    p = sample_parameters(n, seed)
    rows = torch.stack([p[a] for a in ATTRIBUTES], dim=1)
    out: dict[str, torch.Tensor] = {}
    for key, value in (("off", 0.0), ("on", 1.0)):
        attributes = intervene(rows, ATTRIBUTES, name, value)
        q = dict(p)
        for j, a in enumerate(ATTRIBUTES):
            q[a] = attributes[:, j].clone()
        hair = torch.stack([q[h] for h in EXCLUSIVE_HAIR], dim=1) > 0.5  # at most one per row
        q["hair_choice"] = torch.where(
            hair.any(1), hair.long().argmax(1), torch.full_like(p["hair_choice"], len(EXCLUSIVE_HAIR))
        )
        images, labels = render(q, size)
        out[key], out[f"masks_{key}"], out[f"attributes_{key}"] = images.float() / 255, labels, attributes
    out["region"] = (out["on"] - out["off"]).abs().amax(1) > threshold
    return out
