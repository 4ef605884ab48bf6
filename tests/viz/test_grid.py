import numpy as np
import torch

from src.viz.grid import image_grid, paired_rows, to_uint8


def test_paired_rows_interleaves_and_pads():
    top = torch.zeros(10, 1, 2, 2)
    bottom = torch.full((10, 1, 2, 2), 0.5)
    out = paired_rows(top, bottom, per_row=4)
    # rows: top[0:4], bottom[0:4], top[4:8], bottom[4:8], top[8:10]+2 blanks, bottom[8:10]+2 blanks
    assert out.shape == (24, 1, 2, 2)
    values = out[:, 0, 0, 0].tolist()
    assert values == [0] * 4 + [0.5] * 4 + [0] * 4 + [0.5] * 4 + [0, 0, 1, 1] + [0.5, 0.5, 1, 1]


def test_image_grid_layout_and_values():
    images = torch.stack([torch.full((1, 3, 3), i / 10) for i in range(6)])
    grid = image_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1 + 4, 1 + 8, 0] == round(0.5 * 255)  # image 5: row 1, column 2
    assert grid[0, 0, 0] == 255  # padding is white
    rgb = image_grid(torch.rand(2, 3, 4, 4), nrow=2)
    assert rgb.shape[2] == 3


def test_to_uint8_clips_and_rounds():
    assert to_uint8(torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.7])).tolist() == [0, 0, 128, 255, 255]
