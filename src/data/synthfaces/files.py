"""Writing a rendered dataset once, into the CelebAMask-HQ layout, in parallel chunks."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.cache import parallel_map, remove_abandoned
from src.data.celebamask_hq import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    IMAGES_PER_FOLDER,
    MAPPING_FILE,
    MASK_DIR,
    PARTS,
)
from src.data.synthfaces.parameters import ATTRIBUTES, GENERATOR_VERSION, sample_parameters
from src.data.synthfaces.render import render


def dataset_folder(data_dir: str | Path, size: int, count: int, seed: int) -> Path:
    return Path(data_dir).expanduser() / f"synthfaces-v{GENERATOR_VERSION}-{size}px-{count}-seed{seed}"


def grey_png(array: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a uint8 [H, W] array (no filtering, zlib level 1): a few
    microseconds where PIL's per-file overhead costs half a millisecond, for ~250k masks."""
    h, w = array.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.zeros((h, w + 1), dtype=np.uint8)  # each row starts with filter type 0
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


class _ChunkWriter:
    """Renders faces [start, stop) and writes their image and mask files (runs in a worker)."""

    def __init__(self, folder: Path, params: dict[str, torch.Tensor], size: int) -> None:
        self.folder, self.params, self.size = folder, params, size

    def __call__(self, bounds: tuple[int, int]) -> None:
        start, stop = bounds
        torch.set_num_threads(1)
        batch = {k: val[start:stop] for k, val in self.params.items()}
        images, labels = render(batch, self.size)
        for j in range(len(images)):
            i = start + j
            Image.fromarray(images[j].permute(1, 2, 0).numpy()).save(
                self.folder / IMAGE_DIR / f"{i}.jpg",
                quality=95,
                subsampling=0,  # 4:4:4: no chroma bleeding
            )
            mask_dir = self.folder / MASK_DIR / str(i // IMAGES_PER_FOLDER)
            for class_id in torch.unique(labels[j]).tolist():
                if class_id:
                    mask = (labels[j] == class_id).numpy().astype(np.uint8) * 255
                    (mask_dir / f"{i:05d}_{PARTS[class_id]}.png").write_bytes(grey_png(mask))


def write_dataset(folder: Path, size: int, count: int, seed: int, chunk: int = 50, workers: int | None = None) -> Path:
    """Render `count` faces into `folder` in the CelebAMask-HQ layout (plus CelebA-layout
    attribute/partition files); atomic: built in a temporary folder, then renamed."""
    if (folder / "synthfaces.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGE_DIR).mkdir(parents=True)
    for k in range((count - 1) // IMAGES_PER_FOLDER + 1):
        (tmp / MASK_DIR / str(k)).mkdir(parents=True)
    params = sample_parameters(count, seed)
    attributes = torch.stack([params[name] for name in ATTRIBUTES], dim=1)
    bounds = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    writer = _ChunkWriter(tmp, params, size)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    try:
        threads = torch.get_num_threads()
        try:
            for _ in parallel_map(writer, bounds, workers if len(bounds) > 1 else 1, ordered=False, chunksize=1):
                pass
        finally:
            torch.set_num_threads(threads)
        _write_tables(tmp, attributes, seed)
        (tmp / "synthfaces.json").write_text(
            json.dumps(
                {
                    "version": GENERATOR_VERSION,
                    "size": size,
                    "count": count,
                    "seed": seed,
                    "attributes": ATTRIBUTES,
                    "parts": PARTS,
                },
                indent=1,
            )
        )
        if (folder / "synthfaces.json").is_file():
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_tables(folder: Path, attributes: torch.Tensor, seed: int) -> None:
    """Attribute files in the CelebA text format (HQ and CelebA names), a seeded 80/10/10
    CelebA-style partition, the HQ-to-CelebA mapping, and img_align_celeba -> CelebA-HQ-img."""
    n = len(attributes)
    rows = [f"{i}.jpg " + " ".join("1" if x else "-1" for x in attributes[i].tolist()) for i in range(n)]
    table = f"{n}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(rows) + "\n"
    (folder / ATTRIBUTE_FILE).write_text(table)
    (folder / "list_attr_celeba.txt").write_text(table)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    code = torch.zeros(n, dtype=torch.long)
    code[perm[: math.ceil(0.1 * n)]] = 1
    code[perm[math.ceil(0.1 * n) : math.ceil(0.2 * n)]] = 2
    (folder / "list_eval_partition.txt").write_text("".join(f"{i}.jpg {code[i].item()}\n" for i in range(n)))
    (folder / MAPPING_FILE).write_text("idx orig_idx orig_file\n" + "".join(f"{i} {i} {i}.jpg\n" for i in range(n)))
    (folder / "img_align_celeba").symlink_to(IMAGE_DIR)
