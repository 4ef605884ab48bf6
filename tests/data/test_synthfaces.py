import hashlib

import numpy as np
import pytest
import torch

from src.data.celeba import CelebADataModule
from src.data.celebamask_hq import PARTS
from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.data.synthfaces.files import grey_png, write_dataset
from src.data.synthfaces.parameters import ATTRIBUTES, EXCLUSIVE_HAIR, intervene, sample_parameters
from src.data.synthfaces.render import render

PART = {name: i for i, name in enumerate(PARTS)}


def toggle(p, name, value):
    q = {k: v.clone() for k, v in p.items()}
    if name == "hair_choice":
        q["hair_choice"][:] = value
    else:
        q[name][:] = value
    return q


def test_deterministic(tmp_path):
    a, b = sample_parameters(30, 7), sample_parameters(30, 7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(sample_parameters(30, 8)["cx"], a["cx"])
    write_dataset(tmp_path / "one", 32, 30, seed=7, workers=1)
    write_dataset(tmp_path / "two", 32, 30, seed=7, workers=2, chunk=7)

    def digest(folder):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return hashlib.sha1(
            b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)
        ).hexdigest()

    assert digest(tmp_path / "one") == digest(tmp_path / "two")


def test_attributes_balanced_enough_to_learn():
    p = sample_parameters(5000, 0)
    for name in ATTRIBUTES:
        assert 0.1 <= p[name].mean().item() <= 0.9, name
    hair = torch.stack([p[n] for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]).sum(0)
    assert hair.max() == 1  # at most one hair colour per face, as in CelebA


# attribute -> parts whose pixels it may change (in either version)
OWNED = {
    "Wearing_Hat": ["hat"],
    "Eyeglasses": ["eye_g"],
    "Bangs": ["hair"],
    "Mouth_Slightly_Open": ["mouth", "u_lip", "l_lip"],
    "Smiling": ["mouth", "u_lip", "l_lip"],
    "Pale_Skin": ["skin", "nose", "l_ear", "r_ear", "neck"],
    "No_Beard": ["skin"],
}


@pytest.mark.parametrize("name", sorted(OWNED))
def test_each_attribute_changes_pixels_only_in_its_parts(name):
    p = sample_parameters(60, 1)
    p["Male"][:] = 1.0  # beards need a male face; other attributes do not care
    off, on = toggle(p, name, 0.0), toggle(p, name, 1.0)

    def owned_and_changed(supersample: int, size: int = 64):
        img_off, _ = render(off, size, supersample)
        img_on, _ = render(on, size, supersample)
        changed = (img_off.int() - img_on.int()).abs().amax(1) > 0  # [B, S, S]
        # ownership at the painting resolution, pooled: a pixel may change if any of its
        # sub-pixels shows an owned part in either version
        _, lab_off = render(off, size * supersample, 1)
        _, lab_on = render(on, size * supersample, 1)
        owned = torch.zeros_like(lab_off, dtype=torch.bool)
        for part in OWNED[name]:
            owned |= (lab_off == PART[part]) | (lab_on == PART[part])
        owned = torch.nn.functional.max_pool2d(owned.float().unsqueeze(1), supersample).squeeze(1).bool()
        return owned, changed

    for supersample in (1, 2):
        owned, changed = owned_and_changed(supersample)
        assert changed.flatten(1).any(1).float().mean() > 0.9, f"{name} rarely changes the image"
        outside = changed & ~owned
        assert outside.sum() == 0, f"{name} changed {int(outside.sum())} pixels outside {OWNED[name]}"


def test_part_masks_follow_attributes():
    p = sample_parameters(400, 2)
    _, labels = render(p, 64)
    present = {part: (labels == PART[part]).flatten(1).any(1).float() for part in ("hat", "eye_g", "mouth")}
    assert torch.equal(present["hat"], p["Wearing_Hat"])
    assert torch.equal(present["eye_g"], p["Eyeglasses"])
    assert torch.equal(present["mouth"], p["Mouth_Slightly_Open"])
    # long hair for women: far more hair pixels than the short cap of men
    male_long = (labels == PART["hair"]).flatten(1).sum(1)
    assert male_long[p["Male"] == 0].float().mean() > 1.5 * male_long[p["Male"] == 1].float().mean()


