"""Decode a dataset once into resized uint8 arrays on disk; memory-map them afterwards.

A cache is a folder of .npy files plus meta.json, built in a temporary folder and renamed into
place only when complete, so an interrupted build never leaves a half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ItemLoader = Callable[[int], "dict[str, np.ndarray] | None"]


def fingerprint(**parts: Any) -> str:
    """Short stable hash of what determines a cache's content."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_worker_fn: Callable | None = None


def _set_worker_fn(fn: Callable) -> None:
    global _worker_fn
    _worker_fn = fn


def _call_worker_fn(arg: Any) -> Any:
    return _worker_fn(arg)


def parallel_map(fn: Callable, args, workers: int, ordered: bool = True, chunksize: int = 16) -> Iterator:
    """map(fn, args) over `workers` forked processes. `fn` (with whatever state it holds, e.g.
    20k file paths) reaches each worker once, through fork, instead of being pickled into
    every task."""
    if workers <= 1:
        yield from map(fn, args)
        return
    context = multiprocessing.get_context("fork")  # workers only decode/encode files: no CUDA
    with context.Pool(workers, initializer=_set_worker_fn, initargs=(fn,)) as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        yield from imap(_call_worker_fn, args, chunksize=chunksize)


def _iterate(load_item: ItemLoader, n: int, workers: int) -> Iterator[dict[str, np.ndarray] | None]:
    yield from parallel_map(load_item, range(n), workers if n >= 64 else 1, chunksize=64)


class ArrayCache:
    """Arrays named by key, each of shape [N, ...], in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def complete(self) -> bool:
        return (self.folder / "meta.json").is_file()

    def meta(self) -> dict[str, Any]:
        return json.loads((self.folder / "meta.json").read_text())

    def build(
        self,
        n: int,
        specs: dict[str, tuple[tuple[int, ...], np.dtype]],
        load_item: ItemLoader,
        meta: dict[str, Any] | None = None,
        workers: int | None = None,
    ) -> None:
        """Fill arrays [n, *shape] row by row from load_item(i); a None row is marked invalid
        (for datasets with known unreadable files) and recorded in the 'valid' array."""
        workers = workers if workers is not None else (os.cpu_count() or 1)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.folder.with_name(f"{self.folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            arrays = {
                key: open_memmap(tmp / f"{key}.npy", "w+", dtype, (n, *shape)) for key, (shape, dtype) in specs.items()
            }
            valid = np.ones(n, dtype=bool)
            for i, item in enumerate(_iterate(load_item, n, workers)):
                if item is None:
                    valid[i] = False
                    continue
                for key, array in arrays.items():
                    array[i] = item[key]
            for array in arrays.values():
                array.flush()
            del arrays
            np.save(tmp / "valid.npy", valid)
            (tmp / "meta.json").write_text(json.dumps({"n": n, "version": CACHE_VERSION, **(meta or {})}, indent=1))
            if self.complete:  # another process finished first: keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def open(self) -> dict[str, torch.Tensor]:
        """Every array as a tensor over a copy-on-write memory map (nothing read up front)."""
        out = {}
        for path in sorted(self.folder.glob("*.npy")):
            out[path.stem] = torch.from_numpy(np.load(path, mmap_mode="c"))
        return out


def dataset_cache(name: str, root: Path, cache_dir: Path | None, image_size: int, **parts: Any) -> ArrayCache:
    """The cache of dataset `name` decoded at `image_size` px from `root`: the folder
    `<cache_dir, or root/.latent_lens_cache>/<name, lower case>-<size>px-<key>`, the key a
    fingerprint of the name, root, size and `parts` (whatever else decides the content)."""
    key = fingerprint(dataset=name, root=str(root), size=image_size, **parts)
    return ArrayCache((cache_dir or root / ".latent_lens_cache") / f"{name.lower()}-{image_size}px-{key}")
