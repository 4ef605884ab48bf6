"""Fast path-mask vs the thesis' exact procedure on trained models (JSON lines, one per image).

Loads a FashionMNIST classifier and VAE checkpoint, morphs --n test images (seed 123, the
thesis' choice; batched semantic morphing as `morph_path` does it), builds each radial path
(100 steps) and learns the path mask twice from the same initial parameters: exact (every blend,
all --steps) and fast (`--blends` blends per step, stop at `--tol` over `--patience` steps). Per
image: Spearman correlation of the two masks, IoU of their top-10 % pixels, the relative
difference of the total gain, the steps the fast one took; then one line with both wall times.
Goals (issue 21): 8 images <= 60 s fast; Spearman >= 0.9, top-10 % IoU >= 0.8, gain within 5 %.
Usage: python bench/path_mask_fast.py CLASSIFIER.ckpt VAE.ckpt [--n 8] [--steps 3000] [--blends 16]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit, machine, pick_device

from src.checkpoints import load_module
from src.data.mnist_like import FashionMNISTDataModule
from src.models.classifier import Classifier
from src.models.vae import VAE
from src.xai import targets
from src.xai.morph import class_norm_means, morph_path, norm_statistics, path_mask


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_iou(a: torch.Tensor, b: torch.Tensor, share: float = 0.1) -> float:
    k = max(1, int(share * a.numel()))
    ta = torch.zeros(a.numel(), dtype=torch.bool)
    tb = torch.zeros_like(ta)
    ta[a.flatten().topk(k).indices] = True
    tb[b.flatten().topk(k).indices] = True
    return float((ta & tb).sum() / (ta | tb).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("classifier")
    parser.add_argument("vae")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--blends", type=int, default=16)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = pick_device(args.device)
    clf = load_module(args.classifier, Classifier, "classifier").to(device).eval()
    vae = load_module(args.vae, VAE, "vae").to(device).eval()
    for p in [*clf.parameters(), *vae.parameters()]:
        p.requires_grad_(False)
    data = FashionMNISTDataModule(val_size=5000, seed=0)
    data.setup()
    rows = torch.randperm(len(data.test_set), generator=torch.Generator().manual_seed(123))[: args.n].tolist()
    batch = data.test_set.__getitems__(rows)
    x = batch["image"].to(device)
    chunks = []
    for i in range(0, len(data.train_set), 2048):
        b = data.train_set.__getitems__(list(range(i, min(i + 2048, len(data.train_set)))))
        chunks.append((b["image"].to(device), b["label"]))
    norms, labels = norm_statistics(vae.encode, chunks)
    means = class_norm_means(norms, labels, 10)
    result = morph_path(clf, x, targets.runner_up(batch["label"].to(device)), vae=vae, norm_means=means)
    path, o = result.images, result.o
    init = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    exact = path_mask(clf, path, o, steps=args.steps, init=init)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = path_mask(clf, path, o, steps=args.steps, init=init, blends=args.blends, tol=args.tol,
                     patience=args.patience)  # fmt: skip
    t_fast = time.perf_counter() - t0
    for i in range(args.n):
        g_exact, g_fast = float(exact.gains[:, i].sum()), float(fast.gains[:, i].sum())
        emit("path_mask_fast", image=rows[i], spearman=round(spearman(exact.mask[i], fast.mask[i]), 4),
             top10_iou=round(top_iou(exact.mask[i], fast.mask[i]), 4), gain_exact=round(g_exact, 4),
             gain_fast=round(g_fast, 4), gain_rel_diff=round((g_fast - g_exact) / max(abs(g_exact), 1e-12), 4),
             fast_steps=int(fast.steps[i]))  # fmt: skip
    emit("path_mask_fast", images=args.n, exact_seconds=round(t_exact, 1), fast_seconds=round(t_fast, 1),
         blends=args.blends, tol=args.tol, patience=args.patience, steps=args.steps, **machine(device))  # fmt: skip


if __name__ == "__main__":
    main()
