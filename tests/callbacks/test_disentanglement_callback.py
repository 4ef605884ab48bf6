"""The disentanglement callback inside a tiny dSprites run (FactorVAE + AD loss on): its summary is
what `src.xai.scores.disentanglement` gives for the saved model on the same codes and renders."""

import json

import hydra
import numpy as np
import pytest
import torch

from src.base.errors import ConfigError
from src.base.gaussian import kl_per_dimension
from src.callbacks.disentanglement import Disentanglement
from src.models.vae import VAE
from src.testing.compose import compose_train_cfg
from src.train import train
from src.xai import targets
from src.xai.latent.sweeps import rank_dimensions
from src.xai.methods.gradcam import gradcam
from src.xai.scores.disentanglement import attention_overlap_matrix, score_disentanglement


def test_summary_equals_the_xai_scores_of_the_saved_model(tmp_path):
    overrides = [
        "experiment=dsprites_vae",
        "debug=fast",
        "logger=csv",
        "test=false",
        "data.subset=2000",
        "data.batch_size=32",
        "model.loss.tc_weight=10",
        "model.loss.ad_weight=1",
        "explain=disentanglement",
        "explain.disentanglement.num_codes=150",
        "explain.disentanglement.num_votes=12",
        "explain.disentanglement.vote_batch=16",
        "explain.disentanglement.num_probes=8",
        "explain.disentanglement.num_attention_dims=4",
        "+explain.disentanglement.raise_errors=true",
    ]
    cfg = compose_train_cfg(tmp_path / "run", overrides)
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "disentanglement" / "epoch_000"
    summary = json.loads((folder / "summary.json").read_text())
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    data = hydra.utils.instantiate(cfg.data)
    data.setup()
    order = torch.randperm(len(data.val_set), generator=torch.Generator().manual_seed(cfg.seed))[:150].tolist()
    batch = data.val_set.__getitems__(order)
    with torch.no_grad():
        codes = model.encode(batch["image"])[0]

    def represent(f):
        with torch.no_grad():
            return model.encode(data.render_factors(torch.as_tensor(f)))[0].numpy()

    ours = score_disentanglement(
        codes,
        batch["factors"],
        represent=represent,
        factor_sizes=data.factor_sizes,
        seed=cfg.seed,
        votes=12,
        batch_size=16,
    )
    for key, value in ours.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key
    # the overlap matrix of the probes' top-KL dimensions
    probes = data.val_set.__getitems__(
        torch.randperm(len(data.val_set), generator=torch.Generator().manual_seed(cfg.seed))[:8].sort().values.tolist()
    )["image"]
    mu, logvar = model.encode(probes)
    dims = rank_dimensions(kl_per_dimension(mu, logvar), 4)
    assert summary["dims"] == dims
    maps = gradcam(model, probes, targets.select(dims), forward=targets.latent_mean(model)).maps
    matrix = attention_overlap_matrix(maps)
    np.testing.assert_allclose(np.asarray(summary["overlap"]), matrix.round(4), atol=2e-4)
    assert summary["attention_overlap"] == pytest.approx(matrix[~np.eye(4, dtype=bool)].mean(), abs=1e-4)
    assert (folder / "attention_overlap.png").stat().st_size > 0


def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"explain\.disentanglement\.metrics"):
        Disentanglement(metrics=["mig", "modularity"])
    with pytest.raises(ConfigError, match=r"explain\.disentanglement\.method"):
        Disentanglement(method="gradcm")
