"""A face's seeded parameters and CelebA-named attributes, and interventions on them."""

from __future__ import annotations

import torch

from src.data.celeba import CELEBA_ATTRIBUTES
from src.data.celebamask_hq import (
    PARTS,
)

GENERATOR_VERSION = 2  # bump whenever the rendering changes: folders are keyed by it
ATTRIBUTES = [
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Eyeglasses",
    "Gray_Hair",
    "Male",
    "Mouth_Slightly_Open",
    "No_Beard",
    "Pale_Skin",
    "Smiling",
    "Wearing_Hat",
]
assert all(a in CELEBA_ATTRIBUTES for a in ATTRIBUTES)
CLASS = {name: i for i, name in enumerate(PARTS)}
EXCLUSIVE_HAIR = ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair")  # at most one; none of them = auburn
HAIR_COLOURS = {  # RGB in [0, 1]
    "Black_Hair": (0.10, 0.08, 0.07),
    "Brown_Hair": (0.42, 0.26, 0.14),
    "Blond_Hair": (0.88, 0.76, 0.46),
    "Gray_Hair": (0.70, 0.70, 0.72),
    None: (0.62, 0.24, 0.10),  # auburn: none of the four hair attributes
}


# the uniform ranges sample_parameters draws the continuous parameters from ('bg': each channel)
RANGES = {
    "cx": (-0.12, 0.12),
    "cy": (-0.04, 0.10),
    "scale": (0.85, 1.1),
    "yaw": (-1.0, 1.0),
    "light": (-0.25, 0.25),
    "skin_shade": (0.0, 1.0),
    "bg_grad": (-0.3, 0.3),
    "bg": (0.1, 0.9),
}


def sample_parameters(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-face parameters and 0/1 attributes; deterministic in (n, seed)."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def bern(p: float | torch.Tensor) -> torch.Tensor:
        return (torch.rand(n, generator=g) < p).float()

    male = bern(0.5)
    smiling = bern(0.5)
    hair_choice = torch.multinomial(torch.tensor([0.27, 0.27, 0.2, 0.16, 0.1]), n, replacement=True, generator=g)
    p = {
        "cx": u(*RANGES["cx"]),
        "cy": u(*RANGES["cy"]),
        "scale": u(*RANGES["scale"]),
        "yaw": u(*RANGES["yaw"]),
        "light": u(*RANGES["light"]),
        "skin_shade": u(*RANGES["skin_shade"]),
        "noise_seed": torch.randint(0, 2**31 - 1, (n,), generator=g),
        "bg": torch.rand(n, 3, generator=g) * 0.8 + 0.1,
        "bg_grad": u(*RANGES["bg_grad"]),
        "cloth": torch.rand(n, 3, generator=g) * 0.8 + 0.1,
        "hat_colour": torch.rand(n, 3, generator=g) * 0.7 + 0.15,
        "frame_colour": torch.rand(n, 3, generator=g) * 0.35,
        "eye_colour": torch.rand(n, 3, generator=g) * 0.5,
        "hair_choice": hair_choice,
        "Male": male,
        "Smiling": smiling,
        "Mouth_Slightly_Open": bern(0.25 + 0.35 * smiling),
        "Eyeglasses": bern(0.3),
        "Wearing_Hat": bern(0.25),
        "Bangs": bern(0.3),
        "Pale_Skin": bern(0.25),
        "No_Beard": 1.0 - male * bern(0.5),
    }
    for k, name in enumerate(EXCLUSIVE_HAIR):
        p[name] = (hair_choice == k).float()
    return p


def intervene(attributes: torch.Tensor, names: list[str], name: str, value: float) -> torch.Tensor:
    """Set attribute `name` to `value` in [B, A] 0/1 rows (columns named by `names`) and mend the
    others so that every row stays one the generator can draw: one hair colour at most, and a
    beard only on a male face. Anything else is left as it was. Returns a new tensor."""
    out = attributes.clone()
    column = {n: i for i, n in enumerate(names)}
    if name not in column:
        raise KeyError(f"{name!r} is not one of the condition's attributes {names}")
    out[:, column[name]] = value
    if value > 0.5 and name in EXCLUSIVE_HAIR:
        for other in EXCLUSIVE_HAIR:
            if other != name and other in column:
                out[:, column[other]] = 0.0
    if "Male" in column and "No_Beard" in column:
        if name == "No_Beard" and value < 0.5:
            out[:, column["Male"]] = 1.0
        if name == "Male" and value < 0.5:
            out[:, column["No_Beard"]] = 1.0
    return out
