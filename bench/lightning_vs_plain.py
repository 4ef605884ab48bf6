"""Time per training epoch: the Lightning VAE loop vs a plain PyTorch loop (JSON lines).

Same model (the default fashion_vae ConvVAE), same in-memory FashionMNIST batches, same batch
size and optimizer; Lightning runs with no logger, checkpointing, progress bar, validation or
callbacks, so the ratio is the cost of the loop itself (hooks, logging of the loss terms).
The two alternate `--repeats` times and the ratio of medians is reported (stable on a noisy
machine). Goal: Lightning at most 1.10x the plain loop.
Usage: python bench/lightning_vs_plain.py [--batches 100] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from loader_vs_step import model_from_config  # bench/ is on sys.path when run as a script
from torch.utils.data import DataLoader

from src.data.in_memory import collate_batch
from src.data.mnist_like import FashionMNISTDataModule
from src.models.optim import build_optimizer

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def plain_epoch(batches: list[dict]) -> float:
    torch.manual_seed(0)
    model = model_from_config(CONF)
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        model.loss_terms(batch, 1.0)["loss"].backward()
        optimizer.step()
    return time.perf_counter() - start


class _Timer(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_epoch(batches: list[dict]) -> float:
    torch.manual_seed(0)
    model = model_from_config(CONF)
    timer = _Timer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer], num_sanity_val_steps=0)  # fmt: skip
    loader = DataLoader(batches, batch_size=None, collate_fn=collate_batch)  # the same ready batches
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    dm = FashionMNISTDataModule(batch_size=args.batch_size, val_size=5000)
    dm.setup("fit")
    batches = [b for _, b in zip(range(args.batches), dm.train_dataloader())]
    plain_epoch(batches[:5])  # warm-up (allocator, kernels)
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch(batches))
        lightning.append(lightning_epoch(batches))
    ratio = statistics.median(lightning) / statistics.median(plain)
    print(json.dumps({"bench": "lightning_vs_plain_epoch", "plain_s": [round(t, 3) for t in plain],
                      "lightning_s": [round(t, 3) for t in lightning], "ratio": round(ratio, 3), "goal": "<= 1.10",
                      "met": ratio <= 1.10, "batches": args.batches, "batch_size": args.batch_size,
                      "threads": torch.get_num_threads(), "machine": platform.machine(),
                      "torch": torch.__version__, "lightning": L.__version__}))  # fmt: skip


if __name__ == "__main__":
    main()
