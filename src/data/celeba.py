"""CelebA: attribute and partition files (official .txt and the common .csv variant), the image
folder, and a cached, memory-mapped datamodule."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch

from src.base.errors import ConfigError, DataError
from src.data.cache import ArrayCache, dataset_cache
from src.data.images import load_square_image
from src.data.in_memory import InMemoryDataModule

log = logging.getLogger(__name__)

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


def _attribute_row(path: Path, line_no: int, fields: list[str], n_names: int) -> tuple[str, list[int]]:
    if len(fields) != n_names + 1:
        raise DataError(
            f"{path}, line {line_no}: expected a file name and {n_names} values, got {len(fields) - 1} values"
        )
    try:
        values = [int(v) for v in fields[1:]]
    except ValueError as exc:
        raise DataError(f"{path}, line {line_no}: values must be -1 or 1 ({exc})") from exc
    if any(v not in (-1, 1) for v in values):
        raise DataError(f"{path}, line {line_no}: values must be -1 or 1, got {sorted(set(values))}")
    return fields[0], values


def read_attributes(path: str | Path) -> tuple[list[str], list[str], torch.Tensor]:
    """(attribute names, file names, int8 values in {-1, 1} [N, K]) from CelebA's
    list_attr_celeba.txt (count line, names line, rows split on any whitespace) or its .csv."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"attribute file not found: {path}")
    filenames, rows = [], []
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or header[0].strip() != "image_id":
                raise DataError(f"{path}: the first row must be 'image_id,<attribute names>'")
            names = [h.strip() for h in header[1:]]
            for line_no, fields in enumerate(reader, start=2):
                if fields:
                    name, values = _attribute_row(path, line_no, [f.strip() for f in fields], len(names))
                    filenames.append(name)
                    rows.append(values)
    else:
        with open(path) as fh:
            lines = fh.read().splitlines()
        if len(lines) < 2:
            raise DataError(f"{path}: expected a count line and an attribute-name line")
        try:
            count = int(lines[0].strip())
        except ValueError as exc:
            raise DataError(f"{path}, line 1: expected the number of images, got {lines[0][:40]!r}") from exc
        names = lines[1].split()
        for line_no, line in enumerate(lines[2:], start=3):
            if line.strip():
                name, values = _attribute_row(path, line_no, line.split(), len(names))
                filenames.append(name)
                rows.append(values)
        if count != len(rows):
            raise DataError(f"{path}: line 1 announces {count} images but {len(rows)} rows follow")
    if not rows:
        raise DataError(f"{path}: no attribute rows")
    return names, filenames, torch.tensor(rows, dtype=torch.int8)


