"""The generating factors of a face, for disentanglement scores: the table, its bins, and faces
rendered from chosen factor values."""

from __future__ import annotations

import torch

from src.data.synthfaces.parameters import ATTRIBUTES, EXCLUSIVE_HAIR, HAIR_COLOURS, RANGES, sample_parameters
from src.data.synthfaces.render import render

# Generating factors, for disentanglement scores: the continuous parameters in 8 equal-width bins
# over their sampling ranges (RANGES; the background colour as its three channels), the hair
# colour as one categorical (hair_choice: black, brown, blond, grey, auburn; the four hair
# attributes are functions of it, so they are not factors of their own), and the other binary
# attributes. No_Beard only acts on male faces: a female face never has a beard (intervene's rule),
# so on female faces the No_Beard factor changes nothing; likewise a pale face's colour ignores
# skin_shade. The rest (clothes, hat, frame and eye colours, pixel noise) is nuisance variation,
# not a factor.
CONTINUOUS_BINS = 8
_CONTINUOUS = ("cx", "cy", "scale", "yaw", "light", "skin_shade", "bg_grad")
BINARY_FACTORS = tuple(a for a in ATTRIBUTES if a not in EXCLUSIVE_HAIR)
FACTOR_NAMES = (*_CONTINUOUS, "bg_r", "bg_g", "bg_b", "hair_choice", *BINARY_FACTORS)
FACTOR_RANGES = {**{name: RANGES[name] for name in _CONTINUOUS}, **{f"bg_{c}": RANGES["bg"] for c in "rgb"}}
FACTOR_SIZES = tuple(
    CONTINUOUS_BINS if name in FACTOR_RANGES else len(HAIR_COLOURS) if name == "hair_choice" else 2
    for name in FACTOR_NAMES
)

_SPAN = torch.tensor([[*FACTOR_RANGES.get(name, (0.0, 1.0))] for name in FACTOR_NAMES], dtype=torch.float64)
_IS_CONTINUOUS = torch.tensor([name in FACTOR_RANGES for name in FACTOR_NAMES])


def factor_table(params: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """(FACTOR_NAMES, float64 [N, F]): the factor values of sample_parameters' rows (continuous
    parameters as drawn, hair_choice as its category 0..4, binary attributes as 0/1)."""
    columns = []
    for name in FACTOR_NAMES:
        if name in ("bg_r", "bg_g", "bg_b"):
            columns.append(params["bg"][:, "rgb".index(name[-1])])
        else:
            columns.append(params[name])
    return list(FACTOR_NAMES), torch.stack([c.double() for c in columns], dim=1)


def discretize_factors(values: torch.Tensor) -> torch.Tensor:
    """long [N, F] factor indices of factor values [N, F] (columns in FACTOR_NAMES order):
    continuous ones by their bin (CONTINUOUS_BINS equal-width bins over FACTOR_RANGES), the others
    as they are."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim != 2 or values.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"factor values must be [N, {len(FACTOR_NAMES)}], got {tuple(values.shape)}")
    lo, hi = _SPAN[:, 0], _SPAN[:, 1]
    binned = ((values - lo) / (hi - lo) * CONTINUOUS_BINS).floor().clamp(0, CONTINUOUS_BINS - 1)
    return torch.where(_IS_CONTINUOUS, binned, values.round()).long()


def factor_values(indices: torch.Tensor) -> torch.Tensor:
    """float64 [N, F]: the value each factor index stands for (a continuous bin's centre)."""
    indices = _check_factors(indices)
    lo, hi = _SPAN[:, 0], _SPAN[:, 1]
    centres = lo + (indices + 0.5) * (hi - lo) / CONTINUOUS_BINS
    return torch.where(_IS_CONTINUOUS, centres, indices.double())


def _check_factors(indices: torch.Tensor) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.ndim != 2 or indices.shape[1] != len(FACTOR_NAMES) or indices.is_floating_point():
        raise ValueError(
            f"factor indices must be integers [N, {len(FACTOR_NAMES)}], got {indices.dtype} {tuple(indices.shape)}"
        )
    indices = indices.long()
    if len(indices) and ((indices < 0) | (indices >= torch.tensor(FACTOR_SIZES))).any():
        raise ValueError(f"factor indices out of range; the sizes are {dict(zip(FACTOR_NAMES, FACTOR_SIZES))}")
    return indices


def factor_parameters(indices: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """`render`'s parameters for factor indices [N, F]: sample_parameters(N, seed) with every
    factor set to its value (a bin's centre), the hair attributes derived from hair_choice and
    No_Beard set on female faces (no beard without Male, as `intervene` mends it). The nuisance
    parameters (and the pixel noise) stay those of sample_parameters(N, seed): row i keeps them
    whatever its factors are."""
    indices = _check_factors(indices)
    values = factor_values(indices).float()
    column = {name: k for k, name in enumerate(FACTOR_NAMES)}
    p = dict(sample_parameters(len(indices), seed))
    for name in (*_CONTINUOUS, *BINARY_FACTORS):
        p[name] = values[:, column[name]].clone()
    p["bg"] = values[:, [column[f"bg_{c}"] for c in "rgb"]].clone()
    p["hair_choice"] = indices[:, column["hair_choice"]].clone()
    for k, name in enumerate(EXCLUSIVE_HAIR):
        p[name] = (p["hair_choice"] == k).float()
    p["No_Beard"] = torch.where(p["Male"] > 0.5, p["No_Beard"], torch.ones_like(p["No_Beard"]))
    return p


def render_factors(indices: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """float images [N, 3, size, size] in [0, 1] of factor indices [N, F] (see
    `factor_parameters`); deterministic in (indices, seed)."""
    images, _ = render(factor_parameters(indices, seed), size)
    return images.float() / 255
