import csv

import torch

from src.models.classifier import Classifier
from src.train import train
from src.xai.attribution import attribute, relevance_map
from src.xai.metrics import PerturbationCurve


def test_attribution_grid_table_and_maps_match_the_saved_model(train_cfg, tmp_path):
    cfg = train_cfg("experiment=fashion_classifier", "test=false", "explain=attribution",
                    "explain.attribution.save_tensors=true", "explain.attribution.num_probes=3",
                    "explain.attribution.methods=[saliency,integrated_gradients,gradcam,excitation_backprop]",
                    )  # fmt: skip
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "attribution" / "epoch_000"
    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    saved = torch.load(folder / "maps.pt", weights_only=True)
    x, top = saved["image"], saved["classes"]
    torch.testing.assert_close(top, model(x).topk(2, dim=1).indices)
    ig = relevance_map("integrated_gradients", attribute("integrated_gradients", model, x, top[:, 1], steps=32))
    torch.testing.assert_close(saved["integrated_gradients_top2"], ig, rtol=1e-4, atol=1e-6)
    with open(folder / "faithfulness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["saliency", "integrated_gradients", "gradcam", "excitation_backprop",
                                           "random"]  # fmt: skip
    curve = PerturbationCurve(steps=20)
    curve.update(model, x, saved["saliency_top1"], top[:, 0])
    assert float(rows[0]["aopc"]) == round(curve.compute()["aopc"], 4)
    assert len(list(folder.glob("methods_*.png"))) == 3  # one grid per probe
