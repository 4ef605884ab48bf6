import gzip

import numpy as np
import pytest
import torch

from src.base.errors import DataError
from src.data.idx import read_idx, write_idx
from src.testing.formats import idx_bytes


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_every_type_plain_and_gzipped(tmp_path, dtype, code, compressed):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5, 4)) * 50).astype(dtype)
    data = idx_bytes(array, code)
    # the name says nothing about compression: the reader must look at the content
    path = tmp_path / "file-idx3"
    path.write_bytes(gzip.compress(data) if compressed else data)
    out = read_idx(path)
    assert out.shape == (3, 5, 4)
    assert out.dtype == torch.from_numpy(array).dtype
    np.testing.assert_array_equal(out.numpy(), array)


def test_read_idx_labels_1d(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels, 0x08))
    assert read_idx(path).tolist() == [7, 2, 1, 0, 4]


def test_magic_header_layout_matches_the_format(tmp_path):
    # 0x00000803 then dims as big-endian uint32, exactly as MNIST's train-images file starts
    path = write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    assert len(raw) == 16 + 2 * 28 * 28


def test_write_read_roundtrip_gz(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 10
    path = write_idx(tmp_path / "a.gz", array)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path).numpy(), array)


def test_truncated_file_names_the_file(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x08)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_bad_magic_and_unknown_type(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    unknown = tmp_path / "unknown"
    unknown.write_bytes(b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DataError, match="unknown IDX type code 0x07"):
        read_idx(unknown)


def test_corrupt_gzip_and_missing_file(tmp_path):
    corrupt = tmp_path / "c.gz"
    corrupt.write_bytes(gzip.compress(idx_bytes(np.zeros((4,), np.uint8), 0x08))[:-6])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(corrupt)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")
