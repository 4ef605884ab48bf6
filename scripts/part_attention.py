"""Score a synthfaces VAE's per-dimension Grad-CAM maps against the true part masks.

Usage: python scripts/part_attention.py VAE_CKPT [--n 256] [--layers encoder.blocks.3.conv ...] [--dims 10]
For the `--dims` dimensions with the most KL on `--n` test faces, per layer: the part holding
most of the dimension's attention, the part its sweep (-2..2 x spread) changes most, the share
of attention inside that part and that part's share of the image (uniform attention's score).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.models.vae import VAE
from src.run.checkpoints import load_module
from src.xai.latent.part_attention import part_attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vae")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--dims", type=int, default=10)
    parser.add_argument("--layers", nargs="*", default=None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = load_module(args.vae, VAE, "vae")
    dm = SynthFacesDataModule(
        data_dir=args.data_dir, image_size=model.image_size, target="index", cache_dir=f"{args.data_dir}/cache"
    )
    dm.setup("test")
    batch = dm.test_set.__getitems__(list(range(min(args.n, len(dm.test_set)))))
    x, parts = batch["image"], batch["mask"]
    scored = part_attention(
        model,
        x,
        parts=parts,
        part_names=dm.class_names,
        num_dims=args.dims,
        offsets=[-2.0, 2.0],
        layers=args.layers or [model.cam_layer],
    )
    kl, result = scored.kl, scored.scores
    for layer, rows in result.items():
        print(f"\n{layer}")
        print(
            "| dim | KL | part it acts on (densest change) | change density | part area | attention share | "
            "attention density | attention AUROC | densest attention |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['dim']} | {kl[r['dim']]:.2f} | {r['acted_part']} | {r['change_density']:.2f} | "
                f"{r['part_area']:.3f} | {r['attention_share']:.3f} | {r['attention_density']:.2f} | "
                f"{r['attention_auroc']:.3f} | {r['densest_attention_part']} |"
            )
        summary = scored.summary(layer)
        print(
            f"mean attention density in the acted-on part {summary['mean_attention_density']:.2f} (1 = uniform), "
            f"mean AUROC {summary['mean_attention_auroc']:.3f} (0.5 = chance)"
        )
    if args.out:
        dims = [r["dim"] for r in next(iter(result.values()))]
        Path(args.out).write_text(json.dumps({"n": len(x), "dims": dims, "layers": result}, indent=1))


if __name__ == "__main__":
    main()
