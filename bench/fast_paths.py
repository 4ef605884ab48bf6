"""The training step under each fast path (JSON lines): fp32, bf16 autocast, channels_last,
torch.compile, and all of them together, as `fast.*` / `trainer.precision` switch them on.

For the default job's ConvVAE (28 px) and the face VAE at 64 px: images/s of forward + backward
+ Adam on the bench device, the speed-up over fp32, and (compile) the one-time compile seconds.
On a CPU these are honest but not the point (bf16 and channels_last are GPU features); on a GPU
they are the figures the switches exist for. Usage: python bench/fast_paths.py [--device auto]
[--steps 10] [--repeats 3] [--compile auto|on|off]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import compose_cfg, emit, interleaved_best, machine, parse_args, sync
from hydra.utils import instantiate

from src.models.optim import build_optimizer
from src.training.fast_paths import FastPaths

MODELS = {
    "fashion_convvae_28px": (["experiment=fashion_vae"], 1, 28, 128),
    "face_vae_64px": (["experiment=celeba_vae", "data.image_size=64"], 3, 64, 64),
}


def build_step(overrides, channels, size, batch_size, device, bf16=False, channels_last=False, compile_=False):
    """A training-step closure with the given switches, warmed up; and the compile seconds."""
    torch.manual_seed(0)
    model = instantiate(compose_cfg(overrides).model, _convert_="all").to(device).train()
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    # the same switches training uses (src.training.fast_paths.FastPaths), minus Lightning
    fast = FastPaths(channels_last=channels_last, compile=compile_)
    fast.setup(None, model, "fit")
    batch = {"image": torch.rand(batch_size, channels, size, size, device=device)}
    fast.on_train_batch_start(None, model, batch, 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model.loss_terms(batch, 1.0)["loss"]
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()  # first call: compilation, if any
    sync(device)
    compile_s = time.perf_counter() - start if compile_ else None
    for _ in range(3):
        step()
    return step, compile_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="time torch.compile too (auto: on a GPU; compiling costs ~1 min per model on a CPU)",
    )
    args, device = parse_args(parser, steps=10, repeats=3)
    variants = {
        "fp32": {},
        "bf16": {"bf16": True},
        "channels_last": {"channels_last": True},
        "bf16+channels_last": {"bf16": True, "channels_last": True},
    }
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        variants["compile"] = {"compile_": True}
        variants["all"] = {"bf16": True, "channels_last": True, "compile_": True}
    for name, (overrides, channels, size, batch) in MODELS.items():
        built = {v: build_step(overrides, channels, size, batch, device, **sw) for v, sw in variants.items()}
        # every variant timed in turn, best of --repeats: the machine's drift hits them all alike
        best = interleaved_best(
            {v: lambda f=step: [f() for _ in range(args.steps)] for v, (step, _) in built.items()},
            device,
            repeats=args.repeats,
        )
        for variant, (_, compile_s) in built.items():
            rate = args.steps * batch / best[variant]
            emit(
                "fast_path_train_step",
                model=name,
                variant=variant,
                images_per_s=round(rate, 1),
                speedup_vs_fp32=round(best["fp32"] / best[variant], 2),
                compile_s=None if compile_s is None else round(compile_s, 1),
                batch_size=batch,
                **machine(device),
            )


if __name__ == "__main__":
    main()
