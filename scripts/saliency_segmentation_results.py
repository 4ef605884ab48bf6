"""How far does a classifier's saliency get towards segmenting the part an attribute is about? (RESULTS.md)

Usage: python scripts/saliency_segmentation_results.py JUDGE_CKPT [--n 200] [--out FILE.json]
The synthfaces attribute judge (multi-label CNN, 32 px, trained only to classify) on test faces that
have the attribute and where it sees it: the part (Eyeglasses -> frame, Wearing_Hat -> hat, each hair
colour -> hair) segmented from the saliency of the attribute's logit (Simonyan et al. 2014): GrabCut
seeded at the map's 95 % / 30 % quantiles, and the top of the map at the part's mean area; the same
GrabCut seeded by SmoothGrad. Baselines: the empty mask, and the part's mean mask over the training
faces with the attribute cut at the part's mean area (what a segmenter that never looks at the
image scores). Each cell: mean IoU with the true part mask over the faces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from src.data.celebamask_hq import PARTS
from src.data.synthfaces import SynthFacesDataModule
from src.models.classifier import Classifier
from src.xai import explain, targets
from src.xai.saliency_segmentation import grabcut_masks, mask_iou, threshold_masks

ROWS = ["empty mask", "part's mean mask", "saliency, top share", "saliency + GrabCut", "SmoothGrad + GrabCut"]


def attribute_parts(classes: list[str]) -> dict[str, list[str]]:
    """Eyeglasses -> the frame, Wearing_Hat -> the hat, every hair colour the judge reads -> the hair."""
    parts = {"Eyeglasses": ["eye_g"], "Wearing_Hat": ["hat"]}
    parts.update({a: ["hair"] for a in classes if a.endswith("_Hair")})
    return {a: p for a, p in parts.items() if a in classes}


def part_mask(mask: torch.Tensor, parts: list[str]) -> torch.Tensor:
    out = torch.zeros(mask.shape, dtype=torch.bool)
    for part in parts:
        out |= mask == PARTS.index(part)
    return out


def score(judge, test: dict, train: dict, seen: torch.Tensor, n: int) -> dict[str, dict]:
    results = {}
    for attr, parts in attribute_parts(list(judge.classes)).items():
        j = judge.classes.index(attr)
        keep = ((test["attributes"][:, j] > 0.5) & seen[:, j]).nonzero().flatten()[:n]
        if len(keep) == 0:
            print(f"note: {attr} skipped: no test face has it and is seen by the judge as having it", file=sys.stderr)
            results[attr] = {"n": 0}
            continue
        x, truth = test["image"][keep], part_mask(test["mask"][keep], parts)
        with_attr = train["attributes"][:, j] > 0.5
        mean = part_mask(train["mask"][with_attr], parts).float().mean(0)  # [H, W]
        share = float(mean.mean())  # the part's mean area
        sal = explain("saliency", judge, x, targets.classes(j)).maps[:, 0]
        smooth = explain("smoothgrad", judge, x, targets.classes(j), samples=25).maps[:, 0]
        masks = {
            "empty mask": torch.zeros_like(truth),
            "part's mean mask": threshold_masks(mean, share).expand_as(truth),
            "saliency, top share": threshold_masks(sal, share),
            "saliency + GrabCut": grabcut_masks(x, sal),
            "SmoothGrad + GrabCut": grabcut_masks(x, smooth),
        }
        row = {"n": len(x), "area": float(truth.float().mean()), "mean_area_train": share}
        for name, m in masks.items():
            iou = mask_iou(m, truth)
            row[name] = {
                "iou": float(iou.mean()),
                "iou_sd": float(iou.std()),
                "predicted_area": float(m.float().mean()),
            }
        results[attr] = row
    return results


def table(results: dict[str, dict]) -> list[str]:
    def row(label: str, fmt) -> str:
        return f"| {label} | " + " | ".join(fmt(r) if r["n"] else "n/a" for r in results.values()) + " |"

    lines = [
        "| segmentation | " + " | ".join(results) + " |",
        "| --- |" + " --- |" * len(results),
        row("faces / part's area share", lambda r: f"{r['n']} / {r['area']:.3f}"),
    ]
    for name in ROWS:
        lines.append(row(name, lambda r, m=name: f"{r[m]['iou']:.3f} (sd {r[m]['iou_sd']:.2f})"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("judge")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    judge = Classifier.load_from_checkpoint(args.judge, map_location="cpu").eval()
    dm = SynthFacesDataModule(data_dir=args.data_dir, image_size=judge.hparams.image_size, generate_size=64,
                              target="index", cache_dir=f"{args.data_dir}/cache")  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    test = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    train = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    with torch.no_grad():
        seen = judge(test["image"]) > 0
    results = score(judge, test, train, seen, args.n)
    print("\n".join(table(results)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
