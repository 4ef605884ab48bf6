"""How far does a classifier's saliency get towards segmenting the part an attribute is about? (RESULTS.md)

Usage: python scripts/saliency_segmentation_results.py JUDGE_CKPT [--n 200] [--out FILE.json]
The synthfaces attribute judge (multi-label CNN, 32 px, trained only to classify) on test faces that
have the attribute and where it sees it: the part (Eyeglasses -> frame, Wearing_Hat -> hat, each hair
colour -> hair) segmented from the saliency of the attribute's logit [Simonyan2014]: GrabCut
seeded at the map's 95 % / 30 % quantiles, and the top of the map at the part's mean area; the same
GrabCut seeded by SmoothGrad. Baselines: the empty mask, and the part's mean mask over the training
faces with the attribute cut at the part's mean area (what a segmenter that never looks at the
image scores). Each cell: mean IoU with the true part mask over the faces.
"""

from __future__ import annotations

import torch
from localization_results import faces_with, judge_arguments, judged_test_faces, report

from src.data.celebamask_hq import PARTS
from src.xai import explain, targets
from src.xai.scores.saliency_segmentation import grabcut_masks, mask_iou, threshold_masks

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
        keep = faces_with(attr, j, test, seen, n)
        if keep is None:
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
    args = judge_arguments()
    judge, dm, test, seen = judged_test_faces(args.judge, args.data_dir)
    dm.setup("fit")
    train = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    report(score(judge, test, train, seen, args.n), table, args.out)


if __name__ == "__main__":
    main()
