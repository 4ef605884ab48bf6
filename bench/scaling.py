"""How the cost of training and explaining grows with image size and latent size (JSON lines).

The `celeba_vae` model (the Stuttgart paper's face VAE, convs 32-64-64-64 k3 s2, MSE + KL) at 64/128/256 px
with 64 latents, and at 64 px with 5..200 latents. Per configuration: parameters, training FLOPs
per image (forward + backward, counted by torch.utils.flop_counter: machine-independent), training
images/s on the bench device, the implied time for one CelebA epoch (162,770 training images), and
the all-latents Grad-CAM (every latent mean dimension's map at the last encoder conv) per image.
Usage: python bench/scaling.py [--device auto] [--batch-size 32] [--steps 3]
"""

from __future__ import annotations

import torch
from common import compose_cfg, emit, machine, parse_args, timed, train_step_rate
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from src.xai import targets
from src.xai.methods.gradcam import gradcam

CELEBA_TRAIN = 162_770


def face_vae(image_size: int, latent_dim: int):
    cfg = compose_cfg(["experiment=celeba_vae", f"data.image_size={image_size}", f"model.latent_dim={latent_dim}"])
    return instantiate(cfg.model, _convert_="all")


def train_flops_per_image(model, image_size: int) -> float:
    x = {"image": torch.rand(2, 3, image_size, image_size)}
    with FlopCounterMode(display=False) as counter:
        model.loss_terms(x, 1.0)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def main() -> None:
    args, device = parse_args(batch_size=32, steps=3, sizes="64,128,256", latents="5,15,50,100,200")
    runs = [(s, 64) for s in map(int, args.sizes.split(","))]
    runs += [(64, d) for d in map(int, args.latents.split(",")) if (64, d) not in runs]
    base = None
    train_step_rate(face_vae(64, 64), [{"image": torch.rand(args.batch_size, 3, 64, 64)}], device, repeats=2)  # warm-up
    for size, latent in runs:
        torch.manual_seed(0)
        model = face_vae(size, latent)
        flops = train_flops_per_image(model, size)
        batches = [{"image": torch.rand(args.batch_size, 3, size, size)} for _ in range(args.steps)]
        rate = train_step_rate(model, batches, device, repeats=2)
        model.eval()
        x = torch.rand(8, 3, size, size, device=device)
        cam_s = min(
            timed(
                lambda m=model, x=x: gradcam(m, x, targets.select(), forward=targets.latent_mean(m)), device, repeats=2
            )
        )
        base = base or (flops, rate)
        emit(
            "scaling_face_vae",
            image_size=size,
            latent_dim=latent,
            params=sum(p.numel() for p in model.parameters()),
            train_gflops_per_image=round(flops / 1e9, 3),
            flops_vs_first=round(flops / base[0], 2),
            train_images_per_s=round(rate, 1),
            time_vs_first=round(base[1] / rate, 2),
            celeba_epoch_min=round(CELEBA_TRAIN / rate / 60, 1),
            all_latent_gradcam_ms_per_image=round(1e3 * cam_s / len(x), 2),
            batch_size=args.batch_size,
            **machine(device),
        )


if __name__ == "__main__":
    main()
