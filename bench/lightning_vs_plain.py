"""Time per training epoch: the Lightning VAE loop vs a plain PyTorch loop (JSON lines).

Same model (the default fashion_vae ConvVAE), same in-memory FashionMNIST batches, same batch
size and optimizer; Lightning runs with no logger, checkpointing, progress bar, validation or
callbacks, so the ratio is the cost of the loop itself (hooks, logging of the loss terms).
The two alternate `--repeats` times (plain, Lightning, plain, ...); the ratio reported is the
median of each Lightning epoch over the plain epochs either side of it (stable on a noisy machine,
where the machine's speed drifts between minutes). Goal: Lightning at most 1.10x the plain loop.
Usage: python bench/lightning_vs_plain.py [--device auto] [--batches 60] [--batch-size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import lightning as L
import torch
from common import compose_cfg, device_argument, emit, machine, pick_device, sync
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from src.data.in_memory import collate_batch
from src.models.optim import build_optimizer
from src.models.vae import VAE


def fresh_model(tiny: bool = False):
    """The default job's ConvVAE; `tiny`: the same module at 8x8 px with 2 channels and 2 latents,
    whose arithmetic is negligible, so its step time is the loop's own overhead."""
    torch.manual_seed(0)
    if tiny:
        return VAE(image_size=8, in_channels=1, latent_dim=2, encoder={"channels": [2]})
    return instantiate(compose_cfg([]).model, _convert_="all")


def plain_epoch(batches: list[dict], device: torch.device, tiny: bool = False) -> float:
    model = fresh_model(tiny).to(device)
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    model.train()
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        model.loss_terms(batch, 1.0)["loss"].backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


class _Timer(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def lightning_epoch(batches: list[dict], device: torch.device, tiny: bool = False) -> float:
    model = fresh_model(tiny)
    timer = _Timer()
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                        logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer], num_sanity_val_steps=0)  # fmt: skip
    loader = DataLoader(batches, batch_size=None, collate_fn=collate_batch)  # the same ready batches
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    device_argument(parser)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny-steps", type=int, default=300)
    args = parser.parse_args()
    device = pick_device(args.device)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    dm = instantiate(compose_cfg([f"data.batch_size={args.batch_size}"]).data, _convert_="all")
    dm.setup("fit")
    batches = [b for _, b in zip(range(args.batches), dm.train_dataloader())]
    plain_epoch(batches[:5], device)  # warm-up (allocator, kernels)
    plain, lightning = [plain_epoch(batches, device)], []
    for _ in range(args.repeats):
        lightning.append(lightning_epoch(batches, device))
        plain.append(plain_epoch(batches, device))
    # each Lightning epoch against the mean of the plain epochs just before and after it
    pairs = [t / ((plain[i] + plain[i + 1]) / 2) for i, t in enumerate(lightning)]
    ratio = statistics.median(pairs)
    emit("lightning_vs_plain_epoch", plain_s=[round(t, 3) for t in plain], lightning_s=[round(t, 3) for t in lightning],
         pair_ratios=[round(r, 3) for r in pairs], ratio=round(ratio, 3), goal="<= 1.10", met=ratio <= 1.10,
         batches=args.batches, batch_size=args.batch_size, lightning=L.__version__, **machine(device))  # fmt: skip
    # the loop's fixed cost per step, measured on a model that does (almost) no arithmetic
    tiny = [{"image": torch.rand(8, 1, 8, 8)} for _ in range(args.tiny_steps)]
    plain_epoch(tiny, device, tiny=True)
    per_step = {"plain": [], "lightning": []}
    for _ in range(3):
        per_step["lightning"].append(lightning_epoch(tiny, device, tiny=True) / len(tiny))
        per_step["plain"].append(plain_epoch(tiny, device, tiny=True) / len(tiny))
    overhead = min(per_step["lightning"]) - min(per_step["plain"])
    step = statistics.median(plain) / len(batches)
    emit("lightning_overhead_per_step", plain_ms=round(1e3 * min(per_step["plain"]), 3),
         lightning_ms=round(1e3 * min(per_step["lightning"]), 3), overhead_ms=round(1e3 * overhead, 3),
         convvae_step_ms=round(1e3 * step, 2), implied_ratio=round((step + overhead) / step, 3),
         steps=len(tiny), **machine(device))  # fmt: skip


if __name__ == "__main__":
    main()
