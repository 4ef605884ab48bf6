"""Are latent explanations right? Score every latent method against ground truth on synthetic faces.

    python scripts/latent_ground_truth.py VAE.ckpt [--n 24] [--out results.json]

Two ground truths (src/xai/scores/ground_truth.py): counterfactual pairs (each face rendered with one
attribute off and on; the changed pixels are the attribute's region) and the decoder's action
maps (|d x_hat / d z_k|, where dimension k acts). Prints markdown tables: per attribute, how
strongly the code holds it (the top dimension's mu shift in posterior sigmas) beside each
method's pointing game / AUROC / density for the top dimensions, the attribute direction and
random dimensions; then each method's encoder-decoder agreement on the top-KL dimensions.
A CVAE checkpoint is explained under each face's own condition.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from src.base.gaussian import kl_per_dimension
from src.data.synthfaces.counterfactual import counterfactual_pairs
from src.data.synthfaces.parameters import ATTRIBUTES as GENERATOR_ATTRIBUTES
from src.models.cvae import CVAE
from src.models.vae import VAE
from src.run.checkpoints import load_module, read_checkpoint
from src.xai.latent.sweeps import rank_dimensions
from src.xai.scores.ground_truth import latent_agreement, latent_localisation

ATTRIBUTES = ("Eyeglasses", "Wearing_Hat", "Bangs", "Mouth_Slightly_Open", "Smiling")
CAMS = ("gradcam", "gradcampp", "hirescam", "layercam", "xgradcam", "scorecam")
INPUT_SPACE = {
    "saliency": {},
    "smoothgrad": {"samples": 16},
    "integrated_gradients": {"steps": 16},
    "occlusion": {"patch": 8, "stride": 4},
}


def method_table(model, layers: list[str]) -> dict[str, tuple[str, dict]]:
    methods = {f"{cam} @ {layer.removeprefix('encoder.')}": (cam, {"layer": layer}) for cam in CAMS for layer in layers}
    return methods | {name: (name, options) for name, options in INPUT_SPACE.items()}


def fmt(v) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt")
    parser.add_argument("--n", type=int, default=24, help="faces per attribute")
    parser.add_argument("--attributes", nargs="*", default=list(ATTRIBUTES))
    parser.add_argument("--layers", nargs="*", default=None, help="default: the second and the last encoder conv")
    parser.add_argument("--agreement-dims", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    state = read_checkpoint(args.ckpt, "ckpt")
    cls = CVAE if "condition_dim" in state.get("hyper_parameters", {}) else VAE
    model = load_module(args.ckpt, cls, "ckpt")
    layers = args.layers or [f"encoder.blocks.{i}.conv" for i in (1, len(model.encoder.blocks) - 1)]
    methods = method_table(model, layers)
    pairs, conds = {}, {}
    # a CVAE's condition entries, as columns of the generator's attribute rows
    columns = [GENERATOR_ATTRIBUTES.index(a) for a in (getattr(model, "attribute_names", None) or GENERATOR_ATTRIBUTES)]
    for k, name in enumerate(args.attributes):
        p = counterfactual_pairs(name, args.n, model.image_size, seed=args.seed + k)
        pairs[name] = (p["off"], p["on"], p["region"])
        conds[name] = p["attributes_on"][:, columns]
    cond = conds if cls is CVAE else None
    start = time.perf_counter()
    rows = latent_localisation(model, pairs, methods, top_dims=3, c=cond, seed=args.seed)
    seconds = time.perf_counter() - start
    print(
        f"{type(model).__name__} {args.ckpt}: {args.n} faces per attribute, {len(methods)} method x layer "
        f"settings, {seconds:.0f} s"
    )
    for attribute in args.attributes:
        mine = [r for r in rows if r["attribute"] == attribute]
        head = mine[0]
        print(
            f"\n{attribute}: top dimensions {head['top_dims']}, top shift {head['shift_top']:.2f} sigma, direction "
            f"norm {head['direction_norm']:.2f} sigma; region area {fmt(head['area'])}"
        )
        print(
            "| method | pointing (dims / direction / random) | AUROC (dims / direction / random) | density (dims / "
            "direction / random) |"
        )
        print("| --- | --- | --- | --- |")
        for label in ["uniform", *methods]:
            got = {r["target"]: r for r in mine if r["method"] == label}
            order = ["-"] if label == "uniform" else ["dims", "direction", "random dims"]
            print(
                f"| {label} | "
                + " | ".join(" / ".join(fmt(got[t][key]) for t in order) for key in ("pointing", "auroc", "density"))
                + " |"
            )
    # agreement with the decoder on the dimensions with the most KL, on the "off" faces
    x = torch.cat([off for off, _, _ in pairs.values()])[: 4 * args.n]
    c = torch.cat([conds[a] for a in args.attributes])[: 4 * args.n] if cls is CVAE else None
    with torch.no_grad():
        mu, logvar = model.encode(x, c)
    dims = rank_dimensions(kl_per_dimension(mu, logvar), args.agreement_dims)
    agree = latent_agreement(model, x[: args.n], dims, methods, c=None if c is None else c[: args.n])
    print(
        f"\nencoder maps vs decoder action maps, top {len(dims)} KL dimensions {dims}, {args.n} faces "
        "(uniform map: Spearman 0, AUROC 0.5)"
    )
    print("| method | Spearman | AUROC (top 10 % of the action) | mismatched Spearman | mismatched AUROC |")
    print("| --- | --- | --- | --- | --- |")
    for r in agree:
        print(
            f"| {r['method']} | {fmt(r['spearman'])} | {fmt(r['auroc'])} | {fmt(r['mismatched_spearman'])} | "
            f"{fmt(r['mismatched_auroc'])} |"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"ckpt": args.ckpt, "n": args.n, "localisation": rows, "agreement": agree, "agreement_dims": dims},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
