import pytest
import torch

from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.data.synthfaces.factors import (
    CONTINUOUS_BINS,
    FACTOR_NAMES,
    FACTOR_RANGES,
    FACTOR_SIZES,
    discretize_factors,
    factor_parameters,
    factor_table,
    factor_values,
    render_factors,
)
from src.data.synthfaces.parameters import ATTRIBUTES, EXCLUSIVE_HAIR, RANGES, sample_parameters

COLUMN = {name: k for k, name in enumerate(FACTOR_NAMES)}
NUISANCE = ("cloth", "hat_colour", "frame_colour", "eye_colour", "noise_seed")


def test_factor_list():
    assert len(FACTOR_NAMES) == len(FACTOR_SIZES) == 19
    assert not set(EXCLUSIVE_HAIR) & set(FACTOR_NAMES)  # hair colour is the one categorical
    binary = [n for n in FACTOR_NAMES if n in ATTRIBUTES]
    assert binary == [a for a in ATTRIBUTES if a not in EXCLUSIVE_HAIR]  # in ATTRIBUTES order
    sizes = dict(zip(FACTOR_NAMES, FACTOR_SIZES))
    assert sizes["hair_choice"] == 5 and all(sizes[n] == 2 for n in binary)
    assert all(sizes[n] == CONTINUOUS_BINS == 8 for n in FACTOR_RANGES) and len(FACTOR_RANGES) == 10


def test_sampled_parameters_lie_in_the_stated_ranges_and_fill_every_bin():
    p = sample_parameters(4000, 5)
    for name, (lo, hi) in RANGES.items():
        assert p[name].min() >= lo and p[name].max() <= hi, name
        assert p[name].min() < lo + 0.02 * (hi - lo) and p[name].max() > hi - 0.02 * (hi - lo), name
    names, values = factor_table(p)
    assert names == list(FACTOR_NAMES) and values.shape == (4000, 19)
    indices = discretize_factors(values)
    assert indices.dtype == torch.long
    assert ((indices >= 0) & (indices < torch.tensor(FACTOR_SIZES))).all()
    for k, size in enumerate(FACTOR_SIZES):
        assert len(indices[:, k].unique()) == size, FACTOR_NAMES[k]  # every value occurs
    # hair_choice and the four hair attributes agree; binaries are the attributes themselves
    for j, hair in enumerate(EXCLUSIVE_HAIR):
        assert torch.equal(indices[:, COLUMN["hair_choice"]] == j, p[hair] == 1)
    assert torch.equal(indices[:, COLUMN["Smiling"]], p["Smiling"].long())
    assert torch.equal(values[:, COLUMN["bg_g"]], p["bg"][:, 1].double())
    # a bin's centre is within half a bin of every value in it
    centres = factor_values(indices)
    for name, (lo, hi) in FACTOR_RANGES.items():
        k = COLUMN[name]
        assert (centres[:, k] - values[:, k]).abs().max() <= (hi - lo) / CONTINUOUS_BINS / 2 + 1e-9
    assert torch.equal(discretize_factors(centres), indices)


def test_datamodule_factors_are_the_generators(tmp_path):
    dm = SynthFacesDataModule(
        data_dir=str(tmp_path),
        count=40,
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        build_workers=1,
        batch_size=16,
    )
    assert "factors" in dm.batch_fields and dm.factor_names == FACTOR_NAMES and dm.factor_sizes == FACTOR_SIZES
    dm.setup("fit")
    expected = discretize_factors(factor_table(sample_parameters(40, 0))[1])
    assert dm.ids == list(range(40))  # the reader's rows are the file numbers, the parameter rows
    assert torch.equal(dm.train_set.fields["factors"], expected)
    rows = torch.cat([dm.train_set.indices, dm.val_set.indices, dm.test_set.indices]).sort().values
    assert torch.equal(rows, torch.arange(40))
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert torch.equal(batch["factors"], expected[batch["index"]])
    assert torch.equal(batch["attributes"][:, ATTRIBUTES.index("Male")].long(), batch["factors"][:, COLUMN["Male"]])
    images = dm.render_factors(batch["factors"])
    assert images.shape == (len(batch["index"]), 3, 32, 32)
    assert torch.equal(images, render_factors(batch["factors"], 32))
    # the stored faces and their factors' renders differ only by the bins' rounding and JPEG
    assert (images - batch["image"]).abs().mean() < 0.15


def base_indices(n: int = 12) -> torch.Tensor:
    """Random factor indices, on male, non-pale faces (where every factor shows)."""
    g = torch.Generator().manual_seed(0)
    indices = torch.stack([torch.randint(0, size, (n,), generator=g) for size in FACTOR_SIZES], dim=1)
    indices[:, COLUMN["Male"]] = 1
    indices[:, COLUMN["Pale_Skin"]] = 0  # a pale face's colour ignores skin_shade
    return indices


def test_render_factors_is_deterministic_and_keeps_the_nuisance():
    indices = base_indices()
    images = render_factors(indices, 32, seed=4)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, render_factors(indices, 32, seed=4))
    assert not torch.equal(images, render_factors(indices, 32, seed=5))  # other nuisance
    p = factor_parameters(indices, seed=4)
    q = sample_parameters(12, 4)
    for name in NUISANCE:
        assert torch.equal(p[name], q[name])
    # the parameters' factors are the bins' centres: they discretise back to the indices
    assert torch.equal(discretize_factors(factor_table(p)[1]), indices)


@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_changing_one_factor_changes_the_image_and_nothing_else(name):
    k = COLUMN[name]
    indices = base_indices()
    changed = indices.clone()
    changed[:, k] = (indices[:, k] + max(1, FACTOR_SIZES[k] // 2)) % FACTOR_SIZES[k]
    a, b = render_factors(indices, 32), render_factors(changed, 32)
    assert ((a - b).abs().flatten(1).amax(1) > 0.05).all(), name
    p, q = factor_parameters(indices), factor_parameters(changed)
    moved = {key for key in p if not torch.equal(p[key], q[key])}
    # hair_choice sets the hair attributes; a face turned female loses its beard (the mending rule)
    tied = {"hair_choice": {"hair_choice", *EXCLUSIVE_HAIR}, "Male": {"Male", "No_Beard"}}.get(name, {name})
    if name.startswith("bg_") and name != "bg_grad":
        tied = {"bg"}
    assert moved == tied, (name, moved)


def test_no_beard_only_acts_on_male_faces():
    indices = base_indices()
    indices[:, COLUMN["Male"]] = 0
    beard = indices.clone()
    beard[:, COLUMN["No_Beard"]] = 0
    no_beard = indices.clone()
    no_beard[:, COLUMN["No_Beard"]] = 1
    assert (factor_parameters(beard)["No_Beard"] == 1).all()  # mended: no beard on a female face
    assert torch.equal(render_factors(beard, 32), render_factors(no_beard, 32))


def test_bad_indices_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        render_factors(torch.full((1, 19), 8), 32)
    with pytest.raises(ValueError, match="integers"):
        factor_values(torch.zeros(2, 19))