def read_partition(path: str | Path) -> dict[str, int]:
    """file name -> 0/1/2 (train/val/test) from list_eval_partition.txt or .csv."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"partition file not found: {path}")
    out: dict[str, int] = {}
    with open(path, newline="") as fh:
        if path.suffix == ".csv":
            rows = list(csv.reader(fh))[1:]  # header: image_id,partition
        else:
            rows = [line.split() for line in fh.read().splitlines()]
    for line_no, fields in enumerate(rows, start=2 if path.suffix == ".csv" else 1):
        if not fields:
            continue
        if len(fields) != 2 or fields[1].strip() not in ("0", "1", "2"):
            raise DataError(f"{path}, line {line_no}: expected '<file name> <0|1|2>', got {' '.join(fields)!r}")
        out[fields[0].strip()] = int(fields[1])
    return out


def find_file(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def require_root(root: str | None, dataset: str, layout: str) -> Path:
    if not root:
        raise ConfigError(
            "data.root", root, f"{dataset} cannot be downloaded here; pass data.root=DIR, a folder with {layout}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset} root not found: {path} (data.root); expected a folder with {layout}")
    return path


def select_attributes(available: list[str], wanted: list[str] | None) -> list[int]:
    """Column indices of `wanted` (None: all), ConfigError naming unknown ones."""
    if wanted is None:
        return list(range(len(available)))
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConfigError("data.attributes", unknown, f"unknown attribute(s); available: {', '.join(available)}")
    return [available.index(name) for name in wanted]


class _ImageLoader:
    """Picklable per-index image decoder for the cache builder."""

    def __init__(self, paths: list[Path], size: int, crop_size: int | None) -> None:
        self.paths, self.size, self.crop_size = paths, size, crop_size

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": load_square_image(self.paths[i], self.size, self.crop_size)}


class CelebADataModule(InMemoryDataModule):
    """CelebA in its official layout under `root`: img_align_celeba/*.jpg, list_attr_celeba.txt
    (or .csv) and list_eval_partition.txt (or .csv). Images are centre-cropped, resized to
    `image_size` and cached once as uint8 under `cache_dir`; batches carry 'attributes' as
    float 0/1 for the names in `attributes` (None: all)."""

    name = "CelebA"
    batch_fields = ("image", "attributes")
    all_attributes = tuple(CELEBA_ATTRIBUTES)
    layout = "img_align_celeba/*.jpg, list_attr_celeba.txt (or .csv) and list_eval_partition.txt (or .csv)"

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 64,
        attributes: list[str] | None = None,
        crop_size: int | None = None,
        cache_dir: str | None = None,
        build_workers: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=kwargs.pop("channels", 3), **kwargs)
        self.root_arg = root
        self.attributes = list(attributes) if attributes is not None else None
        self.crop_size = crop_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.build_workers = build_workers
        self.attribute_names: list[str] = []

    # --- layout --------------------------------------------------------------------------
    def index(self) -> tuple[list[Path], list[str], torch.Tensor, torch.Tensor]:
        """(image paths, attribute names, int8 attributes [N, K], partition codes [N]) after
        checking that the attribute file, the partition file and the image folder agree."""
        root = require_root(self.root_arg, self.name, self.layout)
        image_dir = root / "img_align_celeba"
        if (image_dir / "img_align_celeba").is_dir():  # the Kaggle archive nests the folder
            image_dir = image_dir / "img_align_celeba"
        if not image_dir.is_dir():
            raise DataError(f"{self.name}: image folder not found: {image_dir}; expected {self.layout} under {root}")
        attr_path = find_file(root, "list_attr_celeba.txt", "list_attr_celeba.csv")
        part_path = find_file(root, "list_eval_partition.txt", "list_eval_partition.csv")
        if attr_path is None or part_path is None:
            missing = "list_attr_celeba.txt/.csv" if attr_path is None else "list_eval_partition.txt/.csv"
            raise DataError(f"{self.name}: {missing} not found in {root}; expected {self.layout}")
        names, filenames, values = read_attributes(attr_path)
        partition = read_partition(part_path)
        present = set(os.listdir(image_dir))
        for name in filenames:
            if name not in present:
                raise DataError(f"{attr_path} lists {name}, which is not in {image_dir}")
            if name not in partition:
                raise DataError(f"{attr_path} lists {name}, which {part_path} does not assign to a split")
        codes = torch.tensor([partition[name] for name in filenames], dtype=torch.int8)
        return [image_dir / name for name in filenames], names, values, codes

    def cache(self, paths: list[Path]) -> ArrayCache:
        root = Path(self.root_arg).expanduser().resolve()
        return dataset_cache(
            self.name,
            root,
            self.cache_dir,
            self.image_size,
            crop=self.crop_size,
            n=len(paths),
            first=paths[0].name,
            last=paths[-1].name,
        )

    def prepare_data(self) -> None:
        paths, _, _, _ = self.index()
        cache = self.cache(paths)
        if not cache.complete:
            log.info("%s: caching %d images at %dpx in %s (once)", self.name, len(paths), self.image_size, cache.folder)
            cache.build(
                len(paths),
                {"image": ((3, self.image_size, self.image_size), np.uint8)},
                _ImageLoader(paths, self.image_size, self.crop_size),
                workers=self.build_workers,
            )

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        paths, names, values, codes = self.index()
        columns = select_attributes(names, self.attributes)
        self.attribute_names = [names[c] for c in columns]
        cache = self.cache(paths)
        if not cache.complete:
            self.prepare_data()
        tensors = {"image": cache.open()["image"], "attributes": (values[:, columns] > 0).float()}
        splits = {name: torch.nonzero(codes == code).flatten() for code, name in PARTITION_NAMES.items()}
        for name, idx in splits.items():
            if len(idx) == 0:
                raise DataError(f"{self.name}: the partition file assigns no image to the '{name}' split")
        return tensors, splits
