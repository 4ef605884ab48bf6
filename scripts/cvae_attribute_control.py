"""Score a synthfaces CVAE's attribute control with the synthfaces attribute classifier.

Usage: python scripts/cvae_attribute_control.py CVAE_CKPT JUDGE_CKPT [--n 1000] [--out FILE.json]
The test split of the default synthetic faces (64 px) is encoded under its true attributes,
decoded with each attribute forced off and on, and the judge says whether it sees it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.data.synthfaces.parameters import ATTRIBUTES, intervene
from src.models.classifier import Classifier
from src.models.cvae import CVAE
from src.run.checkpoints import load_module
from src.xai import targets
from src.xai.latent.attribute_control import attribute_control


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cvae")
    parser.add_argument("judge")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--raw-toggle", action="store_true", help="flip only the one entry (may ask for two hair colours at once)"
    )
    args = parser.parse_args()
    cvae = load_module(args.cvae, CVAE, "cvae")
    judge = load_module(args.judge, Classifier, "judge")
    dm = SynthFacesDataModule(data_dir=args.data_dir, image_size=cvae.image_size, cache_dir=f"{args.data_dir}/cache")
    dm.setup("test")
    batch = dm.test_set.__getitems__(list(range(min(args.n, len(dm.test_set)))))
    cvae_names = cvae.attribute_names or ATTRIBUTES
    if list(cvae_names) != list(ATTRIBUTES):
        raise SystemExit(f"the CVAE must be conditioned on all synthfaces attributes in order, got {cvae_names}")
    shared = {name: i for i, name in enumerate(cvae_names) if name in judge.classes}
    result = attribute_control(
        cvae,
        batch["image"],
        targets.judged(judge, [judge.classes.index(name) for name in shared], size=judge.hparams.image_size),
        conditions=batch["attributes"],
        attributes=shared,
        intervene=None if args.raw_toggle else lambda c, name, v: intervene(c, cvae_names, name, v),
    )
    print(
        "| attribute | generated with it on | generated with it off | mean | judge on real images | judge on "
        "reconstructions |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in result.items():
        print(
            f"| {name} | {r['acc_on']:.3f} | {r['acc_off']:.3f} | {r['acc']:.3f} | {r['judge_acc_real']:.3f} "
            f"| {r['judge_acc_recon']:.3f} |"
        )
    means = {k: sum(r[k] for r in result.values()) / len(result) for k in ("acc", "judge_acc_real", "judge_acc_recon")}
    print(f"| mean | | | {means['acc']:.3f} | {means['judge_acc_real']:.3f} | {means['judge_acc_recon']:.3f} |")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"n": len(batch["image"]), "raw_toggle": args.raw_toggle, "per_attribute": result}, indent=1)
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
