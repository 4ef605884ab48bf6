"""Semantic morphing end to end: the morph_path callback while a VAE trains, and
`python -m src.explain experiment=fashion_path_mask` on the checkpoints, checked against the
saved models."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from src.base.errors import ConfigError
from src.explain import explain
from src.models.classifier import Classifier
from src.models.vae import VAE
from src.testing.compose import ROOT, compose_train_cfg
from src.train import train
from src.xai.morph.pipeline import MorphConfig
from src.xai.morph.semantic import class_norm_means, code_norms

DATA = ["data.search_system=false", "data.download=false", "data.val_size=40"]
SMALL = [
    "explain.morph_path.num_probes=4",
    "explain.morph_path.morph.max_steps=40",
    "explain.morph_path.morph.num_start_samples=4",
    "explain.morph_path.morph.path_steps=10",
    "explain.morph_path.num_strip=3",
    "explain.morph_path.mask.steps=5",
    "explain.morph_path.num_masks=2",
    "explain.morph_path.num_norm_images=100",
]


def path_mask_cfg(run, clf_ckpt, vae_ckpt, fashion_fixture, positions, *extra):
    """`experiment=fashion_path_mask` on the two checkpoints, explaining the probes at `positions`."""
    models = [f"classifier_ckpt={clf_ckpt}", f"vae_ckpt={vae_ckpt}", "logger=csv", f"data.root={fashion_fixture}"]
    probes = [f"explain.morph_path.indices={positions}", "explain.morph_path.save_tensors=true", *extra]
    return compose_train_cfg(run, ["experiment=fashion_path_mask", *models, *DATA, *SMALL, *probes])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, fashion_fixture):
    """A classifier, then a VAE trained with the morph_path callback reading that classifier."""
    base = tmp_path_factory.mktemp("morph")
    data = [f"data.root={fashion_fixture}", *DATA, "debug=fast", "logger=csv", "test=false"]
    train(compose_train_cfg(base / "clf", ["experiment=fashion_classifier", "explain=none", *data]))
    clf = base / "clf" / "checkpoints" / "last.ckpt"
    train(
        compose_train_cfg(
            base / "vae",
            [
                "experiment=fashion_vae",
                "explain=morph_path",
                *data,
                *SMALL,
                f"explain.morph_path.classifier_ckpt={clf}",
            ],
        )
    )
    return base, clf, base / "vae" / "checkpoints" / "last.ckpt"


def test_callback_renders_while_the_vae_trains(checkpoints):
    base, _, _ = checkpoints
    folder = base / "vae" / "explanations" / "morph_path" / "epoch_000"
    names = {p.name for p in folder.iterdir()}
    assert {
        "latent_norms.png",
        "path_norms.png",
        "morph_paths.png",
        "path_mask.png",
        "results.csv",
        "summary.csv",
        "summary.json",
    } <= names
    assert {f"entropy_{i:02d}.png" for i in range(4)} <= names
    assert {f"path_mask_curves_{i:02d}.png" for i in range(2)} <= names


def test_explain_matches_the_saved_models(checkpoints, fashion_fixture, tmp_path):
    _, clf_ckpt, vae_ckpt = checkpoints
    positions = [0, 3, 5, 7]
    cfg = path_mask_cfg(tmp_path / "run", clf_ckpt, vae_ckpt, fashion_fixture, positions)
    summaries = explain(cfg)
    folder = tmp_path / "run" / "explanations" / "morph_path" / "epoch_000"
    saved = torch.load(folder / "morph_path.pt", weights_only=True)
    vae = VAE.load_from_checkpoint(vae_ckpt, map_location="cpu").eval()
    clf = Classifier.load_from_checkpoint(clf_ckpt, map_location="cpu").eval()
    dm = compose_and_setup(cfg)
    torch.testing.assert_close(saved["image"], dm.test_set.__getitems__(positions)["image"])
    with torch.no_grad():
        torch.testing.assert_close(saved["path_images"][3], vae.decode(saved["path_codes"][3]))
        torch.testing.assert_close(saved["path_codes"][0], saved["start"])
        torch.testing.assert_close(saved["path_codes"][-1], saved["morphed_code"])
        assert torch.equal(saved["final_class"], clf(vae.decode(saved["morphed_code"])).argmax(1))
        top2 = clf(saved["image"]).topk(2, dim=1).indices
    labels = dm.test_set.__getitems__(positions)["label"]
    assert torch.equal(saved["a"], top2[:, 0])
    assert torch.equal(saved["o"], torch.where(top2[:, 0] == labels, top2[:, 1], labels))
    # norm means over the first 100 seeded training images, computed here independently
    order = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(cfg.seed))[:100]
    train_batch = dm.train_set.__getitems__(order.tolist())
    expected = class_norm_means(code_norms(vae.encode, train_batch["image"]), train_batch["label"], 10)
    torch.testing.assert_close(saved["norm_means"], expected, equal_nan=True)
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["position"]) for r in rows] == positions
    errors = [r["error"] == "True" for r in rows]
    assert errors == (saved["final_class"] != saved["o"]).tolist()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["error_rate"] == pytest.approx(sum(errors) / 4)
    assert summary["converged_rate"] == pytest.approx(saved["converged"].float().mean().item())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["morph_path"]["summary"] == summary == summaries["morph_path"]
    files = metrics["morph_path"]["files"]
    assert "explanations/morph_path/epoch_000/results.csv" in files and all(
        (tmp_path / "run" / f).is_file() for f in files
    )


def test_a_chunked_morph_writes_each_chunks_panels_before_the_masks_and_equals_morphing_each_chunk(
    checkpoints, fashion_fixture, tmp_path, monkeypatch
):
    """chunk=3 over 4 probes: chunks of 3 and 1, each chunk's panels on disk before the path mask
    is learnt; every probe's result is what morph_path gives on its chunk alone."""
    import src.callbacks.morph as morph_callback
    from src.xai import targets
    from src.xai.morph.pipeline import morph_path

    _, clf_ckpt, vae_ckpt = checkpoints
    folder = tmp_path / "run" / "explanations" / "morph_path" / "epoch_000"
    chunks = ["probes_000-002", "probes_003-003"]
    on_disk_at_mask = []
    real = morph_callback.with_path_mask

    def mask_after_the_panels(*args, **kwargs):
        on_disk_at_mask.extend(sorted(p.name for p in folder.iterdir()))
        return real(*args, **kwargs)

    monkeypatch.setattr(morph_callback, "with_path_mask", mask_after_the_panels)
    positions = [0, 3, 5, 7]
    cfg = path_mask_cfg(tmp_path / "run", clf_ckpt, vae_ckpt, fashion_fixture, positions, "explain.morph_path.chunk=3")
    explain(cfg)
    expected_early = {
        "latent_norms.png",
        *(f"morph_paths_{c}.png" for c in chunks),
        "entropy_probes_003-003.png",
        *(f"entropy_probes_000-002_{i:02d}.png" for i in range(3)),
    }
    assert expected_early <= set(on_disk_at_mask)
    assert not any(name.startswith(("path_mask", "results", "summary")) for name in on_disk_at_mask)
    assert {"path_mask.png", "results.csv", "summary.json"} <= {p.name for p in folder.iterdir()}
    saved = torch.load(folder / "morph_path.pt", weights_only=True)
    vae = VAE.load_from_checkpoint(vae_ckpt, map_location="cpu").eval()
    clf = Classifier.load_from_checkpoint(clf_ckpt, map_location="cpu").eval()
    labels = compose_and_setup(cfg).test_set.__getitems__(positions)["label"]
    for rows in (slice(0, 3), slice(3, 4)):
        alone = morph_path(
            clf,
            saved["image"][rows],
            targets.runner_up(labels[rows]),
            vae=vae,
            norm_means=saved["norm_means"],
            seed=cfg.seed,
            morph=MorphConfig(alpha_lk=10.0, max_steps=40, num_start_samples=4, path_steps=10),
        )
        assert torch.equal(saved["start"][rows], alone.start)
        assert torch.equal(saved["steps"][rows], alone.morph.steps)
        assert torch.equal(saved["morphed_code"][rows], alone.morph.codes)
        assert torch.equal(saved["path_images"][:, rows], alone.images)
    assert saved["mask"].shape[0] == 2  # the first num_masks=2 probes, learnt once over the chunks


