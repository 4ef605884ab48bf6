"""Images/s of the FashionMNIST train loader vs the default VAE's training step (JSON lines).

The loader must never be what training waits for: `loader_to_step` is how many times faster the
loader delivers images than the model consumes them (goal: > 1, the larger the better).
Usage: python bench/loader_vs_step.py [--batches 100] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from src.data.mnist_like import FashionMNISTDataModule
from src.models.optim import build_optimizer


def model_from_config(conf_dir: str):
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"])
    with open_dict(cfg):
        cfg.model.image_size, cfg.model.in_channels = 28, 1
    return instantiate(cfg.model, _convert_="all")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(batch_size=args.batch_size, val_size=5000)
    dm.setup("fit")
    loader = dm.train_dataloader()

    start = time.perf_counter()
    images = 0
    for i, batch in enumerate(loader):
        images += len(batch["image"])
        if i + 1 == args.batches:
            break
    loader_ips = images / (time.perf_counter() - start)

    model = model_from_config(str(Path(__file__).resolve().parents[1] / "conf"))
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    model.train()
    batches = [b for _, b in zip(range(args.batches), loader)]
    for batch in batches[:5]:  # warm-up
        model.loss_terms(batch, 1.0)["loss"].backward()
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        model.loss_terms(batch, 1.0)["loss"].backward()
        optimizer.step()
    step_ips = len(batches) * args.batch_size / (time.perf_counter() - start)
    common = {
        "machine": platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "batches": args.batches,
    }
    print(json.dumps({"bench": "fashion_loader", "images_per_s": round(loader_ips), **common}))
    print(json.dumps({"bench": "fashion_vae_train_step", "images_per_s": round(step_ips), **common}))
    print(
        json.dumps(
            {
                "bench": "loader_to_step",
                "ratio": round(loader_ips / step_ips, 1),
                "goal": "> 1",
                "met": loader_ips > step_ips,
            }
        )
    )


if __name__ == "__main__":
    main()
