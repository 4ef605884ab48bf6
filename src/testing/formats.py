"""Writers for small datasets in the exact official on-disk formats, independent of src/."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

OFFICIAL_40 = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
HQ_PARTS = [
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
]


def random_photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly) of the given size."""
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def write_celeba(root: Path, n: int = 12, csv_variant: bool = False, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """img_align_celeba/000001.jpg.. (178x218), attribute and partition files. Returns the
    attribute matrix in {-1, 1} and the partition codes."""
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    for name in names:
        Image.fromarray(random_photo(rng, 178, 218)).save(images / name, quality=95)
    values = rng.choice([-1, 1], size=(n, 40))
    partition = [0] * (n - 4) + [1, 1, 2, 2]
    if csv_variant:
        lines = ["image_id," + ",".join(OFFICIAL_40)]
        lines += [name + "," + ",".join(str(v) for v in row) for name, row in zip(names, values)]
        (root / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{name},{p}\n" for name, p in zip(names, partition))
        )
    else:
        # the official file: count, names (trailing space), rows of right-aligned values: "-1  1 -1"
        rows = [name + " " + " ".join(f"{v:>2d}" for v in row) for name, row in zip(names, values)]
        (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(OFFICIAL_40) + " \n" + "\n".join(rows) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{name} {p}\n" for name, p in zip(names, partition)))
    return values, partition


def write_celebamask_hq(
    root: Path,
    ids: list[int],
    image_size: int = 96,
    mask_size: int = 48,
    seed: int = 0,
    attributes: bool = True,
    mapping: dict[int, str] | None = None,
) -> dict[int, dict[str, np.ndarray]]:
    """CelebA-HQ-img/<i>.jpg, CelebAMask-HQ-mask-anno/<i // 2000>/<iiiii>_<part>.png (binary,
    0/255, only the parts present), attribute file; optional mapping file. Returns the masks."""
    rng = np.random.default_rng(seed)
    (root / "CelebA-HQ-img").mkdir(parents=True)
    masks: dict[int, dict[str, np.ndarray]] = {}
    for i in ids:
        Image.fromarray(random_photo(rng, image_size, image_size)).save(root / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        masks[i] = {}
        for part in rng.choice(HQ_PARTS, size=5, replace=False):
            y, x = rng.integers(0, mask_size - 8, size=2)
            h, w = rng.integers(6, mask_size // 2, size=2)
            mask = np.zeros((mask_size, mask_size), np.uint8)
            mask[y : y + h, x : x + w] = 255
            Image.fromarray(mask).save(folder / f"{i:05d}_{part}.png")
            masks[i][str(part)] = mask
    if attributes:
        values = rng.choice([-1, 1], size=(len(ids), 40))
        rows = [f"{i}.jpg " + " ".join(f"{v:>2d}" for v in row) for i, row in zip(ids, values)]
        (root / "CelebAMask-HQ-attribute-anno.txt").write_text(
            f"{len(ids)}\n{' '.join(OFFICIAL_40)}\n" + "\n".join(rows)
        )
    if mapping is not None:
        lines = ["idx         orig_idx    orig_file"] + [f"{i} {int(f[:6]) - 1} {f}" for i, f in mapping.items()]
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    return masks


def write_notmnist(root: Path, per_letter: int = 6, seed: int = 0, broken: int = 2) -> dict[str, np.ndarray]:
    """notMNIST_small/A..J/<name>.png (28x28 grey) plus `broken` unreadable files, as the real
    archive has. Returns the readable images by path."""
    rng = np.random.default_rng(seed)
    out = {}
    for letter in "ABCDEFGHIJ":
        folder = root / "notMNIST_small" / letter
        folder.mkdir(parents=True)
        for k in range(per_letter):
            image = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            path = folder / f"{letter}{k:03d}.png"
            Image.fromarray(image).save(path)
            out[str(path)] = image
    for k in range(broken):
        (root / "notMNIST_small" / "ABCDEFGHIJ"[k] / f"zz_broken{k}.png").write_bytes(
            b"" if k == 0 else b"\x89PNG garbage"
        )
    return out


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta as the official pickles
    (bytes keys, 'data' uint8 [N, 3072] in channel-major order)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch},
                fh,
                protocol=2,
            )
        out[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, fh, protocol=2)
    return out


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """IDX encoding written out by hand from the format's definition (independent of src/)."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def class_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """Grey images whose content depends on the class: a bar at a class-specific row, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) * (size - 6) // 10
        images[i, row : row + 4, 3 : size - 3] = 220
    return images


def write_fashion_fixture(folder: Path, n_train: int = 240, n_test: int = 80, gzip_test: bool = False) -> Path:
    """The four FashionMNIST IDX files (train gzipped, test plain unless `gzip_test`: both
    occur in the wild)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, n, gz in (("train", n_train, True), ("t10k", n_test, gzip_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, array, code in (
            ("images-idx3-ubyte", class_images(labels, seed=n), 0x08),
            ("labels-idx1-ubyte", labels, 0x08),
        ):
            data = idx_bytes(array, code)
            name = f"{split}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder
