"""Collect scripts/latent_ground_truth.py JSON outputs into the compact RESULTS.md tables.

python scripts/latent_ground_truth_table.py NAME=FILE.json [NAME=FILE.json ...]
"""

from __future__ import annotations

import json
import math
import sys

SHOWN = [
    "gradcam @ blocks.3.conv",
    "layercam @ blocks.3.conv",
    "hirescam @ blocks.1.conv",
    "scorecam @ blocks.3.conv",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
]


def f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def main() -> None:
    runs = dict(arg.split("=", 1) for arg in sys.argv[1:])
    data = {name: json.loads(open(path).read()) for name, path in runs.items()}
    print("| model | attribute | top shift (sigma) | area | " + " | ".join(SHOWN) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in SHOWN) + " |")
    for name, d in data.items():
        rows = d["localisation"]
        for attribute in dict.fromkeys(r["attribute"] for r in rows):
            mine = {(r["method"], r["target"]): r for r in rows if r["attribute"] == attribute}
            head = mine[("uniform", "-")]
            cells = []
            for m in SHOWN:
                dims, direction = mine.get((m, "dims")), mine.get((m, "direction"))
                cells.append(
                    "n/a"
                    if dims is None
                    else f"{f(direction['auroc'])} / {f(direction['pointing'])} ({f(dims['auroc'])})"
                )
            print(
                f"| {name} | {attribute} | {head['shift_top']:.2f} | {head['area']:.3f} | " + " | ".join(cells) + " |"
            )
    print("\n| model | " + " | ".join(SHOWN) + " |")
    print("| --- | " + " | ".join("---" for _ in SHOWN) + " |")
    for name, d in data.items():
        agree = {r["method"]: r for r in d["agreement"]}
        print(
            f"| {name} | "
            + " | ".join(f"{f(agree[m]['spearman'])} / {f(agree[m]['auroc'])}" if m in agree else "n/a" for m in SHOWN)
            + " |"
        )


if __name__ == "__main__":
    main()
