"""Time per training epoch: the Lightning VAE loop vs a plain PyTorch loop (JSON lines).

Same model (the default fashion_vae ConvVAE), same in-memory FashionMNIST batches, same batch
size and optimizer; Lightning runs with no logger, checkpointing, progress bar, validation or
callbacks, so the ratio is the cost of the loop itself (hooks, logging of the loss terms).
The two alternate `--repeats` times (plain, Lightning, plain, ...). Each loop's time per step is
the median interval between the starts of consecutive steps over all its epochs (everything the loop
does between two batches counts; a burst of load from elsewhere on a shared machine moves a few
intervals, not the median, where it moved whole epochs by 2-4x); the ratio is Lightning's over
plain's, the epoch totals are reported beside it. Goal: Lightning at most 1.10x the plain loop.
Usage: python bench/lightning_vs_plain.py [--device auto] [--batches 60] [--batch-size 128] [--repeats 5]
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings

import lightning as L
import torch
from common import compose_cfg, emit, machine, parse_args, sync
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


def epoch_and_steps(starts: list[float]) -> tuple[float, list[float]]:
    """(first to last time stamp, the intervals between consecutive ones)."""
    return starts[-1] - starts[0], [b - a for a, b in zip(starts, starts[1:])]


def plain_epoch(batches: list[dict], device: torch.device, tiny: bool = False) -> tuple[float, list[float]]:
    """(epoch seconds, seconds between the starts of consecutive steps)."""
    model = fresh_model(tiny).to(device)
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    model.train()
    sync(device)
    starts = []
    for batch in batches:
        starts.append(time.perf_counter())
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        model.loss_terms(batch, 1.0)["loss"].backward()
        optimizer.step()
    sync(device)
    starts.append(time.perf_counter())
    return epoch_and_steps(starts)


class _Timer(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.starts = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.starts.append(time.perf_counter())


def lightning_epoch(batches: list[dict], device: torch.device, tiny: bool = False) -> tuple[float, list[float]]:
    """(epoch seconds, seconds between the starts of consecutive steps), as plain_epoch."""
    model = fresh_model(tiny)
    timer = _Timer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    loader = DataLoader(batches, batch_size=None, collate_fn=collate_batch)  # the same ready batches
    trainer.fit(model, train_dataloaders=loader)
    return epoch_and_steps(timer.starts)


def main() -> None:
    args, device = parse_args(batches=60, batch_size=128, repeats=5, tiny_steps=300)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    dm = instantiate(compose_cfg([f"data.batch_size={args.batch_size}"]).data, _convert_="all")
    dm.setup("fit")
    # float batches (as after the transfer hook): both loops get the same ready tensors
    batches = [dm.on_after_batch_transfer(b, 0) for _, b in zip(range(args.batches), dm.train_dataloader())]
    plain_epoch(batches[:5], device)  # warm-up (allocator, kernels)
    plain, lightning = [plain_epoch(batches, device)], []
    for _ in range(args.repeats):
        lightning.append(lightning_epoch(batches, device))
        plain.append(plain_epoch(batches, device))
    step = {
        name: statistics.median([s for _, steps in runs for s in steps])
        for name, runs in (("plain", plain), ("lightning", lightning))
    }
    ratio = step["lightning"] / step["plain"]
    emit(
        "lightning_vs_plain_epoch",
        plain_s=[round(t, 3) for t, _ in plain],
        lightning_s=[round(t, 3) for t, _ in lightning],
        plain_step_ms=round(1e3 * step["plain"], 2),
        lightning_step_ms=round(1e3 * step["lightning"], 2),
        ratio=round(ratio, 3),
        goal="<= 1.10",
        met=ratio <= 1.10,
        batches=args.batches,
        batch_size=args.batch_size,
        lightning=L.__version__,
        **machine(device),
    )
    # the loop's fixed cost per step, measured on a model that does (almost) no arithmetic
    tiny = [{"image": torch.rand(8, 1, 8, 8)} for _ in range(args.tiny_steps)]
    plain_epoch(tiny, device, tiny=True)
    per_step = {"plain": [], "lightning": []}
    for _ in range(3):
        per_step["lightning"] += lightning_epoch(tiny, device, tiny=True)[1]
        per_step["plain"] += plain_epoch(tiny, device, tiny=True)[1]
    tiny_step = {name: statistics.median(steps) for name, steps in per_step.items()}
    overhead = tiny_step["lightning"] - tiny_step["plain"]
    emit(
        "lightning_overhead_per_step",
        plain_ms=round(1e3 * tiny_step["plain"], 3),
        lightning_ms=round(1e3 * tiny_step["lightning"], 3),
        overhead_ms=round(1e3 * overhead, 3),
        convvae_step_ms=round(1e3 * step["plain"], 2),
        implied_ratio=round(1 + overhead / step["plain"], 3),
        steps=len(tiny),
        **machine(device),
    )


if __name__ == "__main__":
    main()
