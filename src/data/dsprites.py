"""dSprites [Matthey2017], rendered procedurally: 64x64 binary images of a square, an
ellipse or a heart over the full grid of its five generating factors, each combination once.

Factors (index ranges and values as in the original `dsprites_ndarray_*.npz`, without its
constant colour factor):

    shape        3   square, ellipse, heart (values 1, 2, 3, as the original's latents_values)
    scale        6   linspace(0.5, 1, 6)
    orientation 40   2*pi*k/40, k = 0..39 (linspace(0, 2pi, 40, endpoint=False): the original
                     spans [0, 2pi] with both ends, so its first and last orientations coincide;
                     here all 40 are distinct)
    posX        32   linspace(0, 1, 32), left to right
    posY        32   linspace(0, 1, 32), top to bottom

3 * 6 * 40 * 32 * 32 = 737,280 combinations; the flat index is row-major over that grid (shape
slowest, posY fastest), as the rows of the original npz.

Geometry, in pixels (the frame spans [0, 64], pixel i covers [i, i + 1)): the shape's centre is
at 8.5 + 46.5 * pos (8.5 .. 55, steps of 1.5 px; the original's centres span roughly 8 .. 56);
every shape fits in a circle of radius 8 px at scale 1 (16 px across: a quarter of the side), so
any shape at any pose stays inside the frame. At scale 1: the square has half-side 5.6 (area 125
px^2), the ellipse semi-axes 8 x 4.5 (113 px^2; the long axis horizontal at orientation 0), the
heart is (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 at 5.8 px per unit around its centroid (123 px^2, upright
at orientation 0). Orientation turns the shape counter-clockwise (as displayed) about its centre;
scale multiplies every length. As in the original, the square's orientation is only visible
modulo 90 degrees and the ellipse's modulo 180 (their images repeat every 10 and 20 steps; the
heart's never do). Binary 64x64 pixels also merge a few neighbouring values, as in the original:
at scale 0.5 (3-4 px radius) a 9-degree turn can move no pixel, and an axis-aligned square can
keep its pixels from one scale to the next (its half-side grows 0.56 px a step).

Rendering: each pixel is on when at least half of its 4x4 sub-samples fall inside the shape.
Centres lie on half pixels, so a shape's pixel pattern depends only on (shape, scale, orientation)
and the centre's two possible sub-pixel phases per axis: those few patches (3*6*40*2*2 = 2,880,
17x17 pixels) are rendered once per process, and an image is its patch pasted at an integer
offset. An image is therefore a pure function of its factors, identical from call to call, and
all 737,280 render in seconds. Centres on half pixels also make the pixel grid symmetric about
every centre, so a square turned by 90 degrees gives exactly the same image.
"""

from __future__ import annotations

import functools
import math

import torch

from src.base.errors import ConfigError
from src.data.in_memory import InMemoryDataModule, fit_images, seeded_splits, to_float

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_COMBINATIONS = math.prod(FACTOR_SIZES)  # 737,280
SHAPES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64

SHAPE_VALUES = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
SCALE_VALUES = torch.linspace(0.5, 1.0, 6, dtype=torch.float64)
ORIENTATION_VALUES = torch.arange(40, dtype=torch.float64) * (2 * math.pi / 40)
POSITION_VALUES = torch.linspace(0.0, 1.0, 32, dtype=torch.float64)
_VALUES = (SHAPE_VALUES, SCALE_VALUES, ORIENTATION_VALUES, POSITION_VALUES, POSITION_VALUES)
_STRIDES = tuple(math.prod(FACTOR_SIZES[k + 1 :]) for k in range(len(FACTOR_SIZES)))

# geometry (pixels, frame [0, 64]); see the module doc
CENTRE_FIRST, CENTRE_STEP = 8.5, 1.5  # centre = 8.5 + 1.5 * index = 8.5 + 46.5 * pos
RADIUS = 8.0  # every shape at scale 1 lies within this distance of its centre
SQUARE_HALF_SIDE = 5.6
ELLIPSE_AXES = (8.0, 4.5)
HEART_UNIT = 5.8  # pixels per unit of the heart curve
HEART_CENTROID_Y = 0.2935  # the curve's centroid (y up), its turning centre; farthest point 1.2932 away
SUPERSAMPLE = 4


