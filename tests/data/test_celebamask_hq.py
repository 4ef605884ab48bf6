import numpy as np
import pytest
import torch
from PIL import Image

from src.base.errors import ConfigError, DataError
from src.data.celebamask_hq import PARTS, CelebAMaskHQDataModule, mask_path, read_class_map
from src.testing.formats import HQ_PARTS, write_celeba, write_celebamask_hq

IDS = [0, 1, 2, 3, 4, 1999, 2000, 2001, 2002, 2003]  # crosses the 2000-per-folder boundary


def make_dm(root, tmp_path, **kwargs):
    kwargs.setdefault("mask_size", 48)
    return CelebAMaskHQDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), build_workers=1, **kwargs)


def oracle_class_map(masks: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Per-pixel: the last part in the official order whose mask is set, else background."""
    out = np.zeros((size, size), np.uint8)
    for y in range(size):
        for x in range(size):
            for part in HQ_PARTS:
                if part in masks and masks[part][y, x]:
                    out[y, x] = PARTS.index(part)
    return out


def test_official_class_order():
    assert PARTS == ["background", *HQ_PARTS] and len(PARTS) == 19


def test_mask_paths_and_class_map(tmp_path):
    masks = write_celebamask_hq(tmp_path, IDS)
    assert mask_path(tmp_path, 2001, "hair") == tmp_path / "CelebAMask-HQ-mask-anno" / "1" / "02001_hair.png"
    for i in (0, 2001):
        np.testing.assert_array_equal(read_class_map(tmp_path, i, 48), oracle_class_map(masks[i], 48))


def test_datamodule_targets_and_seeded_split(tmp_path):
    masks = write_celebamask_hq(tmp_path / "hq", IDS)
    dm = make_dm(tmp_path / "hq", tmp_path, image_size=48, target="index")
    dm.setup("fit")
    sizes = [len(dm.train_set), len(dm.val_set), len(dm.test_set)]
    assert sizes == [8, 1, 1]
    all_idx = torch.cat([dm.train_set.indices, dm.val_set.indices, dm.test_set.indices]).sort().values
    assert torch.equal(all_idx, torch.arange(10))
    batch = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    assert batch["mask"].dtype == torch.long and batch["mask"].shape == (8, 48, 48)
    for row, i in enumerate(batch["index"].tolist()):
        np.testing.assert_array_equal(batch["mask"][row].numpy(), oracle_class_map(masks[IDS[i]], 48))
    assert batch["attributes"].shape == (8, 40)

    binary = make_dm(tmp_path / "hq", tmp_path, image_size=24, target="binary", parts=["hair", "hat"])
    binary.setup("fit")
    b = binary.train_set.__getitems__([0])
    i = IDS[int(b["index"][0])]
    full = oracle_class_map(masks[i], 48)
    small = np.asarray(Image.fromarray(full).resize((24, 24), Image.Resampling.NEAREST))
    expected = np.isin(small, [PARTS.index("hair"), PARTS.index("hat")]).astype(np.float32)
    assert b["mask"].shape == (1, 1, 24, 24)
    np.testing.assert_array_equal(b["mask"][0, 0].numpy(), expected)


def test_default_binary_mask_is_everything_but_skin(tmp_path):
    write_celebamask_hq(tmp_path / "hq", IDS)
    dm = make_dm(tmp_path / "hq", tmp_path, image_size=48)
    assert dm.parts == [p for p in HQ_PARTS if p != "skin"]
    assert dm.lookup.tolist() == [0.0, 0.0] + [1.0] * 17


def test_official_split_through_the_mapping(tmp_path):
    root = tmp_path / "hq"
    mapping = {i: f"{k + 1:06d}.jpg" for k, i in enumerate(IDS)}
    write_celebamask_hq(root, IDS, mapping=mapping)
    write_celeba(tmp_path / "celeba", n=10)  # partition: 6 train, 2 val, 2 test
    (root / "list_eval_partition.txt").write_text((tmp_path / "celeba" / "list_eval_partition.txt").read_text())
    dm = make_dm(root, tmp_path, image_size=48)
    dm.setup("fit")
    assert dm.val_set.indices.tolist() == [6, 7] and dm.test_set.indices.tolist() == [8, 9]


def test_mask_errors(tmp_path):
    write_celebamask_hq(tmp_path / "hq", IDS[:3])
    part = next((tmp_path / "hq" / "CelebAMask-HQ-mask-anno" / "0").glob("00001_*.png"))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(part)
    with pytest.raises(DataError, match=rf"{part.name}: mask is 40x40, expected 48x48"):
        make_dm(tmp_path / "hq", tmp_path, image_size=48).setup("fit")
    part.write_bytes(b"broken")
    with pytest.raises(DataError, match=rf"unreadable mask .*{part.name}"):
        make_dm(tmp_path / "hq", tmp_path, image_size=48).setup("fit")
    with pytest.raises(ConfigError, match=r"data.parts.*\['beard'\]"):
        make_dm(tmp_path / "hq", tmp_path, parts=["hair", "beard"])
    with pytest.raises(ConfigError, match="data.target"):
        make_dm(tmp_path / "hq", tmp_path, target="rgb")
