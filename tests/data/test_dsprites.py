import math

import pytest
import torch

from src.base.errors import ConfigError
from src.data.dsprites import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    NUM_COMBINATIONS,
    DSpritesDataModule,
    factor_values,
    factors_of,
    index_of,
    render,
)


def grid(**fixed) -> torch.Tensor:
    """Factor index rows [n, 5]: one factor swept over all its values, the others at `fixed`."""
    (swept,) = [name for name in FACTOR_NAMES if name not in fixed]
    k = FACTOR_NAMES.index(swept)
    rows = torch.tensor([[fixed.get(name, 0) for name in FACTOR_NAMES]]).repeat(FACTOR_SIZES[k], 1)
    rows[:, k] = torch.arange(FACTOR_SIZES[k])
    return rows


def test_factor_grid_is_complete_and_flat_index_is_a_bijection():
    assert NUM_COMBINATIONS == math.prod(FACTOR_SIZES) == 737_280
    flat = torch.arange(NUM_COMBINATIONS)
    factors = factors_of(flat)
    assert torch.equal(index_of(factors), flat)
    assert len(torch.unique(factors, dim=0)) == NUM_COMBINATIONS
    for k, size in enumerate(FACTOR_SIZES):
        assert factors[:, k].min() == 0 and factors[:, k].max() == size - 1
    # row-major as the original npz: shape slowest, posY fastest
    assert factors[1].tolist() == [0, 0, 0, 0, 1] and factors[32].tolist() == [0, 0, 0, 1, 0]
    assert factors[-1].tolist() == [s - 1 for s in FACTOR_SIZES]
    with pytest.raises(ValueError):
        index_of(torch.tensor([[3, 0, 0, 0, 0]]))
    with pytest.raises(ValueError):
        factors_of(torch.tensor([NUM_COMBINATIONS]))


def test_factor_values():
    values = factor_values(torch.tensor([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31], [1, 2, 10, 16, 3]]))
    assert values[0].tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert values[1, :2].tolist() == [3.0, 1.0] and values[1, 3:].tolist() == [1.0, 1.0]
    assert values[1, 2] == pytest.approx(2 * math.pi * 39 / 40)  # endpoint excluded: all 40 distinct
    assert values[2].tolist() == pytest.approx([2.0, 0.7, math.pi / 2, 16 / 31, 3 / 31])


def test_render_is_binary_deterministic_and_in_frame():
    rows = factors_of(torch.randperm(NUM_COMBINATIONS, generator=torch.Generator().manual_seed(0))[:3000])
    images = render(rows, chunk=700)
    assert images.shape == (3000, 1, 64, 64) and images.dtype == torch.uint8
    assert set(images.unique().tolist()) <= {0, 255}
    assert torch.equal(images, render(rows))
    assert torch.equal(images[123:124], render(rows[123:124]))  # a row does not depend on its batch
    assert (images.flatten(1) > 0).sum(1).min() > 15  # every image shows its shape
    # the most extreme poses: largest shapes at the corners, every orientation, touch no edge wrongly
    corners = torch.tensor([[s, 5, o, x, y] for s in range(3) for o in range(40) for x in (0, 31) for y in (0, 31)])
    full = (render(corners).flatten(1) > 0).sum(1)
    centred = corners.clone()
    centred[:, 3:] = 16 - corners[:, 3:] % 2  # the same sub-pixel phase (even positions: centres on x.5 pixels)
    assert torch.equal(full, (render(centred).flatten(1) > 0).sum(1))  # nothing cut off at the frame


def test_shapes_differ():
    for scale in range(6):
        for orientation in (0, 7, 23):
            images = render(torch.tensor([[s, scale, orientation, 11, 20] for s in range(3)])).flatten(1)
            for i, j in ((0, 1), (0, 2), (1, 2)):
                assert (images[i] != images[j]).sum() >= 4, (scale, orientation, i, j)


def centroid(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    on = (images[:, 0] > 0).float()
    ys, xs = torch.arange(64.0).view(1, 64, 1), torch.arange(64.0).view(1, 1, 64)
    mass = on.sum((1, 2))
    return (on * xs).sum((1, 2)) / mass, (on * ys).sum((1, 2)) / mass


@pytest.mark.parametrize("shape", range(3))
def test_position_moves_the_centroid(shape):
    # steps of 1.5 px, give or take the rasterisation of the two sub-pixel phases
    x, y = centroid(render(grid(shape=shape, scale=3, orientation=6, posY=9)))
    assert (x.diff() > 1.0).all() and (x.diff() < 2.0).all() and (y - y[0]).abs().max() < 0.3
    x, y = centroid(render(grid(shape=shape, scale=3, orientation=6, posX=25)))
    assert (y.diff() > 1.0).all() and (y.diff() < 2.0).all() and (x - x[0]).abs().max() < 0.3
    assert 8 <= y[0] <= 10 and 53 <= y[-1] <= 55  # centres span 8.5 .. 55 (pixel edges), as documented


@pytest.mark.parametrize("shape", range(3))
def test_scale_increases_the_area(shape):
    for orientation in range(0, 40, 3):
        for pos in (13, 14):  # both sub-pixel phases
            area = (render(grid(shape=shape, orientation=orientation, posX=pos, posY=pos)).flatten(1) > 0).sum(1)
            assert (area.diff() >= 0).all() and area[-1] >= 3 * area[0], (shape, orientation, area.tolist())
            # an axis-aligned square can keep its pixels from one scale to the next (its half-side
            # grows by 0.56 px a step); every other shape and pose grows at every step
            strict = (area.diff() > 0).sum()
            assert strict == 5 or (shape == 0 and strict >= 4), (shape, orientation, area.tolist())
    # at scale 1 the three shapes have similar areas and fit a 17-px box
    big = render(torch.tensor([[s, 5, 0, 16, 16] for s in range(3)]))[:, 0] > 0
    areas = big.flatten(1).sum(1).float()
    assert areas.max() / areas.min() < 1.3
    for image in big:
        rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
        assert rows.max() - rows.min() < 17 and cols.max() - cols.min() < 17


def test_rotation_symmetries():
    def turned(shape, steps):
        rows = torch.tensor([[shape, 4, o, 7, 22] for o in range(40)])
        turned_rows = rows.clone()
        turned_rows[:, 2] = (rows[:, 2] + steps) % 40
        return render(rows), render(turned_rows)

    a, b = turned(0, 10)  # square: 90 degrees
    assert ((a != b).flatten(1).sum(1) <= 1).all()
    a, b = turned(1, 10)  # ellipse: 90 degrees changes it ...
    assert ((a != b).flatten(1).sum(1) > 20).all()
    a, b = turned(1, 20)  # ... 180 does not
    assert ((a != b).flatten(1).sum(1) <= 1).all()
    a, b = turned(2, 20)  # the heart has no rotational symmetry
    assert ((a != b).flatten(1).sum(1) > 20).all()
    a, b = turned(0, 3)  # a square turned by 27 degrees differs
    assert ((a != b).flatten(1).sum(1) > 4).all()


def test_datamodule_subset_batches_are_their_factors_rendered():
    dm = DSpritesDataModule(subset=2000, seed=3, batch_size=256, val_size=0.1, test_size=0.1)
    dm.setup("fit")
    factors = dm.train_set.fields["factors"]
    assert len(factors) == 2000 and len(torch.unique(index_of(factors))) == 2000  # distinct combinations
    assert torch.equal(dm.train_set.images, render(factors))  # stored rows re-render bit for bit
    assert sum(len(s) for s in (dm.train_set, dm.val_set, dm.test_set)) == 2000
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == {"image", "index", "label", "factors"}
    assert torch.equal(batch["image"], render(batch["factors"]).float() / 255)
    assert torch.equal(batch["label"], batch["factors"][:, 0])
    assert torch.equal(dm.render_factors(batch["factors"]), batch["image"])
    assert dm.image_shape == (1, 64, 64)
    # the same seed picks the same combinations and split; another seed others
    again = DSpritesDataModule(subset=2000, seed=3)
    assert torch.equal(again.combinations(), dm.combinations())
    assert not torch.equal(DSpritesDataModule(subset=2000, seed=4).combinations(), dm.combinations())
    assert torch.equal(DSpritesDataModule(subset=None).combinations(), torch.arange(NUM_COMBINATIONS))


def test_render_factors_resizes_like_the_batches():
    dm = DSpritesDataModule(subset=500, image_size=32, channels=3)
    dm.setup("fit")
    batch = dm.train_set.__getitems__(list(range(8)))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert torch.equal(dm.render_factors(batch["factors"]), batch["image"])


@pytest.mark.parametrize(
    "options,key",
    [
        ({"subset": 0}, "data.subset"),
        ({"subset": NUM_COMBINATIONS + 1}, "data.subset"),
        ({"subset": 2.5}, "data.subset"),
        ({"image_size": 0}, "data.image_size"),
        ({"channels": 2}, "data.channels"),
        ({"subset": 10, "val_size": 10}, "data.val_size"),
        ({"test_size": 0}, "data.test_size"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_bad_options_name_their_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DSpritesDataModule(**options)
