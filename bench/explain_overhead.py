"""Cost of the default explanation callbacks as a share of a training epoch (JSON lines).

For each experiment: the time per training step (measured over `--batches` steps, explanations
off) times the steps of a full epoch gives the epoch; each default callback's render is timed
at the end of each of 2 epochs (its fastest render counts: the first also pays one-time set-up) and
charged 1 / every_n_epochs of it per epoch. Goal: all
callbacks together at most 5% of an epoch at their default frequency.
On `--device cuda` the run is `trainer=gpu` (bf16 and the other fast paths for training, the
renders in float32 as always). Usage: python bench/explain_overhead.py [--device auto]
[--experiments fashion_vae synthfaces_vae] [--batches 30]
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
import warnings

import lightning as L
from common import ROOT, compose_cfg, device_argument, emit_record, machine, pick_device

import src.train as train_module
from src.callbacks.base import ImageCallback
from src.train import train


class _StepTimer(L.Callback):
    """Wall time of the training batches (not the callbacks) of the first epoch."""

    def __init__(self) -> None:
        self.seconds, self.steps, self.train_size = 0.0, 0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_size = len(trainer.datamodule.train_set)  # the full epoch, whatever limit_train_batches is

    def on_train_batch_start(self, *args) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.seconds += time.perf_counter() - self.t0
        self.steps += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    device_argument(parser)
    parser.add_argument("--experiments", nargs="+", default=["fashion_vae", "synthfaces_vae"])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    device = pick_device(args.device)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    renders: dict[str, list[float]] = {}

    def timed_on_end(self, trainer, pl_module):
        t0 = time.perf_counter()
        on_end(self, trainer, pl_module)
        renders.setdefault(self.name, []).append(time.perf_counter() - t0)

    on_end = ImageCallback.on_validation_epoch_end
    ImageCallback.on_validation_epoch_end = timed_on_end
    for experiment in args.experiments:
        renders.clear()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = "gpu" if device.type == "cuda" else "cpu"
            overrides = [
                f"trainer={trainer}",
                "logger=none",
                "test=false",
                "trainer.max_epochs=2",
                "++trainer.limit_val_batches=1",
                f"++trainer.limit_train_batches={args.batches}",
                "trainer.enable_progress_bar=false",
                "++trainer.enable_model_summary=false",
            ]
            # the repository's data/: the synthetic faces are rendered once and reused
            cfg = compose_cfg([f"experiment={experiment}", *overrides], output_dir=tmp, data_dir=ROOT / "data")
            timer = _StepTimer()
            instantiate = train_module.instantiate_callbacks
            train_module.instantiate_callbacks = lambda c, f=instantiate, t=timer: [*f(c), t]
            try:
                train(cfg)
            finally:
                train_module.instantiate_callbacks = instantiate
        steps_per_epoch = math.ceil(timer.train_size / cfg.data.batch_size)
        step_s = timer.seconds / max(timer.steps, 1)
        epoch_s = step_s * steps_per_epoch
        every = {name: int(conf.get("every_n_epochs", 1)) for name, conf in (cfg.explain or {}).items() if conf}
        # steady state: each callback's fastest render (the first also pays one-time set-up, e.g. probes)
        # (calls under 5 ms rendered nothing: the sanity check, or an epoch the callback was not due)
        fastest = {name: min([t for t in times if t > 0.005] or [0.0]) for name, times in renders.items()}
        per_epoch = {name: seconds / every.get(name, 1) for name, seconds in fastest.items()}
        share = sum(per_epoch.values()) / (epoch_s + sum(per_epoch.values()))
        emit_record(
            {
                "bench": "explain_overhead",
                "experiment": experiment,
                "train_step_s": round(step_s, 4),
                "steps_per_epoch": steps_per_epoch,
                "epoch_s": round(epoch_s, 1),
                "render_s": {k: [round(t, 2) for t in v] for k, v in renders.items()},
                "every_n_epochs": every,
                "share_of_epoch": round(share, 4),
                "goal": "<= 0.05",
                "met": share <= 0.05,
                **machine(device),
            }
        )
    ImageCallback.on_validation_epoch_end = on_end


if __name__ == "__main__":
    main()
