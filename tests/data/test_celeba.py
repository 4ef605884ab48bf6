import numpy as np
import pytest
import torch

from src.base.errors import ConfigError, DataError
from src.data.celeba import CELEBA_ATTRIBUTES, CelebADataModule, read_attributes, read_partition
from src.data.images import load_square_image
from src.testing.formats import OFFICIAL_40, write_celeba


def make_dm(root, tmp_path, **kwargs):
    return CelebADataModule(root=str(root), cache_dir=str(tmp_path / "cache"), build_workers=1, **kwargs)


def test_attribute_names_are_the_official_40():
    assert CELEBA_ATTRIBUTES == OFFICIAL_40 and len(CELEBA_ATTRIBUTES) == 40


@pytest.mark.parametrize("csv_variant", [False, True])
def test_reads_attributes_and_partition(tmp_path, csv_variant):
    values, partition = write_celeba(tmp_path, n=10, csv_variant=csv_variant)
    suffix = ".csv" if csv_variant else ".txt"
    names, files, read = read_attributes(tmp_path / f"list_attr_celeba{suffix}")
    assert names == OFFICIAL_40
    assert files == [f"{i:06d}.jpg" for i in range(1, 11)]
    assert read.dtype == torch.int8 and torch.equal(read, torch.from_numpy(values).to(torch.int8))
    assert read_partition(tmp_path / f"list_eval_partition{suffix}") == dict(zip(files, partition))


@pytest.mark.parametrize("csv_variant", [False, True])
def test_datamodule_splits_attributes_and_cache(tmp_path, csv_variant):
    values, partition = write_celeba(tmp_path / "celeba", n=12, csv_variant=csv_variant)
    dm = make_dm(tmp_path / "celeba", tmp_path, image_size=32, attributes=["Smiling", "Eyeglasses", "Young"])
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8, 2, 2]
    assert dm.test_set.indices.tolist() == [10, 11]  # partition code 2
    assert dm.attribute_names == ["Smiling", "Eyeglasses", "Young"]
    batch = dm.val_set.__getitems__([0, 1])
    cols = [OFFICIAL_40.index(n) for n in ["Smiling", "Eyeglasses", "Young"]]
    expected = torch.from_numpy((values[[8, 9]][:, cols] > 0).astype(np.float32))
    assert torch.equal(batch["attributes"], expected)
    assert batch["image"].shape == (2, 3, 32, 32)
    # the cache holds exactly what decoding each file directly gives
    for i in range(12):
        direct = load_square_image(tmp_path / "celeba" / "img_align_celeba" / f"{i + 1:06d}.jpg", 32)
        np.testing.assert_array_equal(dm.train_set.images[i].numpy(), direct)
    # a second datamodule reuses the cache (no rebuild): same folder, same bytes
    again = make_dm(tmp_path / "celeba", tmp_path, image_size=32)
    again.setup("fit")
    assert torch.equal(again.train_set.images, dm.train_set.images)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert again.train_set.fields["attributes"].shape == (12, 40)


def test_centre_crop_and_resize_match_pil(tmp_path):
    from PIL import Image

    write_celeba(tmp_path, n=1)
    path = tmp_path / "img_align_celeba" / "000001.jpg"
    out = load_square_image(path, 64)
    # oracle: full decode, centre 178x178 square, bicubic resize
    with Image.open(path) as img:
        ref = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC, box=(0, 20, 178, 198)))
    assert out.shape == (3, 64, 64)
    assert np.abs(out.transpose(1, 2, 0).astype(int) - ref.astype(int)).mean() < 3  # libjpeg draft scaling


def test_unknown_attribute_names_the_key(tmp_path):
    write_celeba(tmp_path / "c", n=6)
    dm = make_dm(tmp_path / "c", tmp_path, attributes=["Smiling", "Happy"])
    with pytest.raises(ConfigError, match=r"data.attributes.*\['Happy'\].*available: 5_o_Clock_Shadow"):
        dm.setup("fit")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="data.root.*CelebA cannot be downloaded"):
        CelebADataModule(root=None).setup("fit")
    with pytest.raises(DataError, match="root not found"):
        make_dm(tmp_path / "nowhere", tmp_path).setup("fit")

    write_celeba(tmp_path / "c", n=6)
    attr = tmp_path / "c" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # one value short on line 5
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt, line 5: expected a file name and 40 values, got 39"):
        make_dm(tmp_path / "c", tmp_path).setup("fit")

    lines[4] = lines[4] + "  1"
    lines[0] = "7"
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="announces 7 images but 6 rows follow"):
        make_dm(tmp_path / "c", tmp_path).setup("fit")

    lines[0] = "6"
    attr.write_text("\n".join(lines) + "\n")
    (tmp_path / "c" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(DataError, match="lists 000003.jpg, which is not in"):
        make_dm(tmp_path / "c", tmp_path).setup("fit")

    (tmp_path / "c" / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"unreadable image .*000003.jpg"):
        make_dm(tmp_path / "c", tmp_path).setup("fit")
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]  # no half cache left

    (tmp_path / "c" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match=r"list_eval_partition.txt/.csv not found"):
        make_dm(tmp_path / "c", tmp_path).setup("fit")
