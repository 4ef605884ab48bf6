"""CelebAMask-HQ: images, per-part binary mask PNGs merged into a class map, attributes, splits;
a cached, memory-mapped datamodule with class-map or binary part-mask targets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from src.base.errors import ConfigError, DataError
from src.data.cache import ArrayCache, dataset_cache
from src.data.celeba import (
    CELEBA_ATTRIBUTES,
    PARTITION_NAMES,
    find_file,
    read_attributes,
    read_partition,
    require_root,
    select_attributes,
)
from src.data.images import load_square_image
from src.data.in_memory import Batch, InMemoryDataModule, seeded_splits

log = logging.getLogger(__name__)

# the 19 classes in the official order (index = class id); masks of later parts overwrite
# earlier ones when merged, as the dataset's own g_mask.py does
PARTS = (
    "background skin nose eye_g l_eye r_eye l_brow r_brow l_ear r_ear mouth u_lip l_lip "
    "hair hat ear_r neck_l neck cloth"
).split()
IMAGES_PER_FOLDER = 2000
IMAGE_DIR, MASK_DIR = "CelebA-HQ-img", "CelebAMask-HQ-mask-anno"
ATTRIBUTE_FILE, MAPPING_FILE = "CelebAMask-HQ-attribute-anno.txt", "CelebA-HQ-to-CelebA-mapping.txt"


def mask_path(root: Path, index: int, part: str) -> Path:
    """CelebAMask-HQ-mask-anno/<index // 2000>/<index:05d>_<part>.png"""
    return root / MASK_DIR / str(index // IMAGES_PER_FOLDER) / f"{index:05d}_{part}.png"


def read_class_map(root: Path, index: int, mask_size: int | None) -> np.ndarray:
    """uint8 class map [M, M] for image `index`: 0 = background, else the id of the last part
    (in PARTS order) whose mask covers the pixel. Every mask must be mask_size x mask_size."""
    class_map = None
    for class_id, part in enumerate(PARTS[1:], start=1):
        path = mask_path(root, index, part)
        if not path.is_file():
            continue
        try:
            with Image.open(path) as img:
                mask = np.asarray(img.convert("L")) > 0
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"unreadable mask {path}: {exc}; expected a binary PNG") from exc
        expected = (mask_size, mask_size) if mask_size else (class_map.shape if class_map is not None else mask.shape)
        if mask.shape != expected:
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, expected {expected[1]}x{expected[0]}")
        if class_map is None:
            class_map = np.zeros(mask.shape, dtype=np.uint8)
        class_map[mask] = class_id
    if class_map is None:
        size = mask_size or 1
        class_map = np.zeros((size, size), dtype=np.uint8)  # an image with no annotated part
    return class_map


def check_masks(root: Path, ids: list[int]) -> int:
    """The images with no part mask at all (read as all background): none is a DataError (the
    mask folder is missing or empty), some a warning with their count. Returns the count."""
    annotated = {int(p.name[:5]) for p in (root / MASK_DIR).glob("*/*.png") if p.name[:5].isdigit()}
    missing = [i for i in ids if i not in annotated]
    if missing and len(missing) == len(ids):
        raise DataError(
            f"{root / MASK_DIR}: no part mask for any of the {len(ids)} images (expected "
            "<k>/<iiiii>_<part>.png); the segmentation targets need them"
        )
    if missing:
        log.warning(
            "%s: %d of %d images have no part mask and train as all background (e.g. %s)",
            root / MASK_DIR,
            len(missing),
            len(ids),
            ", ".join(str(i) for i in missing[:5]),
        )
    return len(missing)


def resize_class_map(class_map: np.ndarray, size: int) -> np.ndarray:
    if class_map.shape == (size, size):
        return class_map
    return np.asarray(Image.fromarray(class_map).resize((size, size), Image.Resampling.NEAREST))


