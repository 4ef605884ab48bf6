"""Decode a dataset once into resized uint8 arrays on disk; memory-map them afterwards.

A cache is a folder of .npy files plus meta.json (which records each file's size), built in a
temporary folder and renamed into place only when complete, so an interrupted build never
leaves a half cache behind; a cache whose files were truncated or deleted afterwards is
rebuilt, and the temporary folders of builds that were killed are removed by the next build.
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

from src.base.errors import DataError

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
        """meta.json is there and every file it lists has the size it was written with (a cache
        that fails this is rebuilt: see `damage`)."""
        return (self.folder / "meta.json").is_file() and self.damage() is None

    def damage(self) -> str | None:
        """What is wrong with a built cache (a file missing, truncated or grown), or None."""
        try:
            files = self.meta().get("files", {})
        except (OSError, ValueError) as exc:
            return f"meta.json unreadable ({exc})"
        for name, size in files.items():
            path = self.folder / name
            actual = path.stat().st_size if path.is_file() else None
            if actual != size:
                return f"{name}: {'missing' if actual is None else f'{actual} bytes'}, {size} expected"
        return None

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
        remove_abandoned(self.folder)
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
            files = {p.name: p.stat().st_size for p in sorted(tmp.glob("*.npy"))}
            (tmp / "meta.json").write_text(
                json.dumps({"n": n, "version": CACHE_VERSION, **(meta or {}), "files": files}, indent=1)
            )
            if self.complete:  # another process finished first: keep theirs
                shutil.rmtree(tmp)
            else:
                replace_folder(tmp, self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def open(self) -> dict[str, torch.Tensor]:
        """Every array as a tensor over a copy-on-write memory map (nothing read up front). A
        damaged cache is a DataError naming the folder (to delete it, or to let the datamodule
        rebuild it: it checks `complete` first)."""
        problem = self.damage() if (self.folder / "meta.json").is_file() else "meta.json missing: not built"
        if problem is not None:
            raise DataError(
                f"{self.folder}: damaged dataset cache ({problem}); delete the folder and run again to rebuild it"
            )
        out = {}
        for path in sorted(self.folder.glob("*.npy")):
            out[path.stem] = torch.from_numpy(np.load(path, mmap_mode="c"))
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(folder: Path) -> None:
    """Remove the `<folder>.tmp-<pid>` folders of builds whose process is gone (killed)."""
    for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s, left by a build that was killed", tmp)


def replace_folder(new: Path, folder: Path) -> None:
    """Put the finished folder `new` in place of `folder` (a damaged earlier build, or nothing)."""
    if folder.exists():
        log.warning("%s was damaged; replaced by a new build", folder)
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(new, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, folder)


def dataset_cache(name: str, root: Path, cache_dir: Path | None, image_size: int, **parts: Any) -> ArrayCache:
    """The cache of dataset `name` decoded at `image_size` px from `root`: the folder
    `<cache_dir, or root/.latent_lens_cache>/<name, lower case>-<size>px-<key>`, the key a
    fingerprint of the name, root, size and `parts` (whatever else decides the content)."""
    key = fingerprint(dataset=name, root=str(root), size=image_size, **parts)
    return ArrayCache((cache_dir or root / ".latent_lens_cache") / f"{name.lower()}-{image_size}px-{key}")
