import torch

from src.viz.heatmap import colormap, label_tiles, overlay


def test_colormap_ends_and_overlay_blend():
    rgb = colormap(torch.tensor([[[0.0, 1.0]]]), "gray")
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.zeros(3))
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.ones(3))
    images = torch.full((1, 1, 1, 2), 0.2)
    out = overlay(images, torch.tensor([[[0.0, 1.0]]]), alpha=0.25, name="gray")
    torch.testing.assert_close(out[0, :, 0, 0], torch.full((3,), 0.75 * 0.2))
    torch.testing.assert_close(out[0, :, 0, 1], torch.full((3,), 0.75 * 0.2 + 0.25))


def test_labels_change_only_their_corner_and_fit_the_tile():
    tiles = torch.full((2, 3, 28, 40), 0.5)
    out = label_tiles(tiles, ["a-very-long-label-that-cannot-fit", None])
    assert torch.equal(out[1], tiles[1])  # no label, untouched
    changed = (out[0] != tiles[0]).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert rows.min() == 0 and rows.max() < 16  # a strip at the top
    assert cols.min() == 0 and cols.max() <= 39  # cut to the tile's width
