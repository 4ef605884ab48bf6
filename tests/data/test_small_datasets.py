"""notMNIST, CIFAR-10, scikit-learn digits and MNIST readers on fixtures in their real formats."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from src.base.errors import ConfigError, DataError
from src.data.cifar10 import CIFAR10DataModule, read_batch
from src.data.digits import DigitsDataModule
from src.data.mnist_like import MNISTDataModule
from src.data.notmnist import NotMNISTDataModule
from src.testing.formats import write_cifar10, write_fashion_fixture, write_notmnist


def test_notmnist_skips_unreadable_files_counts_and_says_so_once(tmp_path, caplog):
    images = write_notmnist(tmp_path / "nm", per_letter=6, broken=2)
    dm = NotMNISTDataModule(
        root=str(tmp_path / "nm"), cache_dir=str(tmp_path / "cache"), build_workers=1, val_size=6, test_size=6
    )
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 2 unreadable file(s)" in warnings[0].getMessage()
    assert sorted(os.path.basename(p) for p in dm.skipped) == ["zz_broken0.png", "zz_broken1.png"]
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 60
    # labels follow the letter folders and pixels are the files' pixels
    batch = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    paths = sorted(images)  # A..J, then file name
    for row, i in enumerate(batch["index"].tolist()):
        assert batch["label"][row] == "ABCDEFGHIJ".index(os.path.basename(os.path.dirname(paths[i])))
        np.testing.assert_array_equal((batch["image"][row, 0] * 255).round().byte().numpy(), images[paths[i]])


def test_notmnist_missing_letter_folder(tmp_path):
    write_notmnist(tmp_path / "nm", per_letter=2, broken=0)
    (tmp_path / "nm" / "notMNIST_small" / "J").rename(tmp_path / "nm" / "notMNIST_small" / "j_moved")
    dm = NotMNISTDataModule(root=str(tmp_path / "nm"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"notMNIST_small/J not found"):
        dm.setup("fit")


def test_cifar10_reads_official_pickles(tmp_path):
    written = write_cifar10(tmp_path / "c", per_batch=20)
    dm = CIFAR10DataModule(root=str(tmp_path / "c"), val_size=10)
    dm.setup("fit")
    assert dm.class_names[:3] == ["airplane", "automobile", "bird"]
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [90, 10, 20]
    data, labels = written["data_batch_2"]
    # row 3 of batch 2 is row 23 overall; CIFAR stores 1024 red, then green, then blue values
    image = dm.train_set.images[23]
    np.testing.assert_array_equal(image[0].numpy().ravel(), data[3, :1024])
    np.testing.assert_array_equal(image[2].numpy().ravel(), data[3, 2048:])
    assert dm.train_set.fields["label"][23] == labels[3]
    test_data, test_labels = written["test_batch"]
    np.testing.assert_array_equal(dm.test_set.images[dm.test_set.indices[0]].numpy().reshape(-1), test_data[0])


def test_cifar10_refuses_foreign_pickles(tmp_path):
    write_cifar10(tmp_path / "c", per_batch=4)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 python batch.*refusing to load"):
        read_batch(path)
    with pytest.raises(ConfigError, match="data.root"):
        CIFAR10DataModule(root=None).setup("fit")


def test_digits_are_scikit_learns(tmp_path):
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(val_size=0.1, test_size=0.1, seed=0)
    dm.setup("fit")
    n = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
    assert n == 1797 and dm.image_shape == (1, 28, 28)
    raw = load_digits()
    # oracle: the 8x8 image scaled to 0..255 as uint8, resized with torch's antialiased bilinear
    src = torch.from_numpy(raw.images[5] * 255 / 16).round().clamp(0, 255).to(torch.uint8).float().view(1, 1, 8, 8)
    ref = torch.nn.functional.interpolate(src, size=(28, 28), mode="bilinear", antialias=True).round()
    np.testing.assert_array_equal(dm.train_set.images[5, 0].numpy(), ref[0, 0].clamp(0, 255).byte().numpy())
    assert dm.train_set.fields["label"][5] == raw.target[5]


def test_mnist_reads_idx_from_root(tmp_path):
    write_fashion_fixture(tmp_path / "mnist")  # same IDX file names as MNIST
    dm = MNISTDataModule(root=str(tmp_path / "mnist"), download=False, val_size=40)
    dm.setup("fit")
    assert len(dm.train_set) == 200 and dm.class_names[0] == "0"
    with pytest.raises(DataError, match="MNIST not found"):
        MNISTDataModule(root=str(tmp_path / "none"), download=False).setup("fit")
