"""Batched semantic morphing and path-mask vs one image at a time (JSON lines).

The path-mask thesis' models at FashionMNIST size, random init (timing does not depend on the weights): the
ConvVAE (100 latents, `convvae28`) decodes, the CNN (`fashion_cnn`) classifies. 64 images
run a fixed number of steps (the stopping rule is switched off so both sides do the same work),
once as one batch and once one image at a time. Goal: batched >= 20x the throughput.
Usage: python bench/morph_batching.py [--n 64] [--morph-steps 100] [--mask-steps 50] [--device cpu]
"""

from __future__ import annotations

import torch
from common import emit, machine, parse_args, timed
from omegaconf import OmegaConf

from src.models.classifier import Classifier
from src.models.vae import VAE
from src.xai.morph.path_mask import PathMaskConfig, path_mask
from src.xai.morph.semantic import radial_path, semantic_morph


def models(device):
    arch = OmegaConf.load("conf/model/arch/convvae28.yaml")
    vae = VAE(image_size=28, in_channels=1, **OmegaConf.to_container(arch)).to(device).eval()
    cnn = OmegaConf.load("conf/model/arch/fashion_cnn.yaml")
    clf = Classifier(num_classes=10, image_size=28, in_channels=1, **OmegaConf.to_container(cnn)).to(device).eval()
    for p in [*vae.parameters(), *clf.parameters()]:
        p.requires_grad_(False)
    return vae, clf


def main() -> None:
    args, device = parse_args(n=64, morph_steps=50, mask_steps=10, path_steps=20)
    torch.manual_seed(0)
    vae, clf = models(device)
    n = args.n
    start = torch.randn(n, vae.latent_dim, device=device)
    a = torch.zeros(n, dtype=torch.long, device=device)
    o = torch.ones(n, dtype=torch.long, device=device)
    norms = torch.full((10,), 3.0)

    def morph(i, j):
        return semantic_morph(
            vae.decode, clf, start[i:j], a[i:j], o[i:j], norms, max_steps=args.morph_steps, entropy_tol=-1.0
        )

    end = torch.randn(n, vae.latent_dim, device=device)
    with torch.no_grad():
        path = vae.decode(radial_path(start, end, args.path_steps).flatten(0, 1)).view(args.path_steps, n, 1, 28, 28)

    def mask(i, j):
        return path_mask(clf, path[:, i:j], o[i:j], PathMaskConfig(steps=args.mask_steps))

    morph(0, 2), mask(0, 2)  # warm-up
    for name, fn, steps in (("morph", morph, args.morph_steps), ("path_mask", mask, args.mask_steps)):
        batched = timed(lambda fn=fn: fn(0, n), device, repeats=1, warmup=0)[0]
        single = timed(lambda fn=fn: [fn(i, i + 1) for i in range(n)], device, repeats=1, warmup=0)[0]
        emit(
            "morph_batching",
            method=name,
            n=n,
            steps=steps,
            batched_s=round(batched, 3),
            one_at_a_time_s=round(single, 3),
            speedup=round(single / batched, 1),
            images_per_s_batched=round(n / batched, 2),
            **machine(device),
        )


if __name__ == "__main__":
    main()
