"""Decode one image file into a centre-cropped, resized uint8 array [C, S, S]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.base.errors import DataError


def load_square_image(path: str | Path, size: int, crop_size: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Centre crop (crop_size px of the original, default the short side) and resize to
    size x size (antialiased bicubic); [C, S, S] uint8. DataError naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            side = min(width, height) if crop_size is None else min(crop_size, width, height)
            # let libjpeg decode at a reduced scale where that still leaves >= size pixels of crop
            img.draft(mode, (max(1, size * width // side), max(1, size * height // side)))
            scale = img.size[0] / width
            img = img.convert(mode)
            w, h = img.size
            s = side * scale
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
            array = np.asarray(out, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}; expected a readable JPEG or PNG") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()
