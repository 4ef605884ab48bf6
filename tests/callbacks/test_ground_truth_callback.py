"""The latent_ground_truth callback inside a tiny synthetic-face training run: its saved tables are
what the xai functions give for the saved model on the same counterfactual pairs and probes."""

import csv
import json
import math

import torch

from src.base.gaussian import kl_per_dimension
from src.data.synthfaces.counterfactual import counterfactual_pairs
from src.models.vae import VAE
from src.testing.compose import compose_train_cfg
from src.train import train
from src.xai import latent_agreement, latent_localisation
from src.xai.latent.sweeps import rank_dimensions


def test_tables_equal_the_xai_functions_on_the_saved_model(tmp_path):
    overrides = [
        "experiment=synthfaces_vae",
        "debug=fast",
        "logger=csv",
        "test=false",
        "data.count=48",
        "data.build_workers=1",
        "data.batch_size=8",
        "model.latent_dim=8",
        f"paths.data_dir={tmp_path / 'd'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "explain=latent_ground_truth",
        "explain.latent_ground_truth.attributes=[Eyeglasses,Wearing_Hat]",
        "explain.latent_ground_truth.num_faces=6",
        "explain.latent_ground_truth.num_probes=6",
        "explain.latent_ground_truth.num_agreement_dims=3",
        "explain.latent_ground_truth.save_tensors=true",
    ]
    cfg = compose_train_cfg(tmp_path / "run", overrides)
    methods = {
        label: (spec["method"], dict(spec.get("options", {})))
        for label, spec in cfg.explain.latent_ground_truth.methods.items()
    }
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "latent_ground_truth" / "epoch_000"
    summary = json.loads((folder / "summary.json").read_text())
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    pairs = {}
    for k, name in enumerate(["Eyeglasses", "Wearing_Hat"]):
        p = counterfactual_pairs(name, 6, 64, seed=cfg.seed + k)
        pairs[name] = (p["off"], p["on"], p["region"])
    rows = latent_localisation(model, pairs, methods, top_dims=3, seed=cfg.seed)
    assert len(rows) == len(summary["localisation"]) == 2 * (1 + len(methods) * 3)  # uniform + methods x 3 targets
    # the same weights and inputs; rank-based scores: a near-tie can flip a face's pointing hit (1 / n)
    for mine, saved in zip(rows, summary["localisation"]):
        assert (mine["attribute"], mine["method"], mine["target"], mine["top_dims"]) == (
            saved["attribute"],
            saved["method"],
            saved["target"],
            saved["top_dims"],
        )
        for key in ("auroc", "density", "mass_inside", "shift_top", "pointing"):
            a, b = mine[key], saved[key]
            budget = 1 / mine["n"] + 1e-3 if key == "pointing" else 1e-3
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= budget, (key, mine, saved)
    with open(folder / "localisation.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == [r["method"] for r in rows]
    # agreement on the probes' top-KL dimensions
    probes = torch.load(folder / "probes.pt", weights_only=True)["image"]
    mu, logvar = model.encode(probes)
    dims = rank_dimensions(kl_per_dimension(mu, logvar), 3)
    agree = latent_agreement(model, probes, dims, methods)
    assert [r["method"] for r in agree] == [r["method"] for r in summary["agreement"]] == list(methods)
    for mine, saved in zip(agree, summary["agreement"]):  # Spearman / AUROC over all pixels: near-ties move little
        assert abs(mine["spearman"] - saved["spearman"]) <= 1e-3 and abs(mine["auroc"] - saved["auroc"]) <= 1e-3
    # the curves' numbers: per method, the mean AUROC of the direction maps over the attributes
    for label in methods:
        direction = [r["auroc"] for r in rows if r["method"] == label and r["target"] == "direction"]
        assert abs(summary[f"{label}/direction_auroc"] - sum(direction) / len(direction)) <= 1e-3
