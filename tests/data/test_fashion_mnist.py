import functools
import http.server
import shutil
import threading

import numpy as np
import pytest
import torch

from src.base.errors import ConfigError, DataError
from src.data.in_memory import split_indices
from src.data.mnist_like import FashionMNISTDataModule
from src.testing.formats import idx_bytes, write_fashion_fixture
from tests.conftest import FASHION_SYSTEM_DIR


def make_dm(**kwargs):
    defaults = dict(search_system=False, download=False, val_size=40, batch_size=32, seed=3)
    return FashionMNISTDataModule(**{**defaults, **kwargs})


def test_loads_fixture_with_seeded_split(fashion_fixture):
    dm = make_dm(root=str(fashion_fixture))
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 200 and len(dm.val_set) == 40 and len(dm.test_set) == 80
    assert dm.image_shape == (1, 28, 28)
    # train and val partition the training file; test is the t10k file
    both = torch.cat([dm.train_set.indices, dm.val_set.indices]).sort().values
    assert torch.equal(both, torch.arange(240))
    assert torch.equal(dm.test_set.indices, torch.arange(240, 320))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8  # as stored: a quarter of the bytes to copy to the device
    stored = batch["image"].clone()
    batch = dm.on_after_batch_transfer(batch, 0)  # there, to float in [0, 1]
    assert torch.equal(batch["image"], stored.float() / 255)
    assert batch["image"].shape == (32, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].dtype == torch.long
    # the same seed gives the same split; another seed another
    again = make_dm(root=str(fashion_fixture))
    again.setup("fit")
    assert torch.equal(again.val_set.indices, dm.val_set.indices)
    other = make_dm(root=str(fashion_fixture), seed=4)
    other.setup("fit")
    assert not torch.equal(other.val_set.indices, dm.val_set.indices)


def test_batch_matches_per_sample_indexing(fashion_fixture):
    dm = make_dm(root=str(fashion_fixture))
    dm.setup("fit")
    batch = dm.val_set.__getitems__([3, 0, 5])
    for row, i in enumerate([3, 0, 5]):
        single = dm.val_set[i]
        assert torch.equal(batch["image"][row], single["image"])
        assert batch["label"][row] == single["label"]
        assert torch.equal(single["image"], dm.val_set.images[dm.val_set.indices[i]].float() / 255)


def test_split_indices_disjoint_and_fraction():
    train, val = split_indices(100, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    with pytest.raises(ConfigError, match="data.val_size"):
        split_indices(10, 10, seed=0)


def test_resize_and_channels(fashion_fixture):
    dm = make_dm(root=str(fashion_fixture), image_size=32, channels=3)
    dm.setup("fit")
    assert dm.image_shape == (3, 32, 32)
    img = dm.train_set.images[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_root_is_searched_before_system_folder(tmp_path, fashion_fixture):
    dm = make_dm(root=str(fashion_fixture), search_system=True)
    assert dm.locate() == fashion_fixture


@pytest.mark.skipif(not FASHION_SYSTEM_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_system_folder_holds_the_real_dataset():
    dm = FashionMNISTDataModule(search_system=True, download=False, val_size=5000)
    assert dm.locate() == FASHION_SYSTEM_DIR
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 55000 and len(dm.val_set) == 5000 and len(dm.test_set) == 10000
    counts = torch.bincount(dm.test_set.fields["label"][dm.test_set.indices], minlength=10)
    assert counts.tolist() == [1000] * 10  # the official test set is balanced


def test_missing_dataset_message_says_where_and_how(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    dm = make_dm(root=str(empty))
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "FashionMNIST not found" in message
    assert str(empty) in message and "missing train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.root=" in message and "download disabled" in message


def test_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNISTDataModule, "url", "http://127.0.0.1:9/")  # discard port: refused
    dm = make_dm(root=str(tmp_path / "dl"), download=True)
    with pytest.raises(DataError, match=r"download from http://127.0.0.1:9/ failed"):
        dm.locate()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_from_a_server(tmp_path, monkeypatch):
    served = write_fashion_fixture(tmp_path / "served", gzip_test=True)  # the official source serves .gz
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(FashionMNISTDataModule, "url", f"http://127.0.0.1:{server.server_port}/")
        target = tmp_path / "downloaded"
        dm = make_dm(root=None, download=True, download_dir=str(target))
        dm.prepare_data()
        dm.setup("fit")
    finally:
        server.shutdown()
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in served.iterdir())
    assert len(dm.train_set) + len(dm.val_set) == 240


def test_labels_not_matching_images(tmp_path, fashion_fixture):
    broken = tmp_path / "broken"
    shutil.copytree(fashion_fixture, broken)
    (broken / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8), 0x08))
    dm = make_dm(root=str(broken))
    with pytest.raises(DataError, match="5 labels for 80 images"):
        dm.setup("test")
