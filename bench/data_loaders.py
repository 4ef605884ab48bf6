"""Each in-memory datamodule's train loader vs the training step it feeds (JSON lines).

For FashionMNIST (Debian's IDX files), MNIST (IDX: the same arrays written under MNIST's file
names), notMNIST (PNG folders), CIFAR-10 (the python pickles), sklearn's digits and CelebA's
official layout at 128 px (`--celeba-count` JPEGs by the tests' writer, decoded once into the
uint8 cache; with 0 and with `--workers` loader processes): images/s of a shuffled epoch through
the train DataLoader (best of 3, after the one-time read; batches are uint8, as copied to the
device), and images/s of the experiment's own VAE training step on the bench device (the face
VAE for CelebA). `loader_to_step` > 1 means the loader is never what training waits for (goal).
Usage: python bench/data_loaders.py [--device auto] [--step-batches 20] [--notmnist-per-letter 500]
       [--celeba-count 3000] [--workers 2]
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path

from common import compose_cfg, emit, machine, parse_args, train_step_rate
from hydra.utils import instantiate

# the tests' real-format writers (common.py puts the repository on the path)
from src.testing.formats import write_celeba, write_cifar10, write_notmnist

FASHION = Path("/usr/share/datasets/fashion-mnist")


def mnist_from_fashion(folder: Path) -> Path:
    """MNIST's four IDX file names holding FashionMNIST's arrays (the format is the same)."""
    folder.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / name).write_bytes(gzip.decompress((FASHION / f"{name}.gz").read_bytes()))
    return folder


def loader_rate(dm, epochs: int = 3) -> tuple[float, list[dict]]:
    """Best images/s over `epochs` shuffled epochs of one train loader (as Lightning iterates it:
    persistent workers stay), and the first batches (for the step)."""
    rates, first = [], []
    loader = dm.train_dataloader()
    for _ in range(epochs):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image"])
            if len(first) < 64:
                first.append(batch)
        rates.append(n / (time.perf_counter() - start))
    return max(rates), first


def main() -> None:
    args, device = parse_args(
        step_batches=20,
        notmnist_per_letter=500,
        cifar_per_batch=2000,
        celeba_count=3000,
        workers=2,
        celeba_step_batches=3,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-loaders-"))
    try:
        roots = {"digits": None}
        if FASHION.is_dir():
            roots["fashion"] = str(FASHION)
            roots["mnist"] = str(mnist_from_fashion(tmp / "mnist"))
        write_notmnist(tmp / "notmnist", per_letter=args.notmnist_per_letter, seed=0, broken=0)
        roots["notmnist"] = str(tmp / "notmnist")
        write_cifar10(tmp / "cifar10", per_batch=args.cifar_per_batch, seed=0)
        roots["cifar10"] = str(tmp / "cifar10")
        write_celeba(tmp / "celeba", n=args.celeba_count, seed=0)
        celeba = [f"data.root={tmp / 'celeba'}", f"data.cache_dir={tmp / 'cache'}"]
        runs = [
            (name, [f"experiment={name}_vae", *([f"data.root={root}"] if root is not None else [])], args.step_batches)
            for name, root in roots.items()
        ]
        # workers kept between epochs, as on a GPU (fast.persistent_workers)
        runs += [
            (
                f"celeba_128px_workers_{w}",
                ["experiment=celeba_vae", *celeba, f"data.num_workers={w}", "fast.persistent_workers=true"],
                args.celeba_step_batches,
            )
            for w in (0, args.workers)
        ]
        step_cache = {}
        for name, overrides, step_batches in runs:
            cfg = compose_cfg(overrides, output_dir=tmp)
            dm = instantiate(cfg.data, _convert_="all")
            start = time.perf_counter()
            dm.prepare_data()
            dm.setup("fit")
            first_read = time.perf_counter() - start
            loader, batches = loader_rate(dm)
            if overrides[0] not in step_cache:  # one step rate per experiment
                model = instantiate(cfg.model, _convert_="all")
                step_cache[overrides[0]] = train_step_rate(model, batches[:step_batches], device)
            step = step_cache[overrides[0]]
            emit(
                f"loader_{name}",
                dataset=type(dm).__name__,
                train_images=len(dm.train_set),
                image_shape=list(batches[0]["image"].shape[1:]),
                batch_size=len(batches[0]["image"]),
                batch_dtype=str(batches[0]["image"].dtype).removeprefix("torch."),
                num_workers=dm.num_workers,
                first_read_s=round(first_read, 2),
                loader_images_per_s=round(loader),
                step_images_per_s=round(step),
                loader_to_step=round(loader / step, 1),
                goal="loader_to_step > 1",
                met=loader > step,
                **machine(device),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
