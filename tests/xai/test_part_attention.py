import math

import pytest
import torch

from src.xai.latent.part_attention import PartAttention, part_attention, part_shares, score_dimensions, sweep_change


def test_part_shares_by_hand():
    parts = torch.tensor([[[0, 0], [1, 2]]])  # one image: part 0 top row, 1 and 2 bottom
    maps = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # dim 0; dim 1 all zero
    shares = part_shares(maps, parts, 3)
    torch.testing.assert_close(shares[0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(shares[1], torch.zeros(3))  # an empty map counts for nothing
    with pytest.raises(ValueError, match="do not line up"):
        part_shares(maps, torch.zeros(1, 3, 3, dtype=torch.long), 3)


def test_empty_maps_do_not_dilute_the_average():
    parts = torch.zeros(2, 2, 2, dtype=torch.long)
    parts[:, 1] = 1
    maps = torch.zeros(2, 1, 2, 2)
    maps[0, 0, 1] = 1.0  # sample 0: all in part 1; sample 1: empty
    torch.testing.assert_close(part_shares(maps, parts, 2)[0], torch.tensor([0.0, 1.0]))


def test_sweep_change():
    images = torch.zeros(1, 1, 3, 1, 2, 2)  # B, D, J, C, H, W
    images[0, 0, :, 0, 1, 1] = torch.tensor([0.2, 0.9, 0.5])  # only the bottom-right pixel moves, by 0.7
    torch.testing.assert_close(sweep_change(images), torch.tensor([[[[0.0, 0.0], [0.0, 0.7]]]]))


NAMES = ["background", "nose", "eye_g"]


def face_parts(b: int = 2) -> torch.Tensor:
    """[B, 12, 12]: background 139 of 144 pixels, a 2 x 2 nose (2.8 %), a 1-pixel eye_g (0.7 %)."""
    parts = torch.zeros(b, 12, 12, dtype=torch.long)
    parts[:, 5:7, 5:7] = 1
    parts[:, 0, 0] = 2
    return parts


def test_a_dimension_acting_on_a_small_part_is_attributed_to_it_not_to_the_background():
    parts = face_parts()
    nose, tiny = parts == 1, parts == 2
    change = torch.full((2, 4, 12, 12), 0.1)  # every dimension moves the background a little ...
    change[:, 0][nose] = 1.0  # ... dim 0 moves the nose a lot: 4 of its 18 units of change
    change[:, 1][tiny] = 5.0  # dim 1 acts on a part below min_area, which is not a candidate
    change[:, 1][nose] = 0.3
    change[:, 3] = 0.0  # dim 3 changes nothing
    maps = torch.ones(2, 4, 12, 12)  # dim 0 attends evenly; dim 1 to the nose alone; dim 2 to the background
    maps[:, 1] = nose.float()
    maps[:, 2] = (parts == 0).float()
    rows = score_dimensions(maps, change, parts, NAMES, dims=[7, 8, 9, 10])
    assert [r["dim"] for r in rows] == [7, 8, 9, 10]
    # dim 0: the background holds most of the change (13.9 of 18), the nose most change per pixel
    total = 140 * 0.1 + 4 * 1.0
    assert rows[0]["acted_part"] == "nose"
    assert rows[0]["change_share"] == pytest.approx(4 / total)
    assert rows[0]["part_area"] == pytest.approx(4 / 144)
    assert rows[0]["change_density"] == pytest.approx((4 / total) / (4 / 144))
    assert rows[0]["attention_density"] == pytest.approx(1.0) and rows[0]["attention_auroc"] == pytest.approx(0.5)
    assert rows[0]["attention_share"] == pytest.approx(4 / 144)
    # dim 1: the 1-pixel part is ignored; among the candidates the nose is densest
    assert rows[1]["acted_part"] == "nose" and rows[1]["densest_attention_part"] == "nose"
    assert rows[1]["attention_share"] == pytest.approx(1.0) and rows[1]["attention_density"] == pytest.approx(36.0)
    assert rows[1]["attention_auroc"] == 1.0
    # with every part a candidate, the tiny part wins dim 1
    assert score_dimensions(maps, change, parts, NAMES, dims=[7, 8, 9, 10], min_area=0.0)[1]["acted_part"] == "eye_g"
    # dim 2: a uniform change is equally dense in every part (1: no part stands out)
    assert rows[2]["change_density"] == pytest.approx(1.0)
    assert rows[2]["densest_attention_part"] == "background"
    # dim 3 changes nothing: no part, no scores
    assert rows[3]["acted_part"] is None and math.isnan(rows[3]["attention_density"])


def test_attention_below_chance_on_the_acted_part():
    parts = face_parts()
    change = torch.zeros(2, 1, 12, 12)
    change[:, 0][parts == 1] = 1.0
    maps = (parts != 1).float().unsqueeze(1)  # attention everywhere but the nose
    (row,) = score_dimensions(maps, change, parts, NAMES, dims=[0])
    assert row["acted_part"] == "nose" and row["attention_density"] == 0.0 and row["attention_auroc"] == 0.0
    assert row["densest_attention_part"] == "background"


def test_summary_means_and_keys():
    rows = [
        {
            "dim": 0,
            "attention_density": 2.0,
            "attention_auroc": 0.9,
            "attention_share": 0.2,
            "change_density": 5.0,
            "part_area": 0.1,
        },
        {
            "dim": 1,
            "attention_density": 1.0,
            "attention_auroc": 0.5,
            "attention_share": 0.4,
            "change_density": 3.0,
            "part_area": 0.3,
        },
        {
            "dim": 2,
            "attention_density": math.nan,
            "attention_auroc": math.nan,
            "attention_share": math.nan,
            "change_density": math.nan,
            "part_area": math.nan,
        },
    ]
    summary = PartAttention(torch.zeros(3), {"layer": rows}).summary()
    assert summary == {
        "mean_attention_density": 1.5,
        "mean_attention_auroc": pytest.approx(0.7),
        "mean_attention_share": pytest.approx(0.3),
        "mean_change_density": 4.0,
        "mean_part_area": pytest.approx(0.2),
        "dimensions": rows,
    }


def test_part_attention_runs_on_a_vae():
    from src.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE(image_size=16, in_channels=1, latent_dim=5, encoder={"channels": [4, 8]}, norm="batch").eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    parts = torch.zeros(2, 16, 16, dtype=torch.long)
    parts[:, 4:12, 4:12] = 1
    result = part_attention(vae, x, parts=parts, part_names=["background", "face"], num_dims=3)
    rows = result.summary()["dimensions"]
    assert len(rows) == 3 and {r["acted_part"] for r in rows} <= {"background", "face"}
    assert all(0 <= r["attention_auroc"] <= 1 and r["attention_density"] >= 0 for r in rows)