def compose_and_setup(cfg):
    import hydra

    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    return dm


def test_a_missing_classifier_checkpoint_stops_training_before_it_starts(fashion_fixture, tmp_path):
    cfg = compose_train_cfg(
        tmp_path / "run",
        [
            "experiment=fashion_vae",
            "explain=morph_path",
            "debug=fast",
            "logger=csv",
            f"data.root={fashion_fixture}",
            *DATA,
        ],
    )
    with pytest.raises(ConfigError, match="explain.morph_path.classifier_ckpt"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_explain_cli_names_the_missing_checkpoint(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.explain",
            "experiment=fashion_path_mask",
            "logger=csv",
            f"vae_ckpt={tmp_path / 'nope.ckpt'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config key 'ckpt_path'" in proc.stderr and "nope.ckpt" in proc.stderr
    assert "no such checkpoint file" in proc.stderr


def test_explain_runs_any_callback_on_a_checkpoint(checkpoints, fashion_fixture, tmp_path):
    _, _, vae_ckpt = checkpoints
    cfg = compose_train_cfg(
        tmp_path / "run",
        [
            "experiment=fashion_vae",
            f"ckpt_path={vae_ckpt}",
            "explain=gradcam",
            "explain.gradcam.num_probes=3",
            "explain.gradcam.save_tensors=true",
            "logger=csv",
            f"data.root={fashion_fixture}",
            *DATA,
        ],
    )
    assert explain(cfg) == {}  # gradcam reports no summary
    folder = tmp_path / "run" / "explanations" / "gradcam" / "epoch_000"
    assert (folder / "maps.png").is_file()
    saved = torch.load(folder / "maps.pt", weights_only=True)
    vae = VAE.load_from_checkpoint(vae_ckpt, map_location="cpu").eval()
    with torch.no_grad():
        mu = vae.encode(saved["image"])[0]
    assert saved["image"].shape[0] == 3
    torch.testing.assert_close(saved["mu"], mu)  # the checkpoint's weights were explained
    assert not (tmp_path / "run" / "checkpoints").exists()  # explaining trains nothing


def test_a_classifier_trained_on_other_classes_is_refused(checkpoints, fashion_fixture, tmp_path):
    _, clf_ckpt, vae_ckpt = checkpoints
    other = torch.load(clf_ckpt, map_location="cpu", weights_only=False)
    other["classes"] = [f"letter_{c}" for c in "ABCDEFGHIJ"]  # e.g. a notMNIST classifier
    torch.save(other, tmp_path / "letters.ckpt")
    letters = tmp_path / "letters.ckpt"
    cfg = compose_train_cfg(
        tmp_path / "run",
        [
            "experiment=fashion_path_mask",
            f"classifier_ckpt={letters}",
            f"vae_ckpt={vae_ckpt}",
            "logger=csv",
            f"data.root={fashion_fixture}",
            *DATA,
        ],
    )
    with pytest.raises(ConfigError, match=r"explain.morph_path.classifier_ckpt.*letter_A.*T-shirt/top"):
        explain(cfg)
    assert not (tmp_path / "run" / "explanations").exists()
