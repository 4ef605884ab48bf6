"""Face-dataset cache: build time and loader throughput (JSON lines).

Renders `--count` synthetic faces (default 5,000 at 64 px; the dataset default is 20,000) if absent,
then times, for the CelebAMask-HQ reader (images + masks) at 64 px and the CelebA reader (images + attributes) at
64 and 128 px: the one-time cache build, and full shuffled epochs over the memory-mapped cache
through the train DataLoader (goal: >= 5,000 images/s at 64 px). Also times the face VAE's
training step at 64 and 128 px (CPU), so the loader can be compared with what it feeds.
Usage: python bench/data_cache.py [--count 5000] [--data-dir data] [--epochs 2]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import emit_record

from src.data.celeba import CelebADataModule
from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.models.vae import VAE


def epoch_rate(dm, epochs: int) -> float:
    loader = dm.train_dataloader()
    rates = []
    for _ in range(epochs):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image"])
        rates.append(n / (time.perf_counter() - start))
    return max(rates)


def step_rate(image_size: int, batch_size: int = 128, steps: int = 20) -> float:
    model = VAE(
        image_size=image_size,
        in_channels=3,
        latent_dim=64,
        encoder={"channels": [32, 64, 64, 64]},
        norm="none",
        activation="leaky_relu",
        activation_kwargs={"negative_slope": 0.3},
        bias=True,
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    batch = {"image": torch.rand(batch_size, 3, image_size, image_size)}
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        opt.zero_grad()
        model.loss_terms(batch, 1.0)["loss"].backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    common = {"machine": platform.machine(), "threads": torch.get_num_threads(), "count": args.count}
    cache_root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        start = time.perf_counter()
        faces = SynthFacesDataModule(
            data_dir=args.data_dir, count=args.count, image_size=64, cache_dir=str(cache_root), batch_size=128
        )
        generated = not (Path(faces.root_arg) / "synthfaces.json").is_file()
        faces.generate()
        if generated:
            took = time.perf_counter() - start
            emit_record(
                {
                    "bench": "synthfaces_generate",
                    "seconds": round(took, 1),
                    "images_per_s": round(args.count / took),
                    **common,
                }
            )
        runs = [("celebamask_hq_reader", faces, 64)]
        for size in (64, 128):
            runs.append(
                (
                    f"celeba_reader_{size}px",
                    CelebADataModule(root=faces.root_arg, image_size=size, cache_dir=str(cache_root), batch_size=128),
                    size,
                )
            )
        rates = {}
        for name, dm, size in runs:
            start = time.perf_counter()
            dm.prepare_data()
            build = time.perf_counter() - start
            dm.setup("fit")
            rate = epoch_rate(dm, args.epochs)
            rates[name] = rate
            emit_record(
                {
                    "bench": f"cache_{name}",
                    "image_size": size,
                    "build_seconds": round(build, 1),
                    "build_images_per_s": round(args.count / build),
                    "epoch_images_per_s": round(rate),
                    "goal": ">= 5000 images/s at 64 px" if size == 64 else None,
                    "met": rate >= 5000 if size == 64 else None,
                    **common,
                }
            )
        for size in (64, 128):
            step = step_rate(size)
            loader = rates[f"celeba_reader_{size}px"]
            emit_record(
                {
                    "bench": f"face_vae_train_step_{size}px",
                    "images_per_s": round(step),
                    "celeba_loader_images_per_s": round(loader),
                    "loader_to_step": round(loader / step, 1),
                    "goal": "loader_to_step > 1",
                    "met": loader > step,
                    **common,
                }
            )
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