def part_lookup(parts: list[str]) -> torch.Tensor:
    """Class id -> 1.0 if the class is in `parts`, else 0.0 (to merge a class map)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigError("data.parts", unknown, f"unknown part(s); the classes are: {', '.join(PARTS)}")
    return torch.tensor([1.0 if name in parts else 0.0 for name in PARTS])


class _ItemLoader:
    """Picklable per-index decoder (image + class map) for the cache builder."""

    def __init__(self, root: Path, image_paths: list[Path], ids: list[int], size: int, mask_size: int | None) -> None:
        self.root, self.image_paths, self.ids, self.size, self.mask_size = root, image_paths, ids, size, mask_size

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        image = load_square_image(self.image_paths[i], self.size)
        class_map = read_class_map(self.root, self.ids[i], self.mask_size)
        return {"image": image, "mask": resize_class_map(class_map, self.size)}


class CelebAMaskHQDataModule(InMemoryDataModule):
    """CelebAMask-HQ under `root`: CelebA-HQ-img/<i>.jpg, CelebAMask-HQ-mask-anno/<k>/<iiiii>_<part>.png,
    CelebAMask-HQ-attribute-anno.txt. Batches carry 'mask': the class map (long [H, W], target
    'index') or the union of `parts` (float [1, H, W], target 'binary'; default every part but
    skin, the [Panday2021] mask) and 'attributes' (float 0/1). Split: the official CelebA partition via
    CelebA-HQ-to-CelebA-mapping.txt + list_eval_partition.txt when both are in root, else seeded
    80/10/10."""

    name = "CelebAMask-HQ"
    batch_fields = ("image", "mask", "attributes")
    all_attributes = tuple(CELEBA_ATTRIBUTES)
    num_parts = len(PARTS)  # classes of the 'index' mask
    layout = f"{IMAGE_DIR}/<i>.jpg, {MASK_DIR}/<k>/<iiiii>_<part>.png and {ATTRIBUTE_FILE}"

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 64,
        target: str = "binary",
        parts: list[str] | None = None,
        attributes: list[str] | None = None,
        mask_size: int | None = 512,
        cache_dir: str | None = None,
        build_workers: int | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_size", 0.1)
        kwargs.setdefault("test_size", 0.1)
        super().__init__(image_size=image_size, channels=kwargs.pop("channels", 3), **kwargs)
        if target not in ("binary", "index"):
            raise ConfigError("data.target", target, "choose 'binary' (merged parts) or 'index' (class map)")
        self.root_arg = root
        self.target = target
        self.parts = list(parts) if parts is not None else [p for p in PARTS[1:] if p != "skin"]
        self.lookup = part_lookup(self.parts)
        self.attributes = list(attributes) if attributes is not None else None
        self.mask_size = mask_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.build_workers = build_workers
        self.attribute_names: list[str] = []
        self.class_names = list(PARTS) if target == "index" else ["other", "+".join(self.parts)]

    def root(self) -> Path:
        return require_root(self.root_arg, self.name, self.layout)

    def index(self) -> tuple[list[int], list[str], torch.Tensor | None]:
        """(image ids, attribute names, int8 attributes [N, K] or None), checked against the folders."""
        root = self.root()
        image_dir = root / IMAGE_DIR
        if not image_dir.is_dir() or not (root / MASK_DIR).is_dir():
            missing = image_dir if not image_dir.is_dir() else root / MASK_DIR
            raise DataError(f"{self.name}: folder not found: {missing}; expected {self.layout} under {root}")
        attr_path = root / ATTRIBUTE_FILE
        if attr_path.is_file():
            names, filenames, values = read_attributes(attr_path)
        else:
            names, values = [], None
            filenames = sorted((p.name for p in image_dir.glob("*.jpg")), key=lambda n: int(Path(n).stem))
            if not filenames:
                raise DataError(f"{self.name}: no <i>.jpg images in {image_dir}")
        ids = []
        for name in filenames:
            if not (image_dir / name).is_file():
                raise DataError(f"{attr_path} lists {name}, which is not in {image_dir}")
            try:
                ids.append(int(Path(name).stem))
            except ValueError as exc:
                raise DataError(f"{image_dir / name}: expected images named <i>.jpg with an integer i") from exc
        return ids, names, values

    def splits(self, ids: list[int]) -> dict[str, torch.Tensor]:
        root = self.root()
        mapping_path = root / MAPPING_FILE
        partition_path = find_file(root, "list_eval_partition.txt", "list_eval_partition.csv")
        if not (mapping_path.is_file() and partition_path is not None):
            return seeded_splits(len(ids), self.val_size, self.test_size, self.seed)
        partition = read_partition(partition_path)
        original = {}
        with open(mapping_path) as fh:
            for line_no, line in enumerate(fh.read().splitlines()[1:], start=2):  # header: idx orig_idx orig_file
                fields = line.split()
                if fields:
                    if len(fields) != 3:
                        raise DataError(f"{mapping_path}, line {line_no}: expected 'idx orig_idx orig_file'")
                    original[int(fields[0])] = fields[2]
        codes = []
        for i in ids:
            if i not in original or original[i] not in partition:
                raise DataError(f"image {i}: no CelebA partition through {mapping_path} and {partition_path}")
            codes.append(partition[original[i]])
        codes_t = torch.tensor(codes)
        return {name: torch.nonzero(codes_t == code).flatten() for code, name in PARTITION_NAMES.items()}

    def cache(self, ids: list[int]) -> ArrayCache:
        return dataset_cache(
            self.name,
            self.root().resolve(),
            self.cache_dir,
            self.image_size,
            mask=self.mask_size,
            n=len(ids),
            first=ids[0],
            last=ids[-1],
        )

    def prepare_data(self) -> None:
        ids, _, _ = self.index()
        cache = self.cache(ids)
        if not cache.complete:
            root = self.root()
            log.info(
                "%s: caching %d images and masks at %dpx in %s (once)",
                self.name,
                len(ids),
                self.image_size,
                cache.folder,
            )
            check_masks(root, ids)
            s = self.image_size
            cache.build(
                len(ids),
                {"image": ((3, s, s), np.uint8), "mask": ((s, s), np.uint8)},
                _ItemLoader(root, [root / IMAGE_DIR / f"{i}.jpg" for i in ids], ids, s, self.mask_size),
                workers=self.build_workers,
            )

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        ids, names, values = self.index()
        cache = self.cache(ids)
        if not cache.complete:
            self.prepare_data()
        arrays = cache.open()
        tensors = {"image": arrays["image"], "mask": arrays["mask"]}
        if values is not None:
            columns = select_attributes(names, self.attributes)
            self.attribute_names = [names[c] for c in columns]
            tensors["attributes"] = (values[:, columns] > 0).float()
        elif self.attributes:
            raise ConfigError(
                "data.attributes", self.attributes, f"{ATTRIBUTE_FILE} is missing, so no attributes exist"
            )
        return tensors, self.splits(ids)

    def batch_transform(self) -> MaskTarget:
        return MaskTarget(self.lookup if self.target == "binary" else None)


class MaskTarget:
    """Batch transform: class map -> long [B, H, W], or with a lookup -> float [B, 1, H, W]."""

    def __init__(self, lookup: torch.Tensor | None) -> None:
        self.lookup = lookup

    def __call__(self, batch: Batch) -> Batch:
        mask = batch["mask"].long()
        batch["mask"] = mask if self.lookup is None else self.lookup[mask].unsqueeze(1)
        return batch
