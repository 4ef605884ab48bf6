"""Command-line runs of `python -m src.train`, as a user types them."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from src.testing.compose import ROOT
from tests.conftest import FASHION_SYSTEM_DIR


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_debug_run_with_offline_wandb(tmp_path, fashion_fixture):
    run_dir = tmp_path / "run"
    # the real dataset where it is installed (as a user gets it), else the fixture via data.root
    data = [] if FASHION_SYSTEM_DIR.is_dir() else [f"data.root={fashion_fixture}", "data.val_size=40"]
    proc = run_cli(
        "debug=fast",
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
        *data,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "epoch_000.ckpt").is_file()
    ours = {}
    for callback in ("reconstructions", "samples"):
        png = run_dir / "explanations" / callback / "epoch_000" / "grid.png"
        assert png.is_file()
        ours[callback] = np.asarray(Image.open(png))
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb"))  # the run's history file, for `wandb sync`
    for callback, pixels in ours.items():
        logged = list((offline[0] / "files" / "media" / "images" / "explain" / callback).glob("grid_*.png"))
        assert len(logged) == 1, callback  # once per epoch
        theirs = np.asarray(Image.open(logged[0]).convert("L"))
        np.testing.assert_array_equal(theirs, pixels)
    # the explanation callbacks on by default: Grad-CAM grid + ranking table, sweeps + one GIF per dimension
    media = offline[0] / "files" / "media"
    maps = np.asarray(Image.open(run_dir / "explanations/gradcam/epoch_000/maps.png"))
    (logged,) = (media / "images" / "explain" / "gradcam").glob("maps_*.png")
    np.testing.assert_array_equal(np.asarray(Image.open(logged).convert("RGB")), maps)
    assert list((media / "table" / "explain" / "gradcam").glob("ranking_*.table.json"))
    ranking = (run_dir / "explanations/gradcam/epoch_000/ranking.csv").read_text().splitlines()
    assert ranking[0] == "rank,dim,kl,attention_mass" and len(ranking) == 1 + 100  # every latent dimension
    sweep = run_dir / "explanations/latent_sweep/epoch_000"
    gifs = sorted(p.name for p in sweep.glob("dim_*.gif"))
    assert len(gifs) == 6 and len(list(sweep.glob("sweep_*.png"))) == 4  # 6 dimensions, 4 probes
    logged_gifs = list((media / "videos" / "explain" / "latent_sweep").glob("*.gif"))
    assert len(logged_gifs) == 6
    assert Image.open(sweep / gifs[0]).n_frames == 7  # one frame per offset


def test_missing_dataset_stops_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    missing = tmp_path / "no-data-here"
    proc = run_cli(
        "debug=fast",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        f"data.root={missing}",
        "data.search_system=false",
        "data.download=false",
    )
    assert proc.returncode == 2
    assert "FashionMNIST not found" in proc.stderr
    assert f"{missing} (no such folder)" in proc.stderr
    assert "apt-get install dataset-fashion-mnist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow  # make test covers the CelebA reader (tests/data) and celeba_vae's one step (test_experiments)
def test_celeba_vae_trains_on_the_official_layout(tmp_path):
    from src.testing.formats import write_celeba

    write_celeba(tmp_path / "celeba", n=12)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "experiment=celeba_vae",
        f"data.root={tmp_path / 'celeba'}",
        "debug=fast",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    grid = np.asarray(Image.open(run_dir / "explanations" / "reconstructions" / "epoch_000" / "grid.png"))
    # 2 validation images (CelebA partition 1) at 128 px, inputs over reconstructions, RGB
    assert grid.shape == (2 * 130 + 2, 2 * 130 + 2, 3)
