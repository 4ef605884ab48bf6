import pytest
import torch

from src.xai.part_attention import part_shares, score_dimensions, sweep_change


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


def test_sweep_change_and_scores():
    images = torch.zeros(1, 1, 3, 1, 2, 2)  # B, D, J, C, H, W
    images[0, 0, :, 0, 1, 1] = torch.tensor([0.2, 0.9, 0.5])  # only the bottom-right pixel moves, by 0.7
    change = sweep_change(images)
    torch.testing.assert_close(change, torch.tensor([[[[0.0, 0.0], [0.0, 0.7]]]]))
    parts = torch.tensor([[[0, 0], [0, 1]]])
    maps = torch.tensor([[[[3.0, 0.0], [0.0, 1.0]]]])  # 3/4 of the attention on part 0
    (row,) = score_dimensions(maps, change, parts, ["background", "nose"], dims=[7])
    assert row == {"dim": 7, "top_attention_part": "background", "top_attention_share": 0.75,
                   "most_changed_part": "nose", "change_share": pytest.approx(1.0),
                   "attention_in_changed_part": 0.25, "changed_part_area": 0.25}  # fmt: skip
