import csv

import torch

from src.models.classifier import Classifier
from src.testing.tolerance import assert_close_scaled, chain_terms, relative_bound
from src.train import train
from src.xai import PerturbationCurve, integrated_gradients, targets
from src.xai.scores.saliency_segmentation import saliency_segmentation


def test_attribution_grid_table_and_maps_match_the_saved_model(train_cfg, tmp_path):
    cfg = train_cfg(
        "experiment=fashion_classifier",
        "test=false",
        "explain=attribution",
        "explain.attribution.save_tensors=true",
        "explain.attribution.num_probes=3",
        "explain.attribution.methods=[saliency,integrated_gradients,gradcam,excitation_backprop]",
    )
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "attribution" / "epoch_000"
    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    saved = torch.load(folder / "maps.pt", weights_only=True)
    x, top = saved["image"], saved["classes"]
    torch.testing.assert_close(top, model(x).topk(2, dim=1).indices)
    ig = integrated_gradients(model, x, targets.classes(top[:, 1]), steps=32).maps[:, 0]
    # the same call (in the trainer, and here): 32 gradients through the network, summed
    assert_close_scaled(saved["integrated_gradients_top2"], ig, terms=chain_terms(model) + 32)
    with open(folder / "faithfulness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == [
        "saliency",
        "integrated_gradients",
        "gradcam",
        "excitation_backprop",
        "random",
    ]
    curve = PerturbationCurve(steps=20)
    curve.update(model, x, saved["saliency_top1"], targets.classes(top[:, 0]))
    # rounded to 4 decimals in the table; a mean of 3 x 21 class probabilities (terms <= 1) each
    # through a forward pass
    budget = relative_bound(chain_terms(model, backward=False) + 3 * 21)
    assert abs(float(rows[0]["aopc"]) - curve.compute()["aopc"]) <= 0.5e-4 + budget
    assert len(list(folder.glob("methods_*.png"))) == 3  # one grid per probe
    # what the predicted class's saliency segments (GrabCut), recomputed on the saved model
    assert (folder / "saliency_segmentation.png").exists()
    seg = saliency_segmentation(model, x, targets.classes(top[:, 0]))
    assert torch.equal(saved["segmentation_top1"], seg.masks[:, 0])


def test_featviz_callback_writes_its_panels(train_cfg, tmp_path):
    from PIL import Image

    from src.xai.methods.featviz import deconv_projections, first_layer_filters, penultimate, top_patches

    cfg = train_cfg(
        "experiment=fashion_classifier",
        "test=false",
        "explain=featviz",
        "explain.featviz.maximisation.steps=5",
        "explain.featviz.num_probes=40",
        "explain.featviz.save_tensors=true",
        "explain.featviz.patch_channels=[0,5]",
        "explain.featviz.num_patches=3",
    )
    train(cfg)
    run = tmp_path / "run"
    folder = run / "explanations" / "featviz" / "epoch_000"  # the last epoch always renders
    assert {p.name for p in folder.iterdir()} == {
        "filters.png",
        "class_maximisation.png",
        "top_patches.png",
        "neighbours.png",
        "tsne.png",
        "featviz.pt",
    }
    model = Classifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    saved = torch.load(folder / "featviz.pt", weights_only=True)
    torch.testing.assert_close(saved["filters"], first_layer_filters(model))
    torch.testing.assert_close(saved["embedding"], penultimate(model, saved["image"]))
    assert saved["class_maximisation"].shape == (10, 1, 28, 28)
    # the top crops of channels 0 and 5 of the cam layer and their deconvnet projections, recomputed
    for row, ch in enumerate([0, 5]):
        crops, _, where = top_patches(model, None, saved["image"], ch, k=3)
        torch.testing.assert_close(saved["patch_crops"][row], crops)
        torch.testing.assert_close(
            saved["patch_projections"][row], deconv_projections(model, None, saved["image"], ch, where)[1]
        )
    assert Image.open(folder / "filters.png").size == (16 * 5 + 2, 2 * 5 + 2)  # 32 kernels 3x3, 16 per row
