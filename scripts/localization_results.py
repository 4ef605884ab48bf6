"""Do attribution maps land on the part an attribute is about? (RESULTS.md)

Usage: python scripts/localization_results.py JUDGE_CKPT [--n 200] [--out FILE.json]
The synthfaces attribute judge (multi-label CNN, 32 px) explains its own logit for Eyeglasses,
Wearing_Hat, Mouth_Slightly_Open and the hair colours on test faces that have the attribute and
where it sees it; each map is scored against the true part mask (eyeglasses frame, hat, mouth and
lips, hair): pointing game (is the map's maximum inside?) and the share of positive relevance
inside, next to a random map and the part's share of the image. An attribute no test face
qualifies for is skipped with a note on stderr and shows n/a in the table (n = 0 in the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from src.data.celebamask_hq import PARTS
from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.models.classifier import Classifier
from src.run.checkpoints import load_module
from src.xai import explain, region_scores, targets

ATTRIBUTE_PARTS = {
    "Eyeglasses": ["eye_g"],
    "Wearing_Hat": ["hat"],
    "Mouth_Slightly_Open": ["mouth", "u_lip", "l_lip"],
    "Black_Hair": ["hair"],
    "Blond_Hair": ["hair"],
}
METHODS = [
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    "lrp",
    "gradcam",
    "gradcampp",
    "excitation_backprop",
]
OPTIONS = {"smoothgrad": {"samples": 25}, "integrated_gradients": {"steps": 32}, "occlusion": {"patch": 4, "stride": 2}}


def faces_with(attr: str, j: int, data: dict, seen: torch.Tensor, n: int) -> torch.Tensor | None:
    """Indices of (at most n) faces that have attribute `attr` (column j) and that the judge sees
    as having it; None, with a note on stderr, when there are none."""
    keep = ((data["attributes"][:, j] > 0.5) & seen[:, j]).nonzero().flatten()[:n]
    if len(keep) == 0:
        print(f"note: {attr} skipped: 0 faces have it and are seen by the judge as having it", file=sys.stderr)
        return None
    return keep


def localize(judge, data: dict[str, torch.Tensor], seen: torch.Tensor, n: int) -> dict[str, dict]:
    """Per attribute: the faces that have it and where the judge sees it (at most n), their part's
    area share and each method's (and a random map's) mean pointing game and mass inside
    (`region_scores`); {'n': 0} when none does."""
    results = {}
    for attr, parts in ATTRIBUTE_PARTS.items():
        j = judge.classes.index(attr)
        keep = faces_with(attr, j, data, seen, n)
        if keep is None:
            results[attr] = {"n": 0}
            continue
        x = data["image"][keep]
        mask = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool)
        for part in parts:
            mask |= data["mask"][keep] == PARTS.index(part)
        row = {"n": len(x), "area": float(mask.float().mean())}
        maps = {m: explain(m, judge, x, targets.classes(j), **OPTIONS.get(m, {})).maps[:, 0] for m in METHODS}
        maps["random"] = torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))
        for name, rel in maps.items():
            scores = region_scores(rel, mask)
            row[name] = {key: float(scores[key].nanmean()) for key in ("pointing", "mass_inside")}
        results[attr] = row
    return results


def table(results: dict[str, dict]) -> list[str]:
    """Markdown rows: one column per attribute (n/a where no face qualified), pointing game / mass inside."""

    def row(label: str, fmt, empty: str = "n/a") -> str:
        return f"| {label} | " + " | ".join(fmt(r) if r["n"] else empty for r in results.values()) + " |"

    lines = [
        "| method | " + " | ".join(f"{a} ({'+'.join(ATTRIBUTE_PARTS[a])})" for a in results) + " |",
        "| --- |" + " --- |" * len(results),
        row("faces / part's area share", lambda r: f"{r['n']} / {r['area']:.3f}", empty="0 / n/a"),
    ]
    for name in [*METHODS, "random"]:
        lines.append(row(name, lambda r, m=name: f"{r[m]['pointing']:.2f} / {r[m]['mass_inside']:.2f}"))
    return lines


def judge_arguments() -> argparse.Namespace:
    """JUDGE_CKPT [--n 200] [--data-dir data] [--out FILE.json]: the judge scripts' command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("judge")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def report(results: dict, table, out: str | None) -> None:
    """Print the markdown `table(results)`; write the results as JSON to `out` when given."""
    print("\n".join(table(results)))
    if out:
        Path(out).write_text(json.dumps(results, indent=1))


def judged_test_faces(judge_ckpt: str, data_dir: str):
    """(the judge in eval mode, the synthfaces datamodule at its image size, every test face as one
    batch with its attributes and part mask, which attributes the judge sees in each [N, 12])."""
    judge = load_module(judge_ckpt, Classifier, "judge")
    dm = SynthFacesDataModule(
        data_dir=data_dir,
        image_size=judge.hparams.image_size,
        generate_size=64,
        target="index",
        cache_dir=f"{data_dir}/cache",
    )
    dm.setup("test")
    data = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    with torch.no_grad():
        seen = judge(data["image"]) > 0
    return judge, dm, data, seen


def main() -> None:
    args = judge_arguments()
    judge, dm, data, seen = judged_test_faces(args.judge, args.data_dir)
    report(localize(judge, data, seen, args.n), table, args.out)


if __name__ == "__main__":
    main()
