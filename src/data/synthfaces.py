"""Synthetic faces with ground truth, written once into the CelebAMask-HQ layout.

Each face is drawn from seeded parameters: position, scale, yaw, skin tone, hair style and
colour, background and clothes colours, lighting, plus CelebA-named binary attributes that really
change the pixels (Smiling bends the mouth, Eyeglasses draws frames, Wearing_Hat a hat, ...).
Every pixel gets the CelebAMask-HQ class of the topmost part painted there, so the part masks
are exact. The dataset exists so face pipelines run out of the box, and so explanations can be
scored against known regions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.cache import parallel_map, remove_abandoned
from src.data.celeba import CELEBA_ATTRIBUTES
from src.data.celebamask_hq import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    IMAGES_PER_FOLDER,
    MAPPING_FILE,
    MASK_DIR,
    PARTS,
    CelebAMaskHQDataModule,
)
from src.data.in_memory import fit_images, to_float
from src.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump whenever the rendering changes: folders are keyed by it
ATTRIBUTES = [
    "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Male",
    "Mouth_Slightly_Open", "No_Beard", "Pale_Skin", "Smiling", "Wearing_Hat",
]  # fmt: skip
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
    "cx": (-0.12, 0.12), "cy": (-0.04, 0.10), "scale": (0.85, 1.1), "yaw": (-1.0, 1.0), "light": (-0.25, 0.25),
    "skin_shade": (0.0, 1.0), "bg_grad": (-0.3, 0.3), "bg": (0.1, 0.9),
}  # fmt: skip


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
        "cx": u(*RANGES["cx"]), "cy": u(*RANGES["cy"]), "scale": u(*RANGES["scale"]), "yaw": u(*RANGES["yaw"]),
        "light": u(*RANGES["light"]), "skin_shade": u(*RANGES["skin_shade"]),
        "noise_seed": torch.randint(0, 2**31 - 1, (n,), generator=g),
        "bg": torch.rand(n, 3, generator=g) * 0.8 + 0.1, "bg_grad": u(*RANGES["bg_grad"]),
        "cloth": torch.rand(n, 3, generator=g) * 0.8 + 0.1, "hat_colour": torch.rand(n, 3, generator=g) * 0.7 + 0.15,
        "frame_colour": torch.rand(n, 3, generator=g) * 0.35, "eye_colour": torch.rand(n, 3, generator=g) * 0.5,
        "hair_choice": hair_choice,
        "Male": male,
        "Smiling": smiling,
        "Mouth_Slightly_Open": bern(0.25 + 0.35 * smiling),
        "Eyeglasses": bern(0.3),
        "Wearing_Hat": bern(0.25),
        "Bangs": bern(0.3),
        "Pale_Skin": bern(0.25),
        "No_Beard": 1.0 - male * bern(0.5),
    }  # fmt: skip
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
        raise ValueError(f"factor indices must be integers [N, {len(FACTOR_NAMES)}], got "
                         f"{indices.dtype} {tuple(indices.shape)}")  # fmt: skip
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


def _ellipse(u, v, cx, cy, a, b):
    return ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 <= 1.0


# paint ids: what a pixel shows; each maps to a CelebAMask-HQ class and a colour rule
PAINTS = [
    ("background", "background"), ("cloth", "cloth"), ("neck", "neck"), ("hair_long", "hair"),
    ("r_ear", "r_ear"), ("l_ear", "l_ear"), ("hair_cap", "hair"), ("skin", "skin"), ("beard", "skin"),
    ("r_eye", "r_eye"), ("r_iris", "r_eye"), ("r_brow", "r_brow"), ("l_eye", "l_eye"), ("l_iris", "l_eye"),
    ("l_brow", "l_brow"), ("nose", "nose"), ("u_lip", "u_lip"), ("mouth", "mouth"), ("l_lip", "l_lip"),
    ("bangs", "hair"), ("eye_g", "eye_g"), ("hat", "hat"),
]  # fmt: skip
PAINT = {name: i for i, (name, _) in enumerate(PAINTS)}
PAINT_CLASS = torch.tensor([CLASS[cls] for _, cls in PAINTS])
SKIN_PAINTS = torch.tensor([PAINT[k] for k in ("neck", "r_ear", "l_ear", "skin", "beard", "nose")])
HAIR_PAINTS = torch.tensor([PAINT[k] for k in ("hair_long", "hair_cap", "bangs", "beard")])


def render(p: dict[str, torch.Tensor], size: int, supersample: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [B, 3, S, S], uint8 class maps [B, S, S]) for a batch of parameters.

    Parts are painted at `supersample` x resolution. Colours are averaged down (antialiased
    edges); an output pixel's class is the topmost part painted anywhere in its block (paint ids
    are in back-to-front order, so that is a max-pool), so every mask covers all the pixels its
    part touches, thin eyeglass frames included."""
    ids, u, v = _paint_ids(p, size * supersample)
    images = _colour(p, ids, u, v)
    if supersample > 1:
        images = torch.nn.functional.avg_pool2d(images, supersample)
        ids = torch.nn.functional.max_pool2d(ids.unsqueeze(1).float(), supersample).squeeze(1).long()
    labels = PAINT_CLASS[ids]
    noise = torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(s)))
                         for s in p["noise_seed"]])  # fmt: skip
    images = (images + 0.02 * noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels.to(torch.uint8)


def _colour(p: dict[str, torch.Tensor], ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: a per-face palette looked up by paint id, then lighting on skin,
    a texture on hair and a gradient on the background."""
    n = len(ids)
    pale = p["Pale_Skin"].view(n, 1)
    shade = p["skin_shade"].view(n, 1)
    dark, mid, light = (
        torch.tensor([0.45, 0.30, 0.22]),
        torch.tensor([0.80, 0.60, 0.46]),
        torch.tensor([0.97, 0.88, 0.82]),
    )
    skin = pale * light + (1 - pale) * (shade * mid + (1 - shade) * dark)
    hair_table = torch.tensor([HAIR_COLOURS[k] for k in ["Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", None]])
    hair = hair_table[p["hair_choice"]]

    def const(rgb):
        return torch.tensor(rgb).expand(n, 3)

    colours = {
        "background": p["bg"], "cloth": p["cloth"], "neck": skin * 0.85, "hair_long": hair, "r_ear": skin * 0.92,
        "l_ear": skin * 0.92, "hair_cap": hair, "skin": skin, "beard": 0.55 * hair + 0.45 * skin,
        "r_eye": const([0.95, 0.95, 0.95]), "r_iris": p["eye_colour"], "r_brow": hair * 0.7,
        "l_eye": const([0.95, 0.95, 0.95]), "l_iris": p["eye_colour"], "l_brow": hair * 0.7, "nose": skin * 0.82,
        "u_lip": const([0.70, 0.25, 0.28]), "mouth": const([0.20, 0.05, 0.06]), "l_lip": const([0.75, 0.30, 0.32]),
        "bangs": hair, "eye_g": p["frame_colour"], "hat": p["hat_colour"],
    }  # fmt: skip
    palette = torch.stack([colours[name] for name, _ in PAINTS], dim=1)  # [B, P, 3]
    h, w = ids.shape[1:]
    flat = torch.gather(palette, 1, ids.view(n, h * w, 1).expand(n, h * w, 3))  # [B, HW, 3]
    image = flat.view(n, h, w, 3).permute(0, 3, 1, 2)
    factor = torch.ones(n, h, w)
    u, v = u.expand(1, h, w), v.expand(1, h, w)
    is_skin = torch.isin(ids, SKIN_PAINTS)
    lighting = 1 + p["light"].view(n, 1, 1) * (u - p["cx"].view(n, 1, 1)) / 0.4
    factor = torch.where(is_skin, lighting, factor)
    texture = 1 + 0.08 * torch.sin(40 * (u + 0.3 * v))
    factor = torch.where(torch.isin(ids, HAIR_PAINTS), factor * texture, factor)
    factor = torch.where(ids == PAINT["background"], 1 + p["bg_grad"].view(n, 1, 1) * v, factor)
    return (image * factor.unsqueeze(1)).clamp(0, 1)


def _paint_ids(p: dict[str, torch.Tensor], s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paint-id map [B, S, S] (back to front; later parts cover earlier ones) and the grids
    u [1, 1, S], v [1, S, 1]."""
    n = len(p["cx"])
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    # u varies along width, v along height; kept 1-D and broadcast, so a term in u alone costs
    # B*S, not B*S*S (the ellipse tests are separable)
    u = coords.view(1, 1, s)
    v = coords.view(1, s, 1)

    def col(t):  # [B] -> [B, 1, 1]
        return t.view(n, 1, 1)

    cx, cy, sc, yaw = col(p["cx"]), col(p["cy"]), col(p["scale"]), col(p["yaw"])
    male, smiling, open_mouth = col(p["Male"]), col(p["Smiling"]), col(p["Mouth_Slightly_Open"])
    a = 0.34 * sc * (1 + 0.06 * male)  # face half-width
    b = 0.44 * sc  # face half-height
    shift = 0.14 * a * yaw  # features move sideways with the head's turn
    ids = torch.zeros(n, s, s, dtype=torch.long)

    def paint(mask: torch.Tensor, name: str) -> None:
        ids.masked_fill_(mask, PAINT[name])

    # clothes, neck, long hair (not male) falling behind the face to the shoulders
    shoulders = _ellipse(u, v, cx, cy + b + 0.55, 0.95 * sc, 0.42 * sc)
    paint(shoulders, "cloth")
    neck = ((u - cx).abs() <= 0.42 * a * (1 + 0.15 * male)) & (v >= cy + 0.4 * b) & (v <= cy + b + 0.3)
    paint(neck & (~shoulders | (v < cy + b + 0.2)), "neck")
    long_hair = (1 - male).bool() & (
        _ellipse(u, v, cx, cy - 0.1 * b, 1.3 * a, 1.05 * b)
        | (((u - cx).abs() <= 1.25 * a) & (v >= cy - 0.1 * b) & (v <= cy + 1.25 * b))
    )
    paint(long_hair, "hair_long")
    # ears at the sides, the far one narrower when the head turns
    for side, part in ((-1, "r_ear"), (1, "l_ear")):
        ex = cx + side * (a * 0.97) + shift * 0.5
        paint(_ellipse(u, v, ex, cy + 0.02, 0.09 * sc * (1 - 0.35 * side * yaw), 0.17 * sc) & ~long_hair, part)
    # hair cap around the top of the head, then the face over it
    paint(_ellipse(u, v, cx, cy - 0.14 * b, 1.1 * a, 1.02 * b) & (v < cy - 0.05 * b), "hair_cap")
    face = _ellipse(u, v, cx, cy, a, b)
    paint(face, "skin")
    # beard: darker lower face, labelled skin as in CelebAMask-HQ
    paint(face & (v > cy + 0.25 * b) & (1 - col(p["No_Beard"])).bool(), "beard")
    # eyes (white, iris), brows, nose
    eye_y = cy - 0.1 * b
    eye_dx = 0.38 * a
    eye_x = {}
    for side, prefix in ((-1, "r"), (1, "l")):
        ex = cx + shift + side * eye_dx * (1 - 0.12 * side * yaw)
        eye_x[side] = ex
        eye_mask = _ellipse(u, v, ex, eye_y, 0.14 * a, 0.065 * b)
        paint(eye_mask, f"{prefix}_eye")
        paint(eye_mask & _ellipse(u, v, ex + 0.03 * a * yaw, eye_y, 0.06 * a, 0.065 * b), f"{prefix}_iris")
        paint(_ellipse(u, v, ex, eye_y - 0.17 * b, 0.17 * a, 0.035 * b), f"{prefix}_brow")
    nose_top, nose_bottom = eye_y + 0.08 * b, cy + 0.28 * b
    nose_x = cx + 1.3 * shift
    paint((v >= nose_top) & (v <= nose_bottom) & ((u - nose_x).abs() <= 0.02 + 0.32 * (v - nose_top)), "nose")
    # mouth: smiling bends the corners up and widens it; an open mouth shows its inside
    mx, my = cx + 1.1 * shift, cy + 0.55 * b
    w = 0.34 * a * (1 + 0.2 * smiling)
    x = (u - mx) / w
    inside = x.abs() <= 1
    centre = my - (0.10 * smiling - 0.02) * b * (x**2)  # y grows downwards: corners up when smiling
    gap = 0.07 * b * open_mouth
    lip = 0.06 * b * (1 - 0.5 * x**2)
    paint(inside & (v >= centre - gap / 2 - lip) & (v < centre - gap / 2), "u_lip")
    paint(inside & (v >= centre - gap / 2) & (v < centre + gap / 2), "mouth")
    paint(inside & (v >= centre + gap / 2) & (v < centre + gap / 2 + 1.2 * lip), "l_lip")
    # bangs: hair over the forehead, above the brows
    paint(face & (v < eye_y - 0.26 * b) & col(p["Bangs"]).bool(), "bangs")
    # eyeglasses: two rings and a bridge
    frames = ((u - (cx + shift)).abs() <= eye_dx - 0.2 * a) & ((v - eye_y).abs() <= 0.02 * b)
    for ex in eye_x.values():
        frames |= _ellipse(u, v, ex, eye_y, 0.25 * a, 0.15 * b) & ~_ellipse(u, v, ex, eye_y, 0.19 * a, 0.105 * b)
    paint(frames & col(p["Eyeglasses"]).bool(), "eye_g")
    # hat: a crown over the top of the head and a brim
    brim_y = cy - 0.62 * b
    crown = _ellipse(u, v, cx, brim_y, 1.05 * a, 0.55 * b) & (v <= brim_y)
    brim = ((u - cx).abs() <= 1.45 * a) & (v > brim_y - 0.05 * b) & (v <= brim_y + 0.06 * b)
    paint((crown | brim) & col(p["Wearing_Hat"]).bool(), "hat")
    return ids, u, v


def dataset_folder(data_dir: str | Path, size: int, count: int, seed: int) -> Path:
    return Path(data_dir).expanduser() / f"synthfaces-v{GENERATOR_VERSION}-{size}px-{count}-seed{seed}"


def grey_png(array: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a uint8 [H, W] array (no filtering, zlib level 1): a few
    microseconds where PIL's per-file overhead costs half a millisecond, for ~250k masks."""
    h, w = array.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.zeros((h, w + 1), dtype=np.uint8)  # each row starts with filter type 0
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


class _ChunkWriter:
    """Renders faces [start, stop) and writes their image and mask files (runs in a worker)."""

    def __init__(self, folder: Path, params: dict[str, torch.Tensor], size: int) -> None:
        self.folder, self.params, self.size = folder, params, size

    def __call__(self, bounds: tuple[int, int]) -> None:
        start, stop = bounds
        torch.set_num_threads(1)
        batch = {k: val[start:stop] for k, val in self.params.items()}
        images, labels = render(batch, self.size)
        for j in range(len(images)):
            i = start + j
            Image.fromarray(images[j].permute(1, 2, 0).numpy()).save(
                self.folder / IMAGE_DIR / f"{i}.jpg",
                quality=95,
                subsampling=0,  # 4:4:4: no chroma bleeding
            )
            mask_dir = self.folder / MASK_DIR / str(i // IMAGES_PER_FOLDER)
            for class_id in torch.unique(labels[j]).tolist():
                if class_id:
                    mask = (labels[j] == class_id).numpy().astype(np.uint8) * 255
                    (mask_dir / f"{i:05d}_{PARTS[class_id]}.png").write_bytes(grey_png(mask))


def write_dataset(folder: Path, size: int, count: int, seed: int, chunk: int = 50, workers: int | None = None) -> Path:
    """Render `count` faces into `folder` in the CelebAMask-HQ layout (plus CelebA-layout
    attribute/partition files); atomic: built in a temporary folder, then renamed."""
    if (folder / "synthfaces.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGE_DIR).mkdir(parents=True)
    for k in range((count - 1) // IMAGES_PER_FOLDER + 1):
        (tmp / MASK_DIR / str(k)).mkdir(parents=True)
    params = sample_parameters(count, seed)
    attributes = torch.stack([params[name] for name in ATTRIBUTES], dim=1)
    bounds = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    writer = _ChunkWriter(tmp, params, size)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    try:
        threads = torch.get_num_threads()
        try:
            for _ in parallel_map(writer, bounds, workers if len(bounds) > 1 else 1, ordered=False, chunksize=1):
                pass
        finally:
            torch.set_num_threads(threads)
        _write_tables(tmp, attributes, seed)
        (tmp / "synthfaces.json").write_text(json.dumps(
            {"version": GENERATOR_VERSION, "size": size, "count": count, "seed": seed, "attributes": ATTRIBUTES,
             "parts": PARTS}, indent=1))  # fmt: skip
        if (folder / "synthfaces.json").is_file():
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_tables(folder: Path, attributes: torch.Tensor, seed: int) -> None:
    """Attribute files in the CelebA text format (HQ and CelebA names), a seeded 80/10/10
    CelebA-style partition, the HQ-to-CelebA mapping, and img_align_celeba -> CelebA-HQ-img."""
    n = len(attributes)
    rows = [f"{i}.jpg " + " ".join("1" if x else "-1" for x in attributes[i].tolist()) for i in range(n)]
    table = f"{n}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n"
    (folder / ATTRIBUTE_FILE).write_text(table)
    (folder / "list_attr_celeba.txt").write_text(table)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    code = torch.zeros(n, dtype=torch.long)
    code[perm[: math.ceil(0.1 * n)]] = 1
    code[perm[math.ceil(0.1 * n) : math.ceil(0.2 * n)]] = 2
    (folder / "list_eval_partition.txt").write_text("".join(f"{i}.jpg {code[i].item()}\n" for i in range(n)))
    (folder / MAPPING_FILE).write_text("idx orig_idx orig_file\n" + "".join(f"{i} {i} {i}.jpg\n" for i in range(n)))
    (folder / "img_align_celeba").symlink_to(IMAGE_DIR)


class SynthFacesDataModule(CelebAMaskHQDataModule):
    """Synthetic faces (see module doc), generated once under `data_dir` and then read by the
    CelebAMask-HQ reader; `root` is derived from (size, count, seed) unless given. Batches also
    carry 'factors': long [B, F] generating-factor indices (FACTOR_NAMES / FACTOR_SIZES, derived
    from the generator's parameters, not stored), and `render_factors` draws faces of any factors."""

    name = "SynthFaces"
    all_attributes = tuple(ATTRIBUTES)
    batch_fields = ("image", "mask", "attributes", "factors")
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, data_dir: str = "data", count: int = 20000, generate_size: int | None = None,
                 generator_seed: int = 0, root: str | None = None, **kwargs) -> None:  # fmt: skip
        if count < 10:
            raise ConfigError("data.count", count, "generate at least 10 faces")
        self.generate_size = generate_size or kwargs.get("image_size", 64)
        self.count = count
        self.generator_seed = generator_seed
        folder = Path(root) if root else dataset_folder(data_dir, self.generate_size, count, generator_seed)
        if kwargs.get("mask_size") is None:
            kwargs["mask_size"] = self.generate_size
        super().__init__(root=str(folder), **kwargs)

    def generate(self) -> Path:
        folder = Path(self.root_arg)
        if not (folder / "synthfaces.json").is_file():
            log.info("SynthFaces: rendering %d faces at %dpx into %s (once)", self.count, self.generate_size, folder)
            write_dataset(folder, self.generate_size, self.count, self.generator_seed, workers=self.build_workers)
        return folder

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()

    def index(self) -> tuple[list[int], list[str], torch.Tensor | None]:
        ids, names, values = super().index()
        self.ids = ids  # the reader's rows: file numbers, which are sample_parameters' rows
        return ids, names, values

    def load(self):
        folder = self.generate()
        tensors, splits = super().load()
        meta = json.loads((folder / "synthfaces.json").read_text())
        ids = torch.tensor(self.ids)
        if ids.min() < 0 or ids.max() >= meta["count"]:
            raise DataError(f"{folder}: image numbers outside 0..{meta['count'] - 1} (synthfaces.json's count)")
        params = {k: v[ids] for k, v in sample_parameters(meta["count"], meta["seed"]).items()}
        for j, name in enumerate(self.attribute_names):  # the files and the parameters must agree
            if name in params and not torch.equal(tensors["attributes"][:, j], params[name].float()):
                raise DataError(
                    f"{folder}: attribute {name} does not match the generator's parameters "
                    f"(count {meta['count']}, seed {meta['seed']}); delete the folder to regenerate"
                )
        tensors["factors"] = discretize_factors(factor_table(params)[1])
        return tensors, splits

    def render_factors(self, indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """float [N, C, S, S] in [0, 1]: factor indices [N, F] rendered at the generation size and
        resized like the stored images (which are also JPEG-compressed; these are not)."""
        images, _ = render(factor_parameters(indices, seed), self.generate_size)
        return to_float(fit_images(images, self.image_size, self.channels))


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
