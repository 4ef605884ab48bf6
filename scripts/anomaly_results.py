"""Anomaly localisation and detection results for VAEs trained on normal data only.

    python scripts/anomaly_results.py RUN_DIR [RUN_DIR ...] [--n-test 1000] [--out results.json]

Each RUN_DIR is a training run of experiment=synthfaces_anomaly or fashion_anomaly (its
.hydra/config.yaml names the data and the normal classes / attributes; its checkpoints/last.ckpt
is the model). For each run: the test images (a seeded choice of --n-test), the codes of
--n-normal training images as the normal statistics, every anomaly map and image score of
src.xai.scores.anomaly scored with `score_anomalies` (pixel AUROC, best IoU, PRO against the part masks where the
run names parts; image AUROC everywhere). Prints markdown tables: the pixel table (method x
metric) for runs with pixel truth, and the image-AUROC table (score x run) with the mean over runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from src.config.resume import load_run_config
from src.data.celebamask_hq import PARTS
from src.data.in_memory import seeded_rows
from src.models.vae import VAE
from src.run.checkpoints import load_module
from src.xai.scores.anomaly import ANOMALY_MAPS, score_anomalies

ATTRIBUTE_PARTS = {"Eyeglasses": "eye_g", "Wearing_Hat": "hat"}  # synthfaces attributes with a part of their own
MAPS = ("attention", "deviation", "per_dimension", "latent_smoothgrad", "recon_error", "recon_ssim")


def run_one(run: Path, n_test: int, n_normal: int, seed: int, maps: list[str]) -> dict:
    cfg = load_run_config(run)
    model = load_module(run / "checkpoints" / "last.ckpt", VAE, "runs")
    data = hydra.utils.instantiate(cfg.data)
    data.prepare_data()
    data.setup()
    test, normal = seeded_rows(data.test_set, n_test, seed), seeded_rows(data.train_set, n_normal, seed + 1)
    parts = list(cfg.get("explain", {}).get("anomaly", {}).get("parts") or [])
    if not parts:  # explain=none runs carry no parts: the parts the left-out attributes draw
        parts = [
            ATTRIBUTE_PARTS[a] for a in (cfg.data.normal or {}).get("without_attributes", []) if a in ATTRIBUTE_PARTS
        ]
    masks = None
    if parts and "mask" in test and test["mask"].dim() == 3:
        masks = (
            torch.isin(test["mask"], torch.tensor([PARTS.index(p) for p in parts])) & test["anomalous"][:, None, None]
        )
    start = time.perf_counter()
    out = score_anomalies(
        model,
        normal["image"].split(128),
        test["image"],
        test["anomalous"],
        masks,
        maps=maps,
        options={"latent_smoothgrad": {"samples": 16}},
    )
    out["seconds"] = time.perf_counter() - start
    out["normal"] = OmegaConf.to_container(cfg.data.normal)
    out["epochs"] = int(cfg.trainer.max_epochs)
    out["parts"] = parts if masks is not None else []
    return out


def fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def label(result: dict) -> str:
    normal = result["normal"]
    if normal.get("classes") is not None:
        return "class " + ",".join(str(c) for c in normal["classes"])
    return "without " + ",".join(normal.get("without_attributes", []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-normal", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maps", nargs="*", default=list(MAPS), choices=sorted(ANOMALY_MAPS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {str(r): run_one(Path(r), args.n_test, args.n_normal, args.seed, args.maps) for r in args.runs}
    pixel = {k: v for k, v in results.items() if v["parts"]}
    for run, r in pixel.items():
        print(
            f"\n### {label(r)} ({run}; {r['counts']['images']} test images, {r['counts']['anomalous']} anomalous, "
            f"anomalous pixels {100 * r['counts']['anomalous_pixel_share']:.2f} %)\n"
        )
        print("| map | pixel AUROC | best IoU | PRO (FPR <= 0.3) | image AUROC (map mass) |")
        print("| --- | --- | --- | --- | --- |")
        for name, s in r["pixel"].items():
            print(
                f"| {name} | {fmt(s['pixel_auroc'])} | {fmt(s['best_iou'])} | {fmt(s['pro'])} | "
                f"{fmt(s['image_auroc'])} |"
            )
    if len(pixel) > 1:  # several training runs of one protocol (seeds): mean and spread per cell
        print(f"\n### Mean +- sd over {len(pixel)} runs ({', '.join(Path(r).name for r in pixel)})\n")
        print("| map | pixel AUROC | best IoU | PRO (FPR <= 0.3) | image AUROC (map mass) |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.maps:
            cells = []
            for key in ("pixel_auroc", "best_iou", "pro", "image_auroc"):
                values = [r["pixel"][name][key] for r in pixel.values()]
                cells.append(f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nImage AUROC (anomalous vs normal test images):\n")
    names = list(next(iter(results.values()))["image"]) + [f"{m} mass" for m in args.maps if m != "attention"]
    runs = list(results)
    print("| score | " + " | ".join(label(results[r]) for r in runs) + " | mean |")
    print("| --- |" + " --- |" * (len(runs) + 1))
    for name in names:
        values = [
            results[r]["image"].get(name)
            if not name.endswith(" mass")
            else results[r]["pixel"][name.removesuffix(" mass")]["image_auroc"]
            for r in runs
        ]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        mean = sum(finite) / len(finite) if finite else float("nan")
        print(f"| {name} | " + " | ".join(fmt(v) for v in values) + f" | {fmt(mean)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
