"""The anomaly callback inside a tiny synthfaces_anomaly run: its table and summary are what
`src.xai.scores.anomaly.score_anomalies` gives for the saved model on the same test and normal images."""

import csv
import json

import hydra
import pytest
import torch

from src.base.errors import ConfigError
from src.callbacks.anomaly import AnomalyLocalisation
from src.data.celebamask_hq import PARTS
from src.models.vae import VAE
from src.testing.compose import compose_train_cfg
from src.train import train
from src.xai.scores.anomaly import score_anomalies


def rows(dataset, n, seed):
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.__getitems__(order[: min(n, len(dataset))].sort().values.tolist())


def test_saved_scores_equal_the_xai_evaluation_of_the_saved_model(tmp_path):
    overrides = [
        "experiment=synthfaces_anomaly",
        "debug=fast",
        "logger=csv",
        "test=false",
        "data.count=120",
        "data.build_workers=1",
        "data.batch_size=8",
        "model.latent_dim=8",
        f"paths.data_dir={tmp_path / 'd'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "explain=anomaly",
        "explain.anomaly.parts=[eye_g,hat]",
        "explain.anomaly.num_test=12",
        "explain.anomaly.num_normal=24",
        "explain.anomaly.maps=[attention,deviation,recon_error,recon_ssim]",
        "+explain.anomaly.raise_errors=true",
    ]
    cfg = compose_train_cfg(tmp_path / "run", overrides)
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "anomaly" / "epoch_000"
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "maps.csv") as fh:
        table = list(csv.DictReader(fh))
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    data = hydra.utils.instantiate(cfg.data)
    data.setup()
    test, normal = rows(data.test_set, 12, cfg.seed), rows(data.train_set, 24, cfg.seed + 1)
    # the truth: glasses and hat pixels of the faces the generator drew with them
    assert not normal["attributes"][
        :, [data.attribute_names.index("Eyeglasses"), data.attribute_names.index("Wearing_Hat")]
    ].any()
    masks = (
        torch.isin(test["mask"], torch.tensor([PARTS.index("eye_g"), PARTS.index("hat")]))
        & test["anomalous"][:, None, None]
    )
    assert test["anomalous"].any() and masks.any()
    ours = score_anomalies(
        model,
        normal["image"].split(64),
        test["image"],
        test["anomalous"],
        masks,
        maps=["attention", "deviation", "recon_error", "recon_ssim"],
    )
    assert [r["map"] for r in table] == list(ours["pixel"])
    for row in table:
        for key in ("pixel_auroc", "best_iou", "pro", "image_auroc"):
            # the table rounds to 4 decimals; the summary keeps the full number
            assert float(row[key]) == pytest.approx(ours["pixel"][row["map"]][key], abs=5.1e-5)
            assert summary[f"{row['map']}/{key}"] == pytest.approx(ours["pixel"][row["map"]][key], abs=1e-6)
    for key, value in ours["image"].items():
        assert summary[f"image/{key}"] == pytest.approx(value, abs=1e-6)
    assert (folder / "maps.png").stat().st_size > 0


def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"explain\.anomaly\.maps"):
        AnomalyLocalisation(maps=["attention", "recon"])
    with pytest.raises(ConfigError, match=r"explain\.anomaly\.parts"):
        AnomalyLocalisation(parts=["glasses"])
