"""Faithfulness of every attribution method on a trained classifier (RESULTS.md).

Usage: python scripts/attribution_results.py CLASSIFIER_CKPT [--n 100] [--out FILE.json]
On the first --n FashionMNIST test images (target: the predicted class): the deletion curve
(most relevant first, removed pixels set to 0 = the background, 20 steps of 5%) and its AOPC,
the insertion AUC, next to a random-map baseline (mean of 5 seeds); then the cascading
randomisation sanity check [Adebayo2018] for each method on --n-sanity images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from src.data.mnist_like import FashionMNISTDataModule
from src.models.classifier import Classifier
from src.run.checkpoints import load_module
from src.xai import METHODS, Baseline, cascading_randomization, explain, faithfulness, targets

OPTIONS = {
    "smoothgrad": {"samples": 25, "noise": 0.15},
    "integrated_gradients": {"steps": 32, "baseline": Baseline.constant(0.0)},
    "occlusion": {"patch": 4, "stride": 2, "baseline": Baseline.constant(0.5)},
    "mask_perturbation": {"steps": 300, "baseline": Baseline.constant(0.0), "l1": 0.02, "tv": 0.05},  # blur: RESULTS.md
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("classifier")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-sanity", type=int, default=16)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = load_module(args.classifier, Classifier, "classifier")
    dm = FashionMNISTDataModule(download=False)
    dm.setup("test")
    batch = dm.test_set.__getitems__(list(range(args.n)))
    x = batch["image"]
    with torch.no_grad():
        t = model(x).argmax(1)
    print(f"{args.n} test images, accuracy of the model on them {float((t == batch['label']).float().mean()):.3f}")
    results = {}
    target = targets.classes(t)
    randoms = [
        faithfulness(model, x, torch.rand(x.shape[0], 28, 28, generator=torch.Generator().manual_seed(s)), target)
        for s in range(5)
    ]
    results["random"] = {k: sum(r[k] for r in randoms) / 5 for k in randoms[0]} | {"seconds": 0.0}
    for name in args.methods:
        start = time.perf_counter()
        result = explain(name, model, x, target, **OPTIONS.get(name, {}))
        seconds = time.perf_counter() - start
        results[name] = faithfulness(model, x, result, target) | {"seconds": seconds}
    print("\n| method | AOPC (deletion, MoRF) | deletion AUC | insertion AUC | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["aopc"]):
        print(
            f"| {name} | {r['aopc']:.3f} +- {r['aopc_std']:.3f} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} "
            f"| {r['seconds']:.1f} |"
        )
    sanity = {}
    xs, ts = x[: args.n_sanity], t[: args.n_sanity]
    for name in args.methods:
        sanity[name] = cascading_randomization(
            model, xs, targets.classes(ts), method=name, options=OPTIONS.get(name, {})
        ).rows()
    print(
        "\ncascading randomisation (top layer first), maps vs the trained model's: Spearman of |map| / of the"
        " signed map, SSIM of |map|; after the top layer, after half the layers, after all"
    )
    print("| method | top layer re-drawn | half | all layers |")
    print("| --- | --- | --- | --- |")
    for name, rows in sanity.items():
        picks = [rows[0], rows[len(rows) // 2], rows[-1]]
        print(
            f"| {name} | "
            + " | ".join(f"{r['spearman']:.2f} / {r['spearman_signed']:.2f} / {r['ssim']:.2f}" for r in picks)
            + " |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"n": args.n, "faithfulness": results, "sanity": sanity}, indent=1))


if __name__ == "__main__":
    main()