def _check(indices: torch.Tensor) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.ndim != 2 or indices.shape[1] != len(FACTOR_SIZES) or indices.is_floating_point():
        raise ValueError(f"factor indices must be an integer array [N, 5], got {indices.dtype} {tuple(indices.shape)}")
    indices = indices.long()
    if len(indices) and ((indices < 0) | (indices >= torch.tensor(FACTOR_SIZES))).any():
        raise ValueError(f"factor indices out of range; the sizes are {FACTOR_SIZES} ({', '.join(FACTOR_NAMES)})")
    return indices


def factor_values(indices: torch.Tensor) -> torch.Tensor:
    """float64 [N, 5]: the factor values of integer factor indices [N, 5] (shape as 1, 2, 3)."""
    indices = _check(indices)
    return torch.stack([values[indices[:, k]] for k, values in enumerate(_VALUES)], dim=1)


def index_of(indices: torch.Tensor) -> torch.Tensor:
    """long [N]: the flat (row-major) index of each row of factor indices [N, 5]."""
    return (_check(indices) * torch.tensor(_STRIDES)).sum(1)


def factors_of(flat_index: torch.Tensor) -> torch.Tensor:
    """long [N, 5]: the factor indices of flat indices [N] (the inverse of `index_of`)."""
    flat = torch.as_tensor(flat_index).long().reshape(-1)
    if len(flat) and ((flat < 0) | (flat >= NUM_COMBINATIONS)).any():
        raise ValueError(f"flat indices must lie in [0, {NUM_COMBINATIONS})")
    return torch.stack([(flat // stride) % size for stride, size in zip(_STRIDES, FACTOR_SIZES)], dim=1)


def _placement() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per position index: the patch's first pixel (long [32]), its phase id (long [32]); the
    distinct phases (the centre's offset from the first pixel, float64 [P]); the patch side."""
    centre = CENTRE_FIRST + CENTRE_STEP * torch.arange(32, dtype=torch.float64)  # exact (binary fractions)
    first = torch.floor(centre - RADIUS).long()
    side = int((torch.ceil(centre + RADIUS).long() - first).max())
    first = first.clamp(0, IMAGE_SIZE - side)
    phases, phase_id = torch.unique(centre - first, return_inverse=True)
    return first, phase_id, phases, side


def _inside(shape: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether shape-frame points (a right, b up; pixels at scale 1) are inside `shape`."""
    if shape == 0:
        return torch.maximum(a.abs(), b.abs()) <= SQUARE_HALF_SIDE
    if shape == 1:
        return (a / ELLIPSE_AXES[0]) ** 2 + (b / ELLIPSE_AXES[1]) ** 2 <= 1.0
    x, y = a / HEART_UNIT, b / HEART_UNIT + HEART_CENTROID_Y
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


@functools.cache
def _patches() -> torch.Tensor:
    """uint8 0/1 [3, 6, 40, P, P, side, side]: the pixel patch of every (shape, scale,
    orientation, x phase, y phase), by 4x4 super-sampling (a pixel is on at coverage >= 1/2)."""
    _, _, phases, side = _placement()
    n, s = side * SUPERSAMPLE, SUPERSAMPLE
    grid = (torch.arange(n, dtype=torch.float64) + 0.5) / s  # sub-sample centres, patch pixels
    dx = grid.view(1, 1, 1, n) - phases.view(-1, 1, 1, 1)  # [Px, 1, 1, n]: right of the centre
    dy = phases.view(1, -1, 1, 1) - grid.view(1, 1, n, 1)  # [1, Py, n, 1]: above the centre
    out = torch.empty(3, 6, 40, len(phases), len(phases), side, side, dtype=torch.uint8)
    for o, theta in enumerate(ORIENTATION_VALUES.tolist()):
        c, sn = math.cos(theta), math.sin(theta)
        a, b = c * dx + sn * dy, -sn * dx + c * dy  # turn the points by -theta: the shape by +theta
        for k, scale in enumerate(SCALE_VALUES.tolist()):
            for shape in range(3):
                hit = _inside(shape, a / scale, b / scale)  # [Px, Py, n (y), n (x)]
                cover = hit.double().view(len(phases), len(phases), side, s, side, s).mean((3, 5))
                out[shape, k, o] = (cover >= 0.5).to(torch.uint8)
    return out


def render(indices: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """uint8 images [N, 1, 64, 64] (0 or 255) of factor indices [N, 5]; a pure function of the
    factors (see the module doc), rendered `chunk` rows at a time."""
    indices = _check(indices)
    first, phase_id, _, side = _placement()
    patches = _patches()
    out = torch.zeros(len(indices), IMAGE_SIZE * IMAGE_SIZE, dtype=torch.uint8)
    span = torch.arange(side)
    for start in range(0, len(indices), chunk):
        f = indices[start : start + chunk]
        x, y = f[:, 3], f[:, 4]
        patch = patches[f[:, 0], f[:, 1], f[:, 2], phase_id[x], phase_id[y]]  # [n, side(y), side(x)]
        rows = (first[y].view(-1, 1) + span) * IMAGE_SIZE  # [n, side]
        cols = first[x].view(-1, 1) + span
        where = (rows.view(-1, side, 1) + cols.view(-1, 1, side)).view(len(f), -1)
        out[start : start + chunk].scatter_(1, where, patch.reshape(len(f), -1) * 255)
    return out.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


class DSpritesDataModule(InMemoryDataModule):
    """dSprites rendered in memory (see the module doc): all 737,280 combinations (`subset`
    null; 3 GB of uint8) or a seeded random `subset` of distinct ones, split train/val/test by
    `seed`. Batches carry 'image' (0/1 floats), 'label' (the shape: 0 square, 1 ellipse, 2 heart)
    and 'factors' (long [B, 5] factor indices). `render_factors` renders any factor indices as
    the batches show them, for samplers that fix factors (the disentanglement scores)."""

    name = "dSprites"
    batch_fields = ("image", "label", "factors")
    num_label_classes = 3
    class_names = list(SHAPES)
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, subset: int | None = 50000, **kwargs) -> None:
        kwargs.setdefault("image_size", IMAGE_SIZE)
        kwargs.setdefault("channels", 1)
        super().__init__(**kwargs)
        if subset is not None and (
            isinstance(subset, bool) or not isinstance(subset, int) or not 0 < subset <= NUM_COMBINATIONS
        ):
            raise ConfigError(
                "data.subset", subset, f"use null (all {NUM_COMBINATIONS}) or a count in 1..{NUM_COMBINATIONS}"
            )
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ConfigError("data.image_size", size, "must be a positive integer (64: as rendered)")
        if self.channels not in (None, 1, 3):
            raise ConfigError("data.channels", self.channels, "use 1 (as rendered) or 3 (grey repeated)")
        n = subset or NUM_COMBINATIONS
        for key, value in (("data.val_size", self.val_size), ("data.test_size", self.test_size)):
            count = round(value * n) if isinstance(value, float) and value < 1 else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < count < n:
                raise ConfigError(key, value, f"a count or fraction that leaves every split non-empty ({n} samples)")
        self.subset = subset

    def combinations(self) -> torch.Tensor:
        """long [N]: the flat indices of the combinations this module holds, ascending."""
        if self.subset is None:
            return torch.arange(NUM_COMBINATIONS)
        perm = torch.randperm(NUM_COMBINATIONS, generator=torch.Generator().manual_seed(self.seed))
        return perm[: self.subset].sort().values

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        factors = factors_of(self.combinations())
        tensors = {"image": render(factors), "factors": factors, "label": factors[:, 0].clone()}
        return tensors, seeded_splits(len(factors), self.val_size, self.test_size, self.seed)

    def render_factors(self, indices: torch.Tensor) -> torch.Tensor:
        """float [N, C, S, S] in [0, 1]: factor indices [N, 5] rendered as batches show them
        (resized to image_size and converted to `channels` like the stored images)."""
        images = fit_images(render(torch.as_tensor(indices)), self.image_size, self.channels)
        return to_float(images)
