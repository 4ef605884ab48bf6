import os

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


def build_rows(cache: ArrayCache) -> None:
    cache.build(100, {"x": ((2, 2), np.uint8), "y": ((1,), np.int16)}, Rows(), workers=1)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "header"])
def test_a_damaged_cache_is_named_and_rebuilt(damage, tmp_path):
    from src.base.errors import DataError

    cache = ArrayCache(tmp_path / "c")
    build_rows(cache)
    x = cache.folder / "x.npy"
    if damage == "truncated":
        x.write_bytes(x.read_bytes()[:-50])
    elif damage == "deleted":
        x.unlink()
    else:
        x.write_bytes(x.read_bytes()[:10])
    assert not cache.complete  # a datamodule checks this and builds again
    with pytest.raises(DataError, match=rf"{cache.folder}: damaged dataset cache \(x.npy: .*\); delete the folder"):
        cache.open()
    build_rows(cache)
    assert cache.complete and cache.open()["x"][42].unique().tolist() == [42]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # the damaged build is gone


def test_a_killed_build_leaves_no_temporary_folder_for_good(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f"c.tmp-{int(dead.stdout)}"  # a build whose process is gone
    (abandoned / "x.npy").parent.mkdir(parents=True)
    (abandoned / "x.npy").write_bytes(b"half")
    running = tmp_path / f"c.tmp-{os.getpid()}-x"  # not a pid: left alone
    running.mkdir()
    build_rows(ArrayCache(tmp_path / "c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", running.name]


def test_a_killed_synthfaces_render_is_cleaned_by_the_next(tmp_path):
    import subprocess
    import sys

    from src.data.synthfaces.files import write_dataset

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f"faces.tmp-{int(dead.stdout)}"
    abandoned.mkdir()
    write_dataset(tmp_path / "faces", size=32, count=4, seed=0, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]