def test_hair_colour_attribute_sets_hair_pixels():
    p = sample_parameters(40, 3)
    images, labels = render(p, 64)
    images = images.int()
    hair = labels == PART["hair"]
    blond = (p["Blond_Hair"] == 1) & (hair.flatten(1).sum(1) > 20)
    black = (p["Black_Hair"] == 1) & (hair.flatten(1).sum(1) > 20)
    mean = torch.stack([(images[i].float() * hair[i]).sum((1, 2)) / hair[i].sum() for i in range(40)])
    assert mean[blond].sum(1).min() > mean[black].sum(1).max() + 200


def test_grey_png_reads_back_with_pil(tmp_path):
    from PIL import Image

    array = (np.random.default_rng(0).random((13, 9)) > 0.5).astype(np.uint8) * 255
    (tmp_path / "m.png").write_bytes(grey_png(array))
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "L" and img.size == (9, 13)
        np.testing.assert_array_equal(np.asarray(img), array)


def test_reader_roundtrip_and_celeba_view(tmp_path):
    dm = SynthFacesDataModule(
        data_dir=str(tmp_path),
        count=50,
        image_size=48,
        cache_dir=str(tmp_path / "cache"),
        build_workers=1,
        target="index",
    )
    dm.prepare_data()
    dm.setup("fit")
    params = sample_parameters(50, 0)
    images, labels = render(params, 48)
    rows = torch.cat([dm.train_set.indices, dm.val_set.indices, dm.test_set.indices]).sort().values
    assert torch.equal(rows, torch.arange(50))
    stored = dm.train_set.fields["mask"]
    assert torch.equal(stored.long(), labels.long())  # masks are lossless
    diff = (dm.train_set.images.int() - images.int()).abs().float().mean()
    assert diff < 4  # JPEG quality 95
    expected = torch.stack([params[n] for n in ATTRIBUTES], 1)
    assert dm.attribute_names == ATTRIBUTES
    assert torch.equal(dm.train_set.fields["attributes"], expected)
    # the same folder read as CelebA: same attributes, same split
    celeba = CelebADataModule(root=dm.root_arg, image_size=48, cache_dir=str(tmp_path / "cache"), build_workers=1)
    celeba.setup("fit")
    assert torch.equal(celeba.train_set.fields["attributes"], expected)
    assert torch.equal(celeba.test_set.indices, dm.test_set.indices)
    assert torch.equal(celeba.train_set.images, dm.train_set.images)


def _drawable(rows: torch.Tensor) -> torch.Tensor:
    """Rows the generator can produce: at most one hair colour, a beard only on a male face."""
    col = {n: i for i, n in enumerate(ATTRIBUTES)}
    hair = rows[:, [col[h] for h in EXCLUSIVE_HAIR]].sum(1) <= 1
    beard_ok = (rows[:, col["No_Beard"]] == 1) | (rows[:, col["Male"]] == 1)
    return hair & beard_ok


def test_generated_attributes_are_drawable_and_interventions_keep_them_so():
    p = sample_parameters(2000, seed=3)
    rows = torch.stack([p[n] for n in ATTRIBUTES], 1)
    assert _drawable(rows).all()
    for name in ATTRIBUTES:
        for value in (0.0, 1.0):
            out = intervene(rows, ATTRIBUTES, name, value)
            assert (out[:, ATTRIBUTES.index(name)] == value).all()
            assert _drawable(out).all(), (name, value)
            # only the attribute and the ones the rules tie to it move
            moved = {ATTRIBUTES[j] for j in (out != rows).any(0).nonzero().flatten().tolist()}
            allowed = (
                {name}
                | (set(EXCLUSIVE_HAIR) if name in EXCLUSIVE_HAIR else set())
                | ({"Male", "No_Beard"} if name in ("Male", "No_Beard") else set())
            )
            assert moved <= allowed, (name, value, moved)
    assert torch.equal(rows, torch.stack([p[n] for n in ATTRIBUTES], 1))  # input untouched
    with pytest.raises(KeyError, match="Hat"):
        intervene(rows, ATTRIBUTES, "Hat", 1.0)
