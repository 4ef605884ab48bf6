import numpy as np
import pytest
import torch

from src.data.cache import ArrayCache, fingerprint


class Rows:
    def __call__(self, i):
        if i == 3:
            return None
        return {"x": np.full((2, 2), i, np.uint8), "y": np.array([i * 10], np.int16)}


class Failing:
    def __call__(self, i):
        if i == 70:
            raise ValueError("bad row 70")
        return {"x": np.zeros((2, 2), np.uint8)}


@pytest.mark.parametrize("workers", [1, 2])
def test_build_and_memory_map(tmp_path, workers):
    cache = ArrayCache(tmp_path / "c")
    assert not cache.complete
    cache.build(100, {"x": ((2, 2), np.uint8), "y": ((1,), np.int16)}, Rows(), meta={"k": 1}, workers=workers)
    assert cache.complete and cache.meta()["k"] == 1
    arrays = cache.open()
    assert arrays["x"].shape == (100, 2, 2) and arrays["x"].dtype == torch.uint8
    assert arrays["x"][42].unique().tolist() == [42] and arrays["y"][7].item() == 70
    assert arrays["valid"].tolist() == [i != 3 for i in range(100)]
    # copy-on-write maps: writing to a tensor never changes the file
    arrays["x"][0] = 99
    assert ArrayCache(tmp_path / "c").open()["x"][0].unique().tolist() == [0]


def test_failed_build_leaves_nothing(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    with pytest.raises(ValueError, match="bad row 70"):
        cache.build(100, {"x": ((2, 2), np.uint8)}, Failing(), workers=2)
    assert not cache.complete and list(tmp_path.iterdir()) == []


def test_fingerprint_changes_with_content():
    assert fingerprint(a=1, b="x") == fingerprint(b="x", a=1)
    assert fingerprint(a=1) != fingerprint(a=2)
