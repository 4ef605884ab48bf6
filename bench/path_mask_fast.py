"""Fast path-mask vs the thesis' exact procedure on trained models (JSON lines, one per image).

Loads a FashionMNIST classifier and VAE checkpoint, morphs --n test images (seed 123, the
thesis' choice; batched semantic morphing as `morph_path` does it), builds each radial path
(100 steps) and learns the path mask twice from the same initial parameters: exact (every blend,
all --steps) and fast (`--proposal gain`: `--blends` drawn blends per step around an anchor recomputed
every `--refresh` steps; stop at `--tol` over `--patience` steps; see `path_mask`). Per
image: Spearman correlation of the two masks, IoU of their top-10 % pixels, the relative
difference of the total gain, the steps the fast one took; then one line with both wall times.
Goals (issue 21): 8 images <= 60 s fast; Spearman >= 0.9, top-10 % IoU >= 0.8, gain within 5 %.
The exact masks take ~2-3 minutes per image on a 2-core CPU: `--exact-cache FILE` saves them (with
the path, its settings and wall time) on the first run and reuses them while they match, so fast
settings can be compared without recomputing the oracle. glibc keeps freed buffers as the entry
points do (`fast.malloc`, src.run.runtime). The fast masks are learnt on the folded classifier as `morph_path`
runs them (`src.xai.folding.folded`; `--no-fold`: the module as it is); the exact ones on the module.
Usage: python bench/path_mask_fast.py CLASSIFIER.ckpt VAE.ckpt [--n 8] [--steps 3000] [--blends 2]
       [--proposal gain|uniform] [--refresh 100] [--exact-cache FILE] [--no-fold]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import emit, fashion_pair, machine, train_norm_means

from src.xai import targets
from src.xai.folding import folded
from src.xai.morph.path_mask import PathMask, PathMaskConfig, path_mask
from src.xai.morph.pipeline import morph_path


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
    parser, load = fashion_pair(n=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--blends", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--proposal", default="gain", choices=["uniform", "gain"])
    parser.add_argument("--refresh", type=int, default=100)
    parser.add_argument("--exact-cache", type=Path, default=None)
    parser.add_argument("--no-fold", dest="fold", action="store_false")
    args = parser.parse_args()
    device, clf, vae, data, rows, batch = load(args)
    x = batch["image"].to(device)
    target = targets.runner_up(batch["label"].to(device))
    with torch.no_grad():
        o = targets.class_indices(target, clf(x))[:, 0]
    init = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    key = {"rows": rows, "steps": args.steps, "checkpoints": [args.classifier, args.vae]}
    cached = torch.load(args.exact_cache, weights_only=True) if args.exact_cache and args.exact_cache.exists() else None
    if cached is not None and cached["key"] == key:  # the same images, models and steps: the same path
        path, exact, t_exact = cached["path"].to(device), PathMask(**cached["exact"]), cached["seconds"]
    else:
        result = morph_path(clf, x, target, vae=vae, norm_means=train_norm_means(vae, data, device))
        path = result.images
        assert torch.equal(result.o, o)
        t0 = time.perf_counter()
        exact = path_mask(clf, path, o, PathMaskConfig(steps=args.steps), init=init)
        t_exact = time.perf_counter() - t0
        if args.exact_cache:
            torch.save({"key": key, "path": path.cpu(), "exact": vars(exact), "seconds": t_exact}, args.exact_cache)
    t0 = time.perf_counter()
    (learner,) = folded(clf) if args.fold else (clf,)  # as morph_path runs it
    fast = path_mask(
        learner,
        path,
        o,
        PathMaskConfig(
            steps=args.steps,
            num_blends=args.blends,
            tol=args.tol,
            patience=args.patience,
            proposal=args.proposal,
            refresh=args.refresh,
        ),
        init=init,
    )
    t_fast = time.perf_counter() - t0
    for i in range(args.n):
        g_exact, g_fast = float(exact.gains[:, i].sum()), float(fast.gains[:, i].sum())
        emit(
            "path_mask_fast",
            image=rows[i],
            spearman=round(spearman(exact.mask[i], fast.mask[i]), 4),
            top10_iou=round(top_iou(exact.mask[i], fast.mask[i]), 4),
            gain_exact=round(g_exact, 4),
            gain_fast=round(g_fast, 4),
            gain_rel_diff=round((g_fast - g_exact) / max(abs(g_exact), 1e-12), 4),
            fast_steps=int(fast.steps[i]),
        )
    emit(
        "path_mask_fast",
        images=args.n,
        exact_seconds=round(t_exact, 1),
        fast_seconds=round(t_fast, 1),
        blends=args.blends,
        proposal=args.proposal,
        refresh=args.refresh,
        tol=args.tol,
        patience=args.patience,
        fold=args.fold,
        steps=args.steps,
        **machine(device),
    )


if __name__ == "__main__":
    main()
