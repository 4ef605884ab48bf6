"""Disentanglement of trained VAEs against their data's generating factors (dSprites, synthfaces).

    python scripts/disentanglement_results.py RUN_DIR [RUN_DIR ...] [--codes 10000] [--votes 1000] [--out r.json]

Each RUN_DIR is a training run (its .hydra/config.yaml names the data and the loss; its
checkpoints/last.ckpt is the model) on data with factors (data=dsprites or data=synthfaces). For
each: MIG, SAP and DCI of the posterior means of --codes test images against their factors; the
FactorVAE and beta-VAE scores from --votes training and --votes evaluation points of images
rendered with one factor fixed (batches of 64, as disentanglement_lib); the test reconstruction
loss (BCE summed per image); the attention overlap ([Liu2020]'s AD term) of the Grad-CAM maps of
the 8 dimensions with the most KL on 64 test images, and how many dimensions are active (KL > 0.01
nats). Prints one markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch

from src.base.gaussian import kl_per_dimension
from src.config.resume import load_run_config
from src.data.in_memory import seeded_rows
from src.models.elbo import reconstruction_loss
from src.models.vae import VAE
from src.run.checkpoints import load_module
from src.xai import targets
from src.xai.latent.sweeps import rank_dimensions
from src.xai.methods.gradcam import gradcam
from src.xai.scores.disentanglement import METRICS, attention_overlap_matrix, score_disentanglement


def loss_label(cfg) -> str:
    loss = cfg.model.loss
    parts = [f"beta {loss.beta:g}"]
    if loss.get("tc_weight", 0):
        parts.append(f"TC {loss.tc_weight:g}")
    if loss.get("ad_weight", 0):
        parts.append(f"AD {loss.ad_weight:g}")
    return ", ".join(parts)


@torch.no_grad()
def encode(model, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([model.encode(chunk)[0] for chunk in images.split(batch)])


def run_one(run: Path, n_codes: int, votes: int, seed: int, metrics: list[str]) -> dict:
    cfg = load_run_config(run)
    model = load_module(run / "checkpoints" / "last.ckpt", VAE, "runs")
    data = hydra.utils.instantiate(cfg.data)
    data.prepare_data()
    data.setup()
    test = seeded_rows(data.test_set, n_codes, seed)
    start = time.perf_counter()
    codes = encode(model, test["image"])

    def represent(factors: np.ndarray) -> np.ndarray:
        return encode(model, data.render_factors(torch.as_tensor(factors, dtype=torch.long))).numpy()

    scores = score_disentanglement(
        codes,
        test["factors"],
        represent=represent,
        factor_sizes=data.factor_sizes,
        seed=seed,
        votes=votes,
        batch_size=64,
        n_estimators=50,
        metrics=metrics,
    )
    with torch.no_grad():
        kind = model.loss_cfg.reconstruction
        recon = sum(
            reconstruction_loss(model(chunk)["logits"], chunk, kind, model.decode(model.encode(chunk)[0])).sum()
            for chunk in test["image"].split(512)
        ) / len(test["image"])
        mu, logvar = model.encode(test["image"][:2048])
    kl = kl_per_dimension(mu, logvar)
    probes = test["image"][:64]
    dims = rank_dimensions(kl, 8)
    maps = gradcam(model, probes, targets.select(dims), forward=targets.latent_mean(model)).maps
    matrix = attention_overlap_matrix(maps)
    return {
        "loss": loss_label(cfg),
        "epochs": int(cfg.trainer.max_epochs),
        "data": cfg.data._target_.split(".")[-1],
        "latent_dim": int(cfg.model.latent_dim),
        **scores,
        "recon": float(recon),
        "attention_overlap": float(matrix[~np.eye(len(dims), dtype=bool)].mean()),
        "active_dims": int((kl > 0.01).sum()),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--codes", type=int, default=10000)
    parser.add_argument("--votes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", nargs="*", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {}
    keys = [
        "factor_vae",
        "beta_vae",
        "mig",
        "sap",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "recon",
        "attention_overlap",
        "active_dims",
    ]
    print(
        "| run | model | z | epochs | FactorVAE | beta-VAE | MIG | SAP | DCI D | DCI C | DCI I | recon (per image) | "
        "AD overlap | active dims |"
    )
    print("| --- |" + " --- |" * (len(keys) + 3))
    for run in args.runs:
        r = results[run] = run_one(Path(run), args.codes, args.votes, args.seed, args.metrics)
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "n/a")) for k in keys]
        print(
            f"| {Path(run).name} | {r['loss']} | {r['latent_dim']} | {r['epochs']} | " + " | ".join(cells) + " |",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
