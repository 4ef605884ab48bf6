import pytest
import torch

from src.data.celebamask_hq import PARTS
from src.data.synthfaces.counterfactual import counterfactual_pairs
from src.data.synthfaces.parameters import ATTRIBUTES, EXCLUSIVE_HAIR, sample_parameters
from src.data.synthfaces.render import render

PART = {name: i for i, name in enumerate(PARTS)}

# attribute -> the classes the generator paints it as (`PAINTS` in src/data/synthfaces/render.py): bangs
# are painted as hair, the frames as eye_g, the hat as hat, an open mouth as mouth between the lips
OWNED = {
    "Eyeglasses": ("eye_g",),
    "Wearing_Hat": ("hat",),
    "Bangs": ("hair",),
    "Mouth_Slightly_Open": ("mouth", "u_lip", "l_lip"),
}
# Parts painted above the owned ones. A pixel's class is the topmost part in its supersampled
# block, so a pixel on such a part's edge (bangs under the hat's brim) is labelled with that part
# while the owned part under its other sub-pixels changes its colour; it borders the owned part.
ABOVE = {
    "Eyeglasses": ("hat",),
    "Wearing_Hat": (),
    "Bangs": ("eye_g", "hat"),
    "Mouth_Slightly_Open": ("eye_g", "hat"),
}


def in_parts(masks: torch.Tensor, names) -> torch.Tensor:
    out = torch.zeros(masks.shape, dtype=torch.bool)
    for name in names:
        out |= masks == PART[name]
    return out


@pytest.mark.parametrize("name", sorted(OWNED))
def test_pairs_differ_only_inside_the_attributes_parts(name):
    pairs = counterfactual_pairs(name, 48, 64, seed=3)
    off, on, region = pairs["off"], pairs["on"], pairs["region"]
    assert off.shape == on.shape == (48, 3, 64, 64) and off.dtype == torch.float32
    assert region.shape == (48, 64, 64) and region.dtype == torch.bool
    assert 0 <= off.min() and off.max() <= 1
    owned = in_parts(pairs["masks_off"], OWNED[name]) | in_parts(pairs["masks_on"], OWNED[name])
    near = torch.nn.functional.max_pool2d(owned.float().unsqueeze(1), 3, 1, 1).squeeze(1).bool()
    edge = near & (in_parts(pairs["masks_off"], ABOVE[name]) | in_parts(pairs["masks_on"], ABOVE[name]))
    changed = (on - off).abs().amax(1) > 0  # any change at all, not only the region's
    outside = changed & ~(owned | edge)
    assert outside.sum() == 0, f"{name} changed {int(outside.sum())} pixels outside {OWNED[name]}"
    assert (region & ~changed).sum() == 0
    assert region.flatten(1).any(1).float().mean() > 0.9, f"{name}: the region is empty for most faces"
    column = ATTRIBUTES.index(name)
    assert (pairs["attributes_off"][:, column] == 0).all() and (pairs["attributes_on"][:, column] == 1).all()


def test_faces_that_already_have_the_value_render_as_they_are():
    p = sample_parameters(24, 5)
    images, masks = render(p, 32)
    pairs = counterfactual_pairs("Eyeglasses", 24, 32, seed=5)
    with_glasses = p["Eyeglasses"] == 1
    assert with_glasses.any() and (~with_glasses).any()
    assert torch.equal(pairs["on"][with_glasses], images[with_glasses].float() / 255)
    assert torch.equal(pairs["off"][~with_glasses], images[~with_glasses].float() / 255)
    assert torch.equal(pairs["masks_off"][~with_glasses], masks[~with_glasses])
    assert pairs["region"][~with_glasses].flatten(1).any(1).all()


def test_hair_colour_follows_intervene_and_the_rendered_hair():
    pairs = counterfactual_pairs("Blond_Hair", 40, 32, seed=6)
    col = {n: ATTRIBUTES.index(n) for n in EXCLUSIVE_HAIR}
    on, off = pairs["attributes_on"], pairs["attributes_off"]
    assert (on[:, [col[h] for h in EXCLUSIVE_HAIR]].sum(1) == 1).all() and (on[:, col["Blond_Hair"]] == 1).all()
    assert (off[:, [col[h] for h in EXCLUSIVE_HAIR]].sum(1) <= 1).all() and (off[:, col["Blond_Hair"]] == 0).all()
    # the rendered faces: blond hair when on; off, a blond face turns auburn (hair_choice 4: none of
    # the four) and the others keep their own
    p = sample_parameters(40, 6)
    blond = EXCLUSIVE_HAIR.index("Blond_Hair")
    assert (p["hair_choice"] == blond).any() and (p["hair_choice"] != blond).any()
    auburn = len(EXCLUSIVE_HAIR)
    for key, choice in (
        ("on", torch.full_like(p["hair_choice"], blond)),
        ("off", torch.where(p["hair_choice"] == blond, auburn, p["hair_choice"])),
    ):
        images, masks = render({**p, "hair_choice": choice}, 32)
        assert torch.equal(pairs[key], images.float() / 255) and torch.equal(pairs[f"masks_{key}"], masks), key
    with pytest.raises(KeyError, match="Hat"):
        counterfactual_pairs("Hat", 2, 32, seed=0)
