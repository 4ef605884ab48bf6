import torch

from src.viz.morph import enlarge, path_mask_rows, signed_map


def test_enlarge_by_an_integer_factor_to_at_least_min_size():
    tiles = torch.rand(2, 3, 28, 28)
    big = enlarge(tiles, 84)
    assert big.shape == (2, 3, 84, 84)
    assert torch.equal(big[:, :, ::3, ::3], tiles)  # nearest: each pixel a 3x3 block
    assert enlarge(tiles, 30).shape[-1] == 56  # rounded up to the next whole factor
    assert enlarge(tiles, 20) is tiles


def test_signed_map_red_brighter_blue_darker_white_unchanged():
    signed = torch.zeros(2, 3, 1, 3)
    signed[0, :, 0, 0], signed[0, :, 0, 1] = 0.1, -0.05  # scaled by each map's largest |value|
    rgb = signed_map(signed)  # all-zero second map: white, no division by zero
    assert rgb.shape == (2, 3, 1, 3)
    red, blue, white = rgb[0, :, 0, 0], rgb[0, :, 0, 1], rgb[0, :, 0, 2]
    assert red[0] > 0.6 and red[1:].max() < 0.1  # full red at the largest brightening
    assert blue[2] > 0.9 and blue[0] < blue[2]  # half-way blue
    assert white.min() > 0.95 and rgb[1].min() > 0.95


def test_path_mask_rows_five_enlarged_tiles_per_probe():
    images, recon, morphed = torch.rand(3, 2, 1, 28, 28).unbind(0)
    rows = path_mask_rows(images, recon, morphed, torch.rand(2, 1, 28, 28), torch.randn(2, 1, 28, 28))
    assert len(rows) == 2 and all(len(r) == 5 for r in rows)
    assert {tuple(t.shape) for r in rows for t in r} == {(3, 84, 84)}
    assert torch.equal(rows[1][2][:, ::3, ::3], morphed[1].expand(3, -1, -1))
