"""The explanation callbacks inside a real (tiny) training run: their saved tensors are what the
xai functions give for the saved model on the saved probes."""

import csv

import torch
from PIL import Image

from src.models.vae import VAE
from src.train import train
from src.xai import targets
from src.xai.gradcam import grad_cam
from src.xai.sweeps import kl_per_dimension, latent_sweep, rank_dimensions


def test_gradcam_and_sweep_tensors_match_the_saved_model(train_cfg, tmp_path):
    cfg = train_cfg("test=false", "explain=default", "explain.gradcam.save_tensors=true",
                    "explain.latent_sweep.save_tensors=true", "explain.latent_sweep.num_dims=3",
                    "explain.latent_sweep.offsets=[-1.0,0.0,1.0]")  # fmt: skip
    train(cfg)
    run = tmp_path / "run"
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    folder = run / "explanations"

    saved = torch.load(folder / "gradcam/epoch_000/maps.pt", weights_only=True)
    x = saved["image"]
    assert x.shape == (8, 1, 28, 28)
    cam = grad_cam(model, x, targets.select(), forward=targets.latent_mean(model), mode="reverse")
    torch.testing.assert_close(saved["raw"], cam.raw, rtol=1e-4, atol=1e-6)
    mu, logvar = model.encode(x)
    torch.testing.assert_close(saved["mu"], mu.detach(), rtol=1e-5, atol=1e-6)
    # ranking table: every dimension, sorted by KL, values as computed here
    with open(folder / "gradcam/epoch_000/ranking.csv") as fh:
        rows = list(csv.DictReader(fh))
    kl = kl_per_dimension(mu, logvar).detach()
    assert [int(r["dim"]) for r in rows] == rank_dimensions(kl)
    assert abs(float(rows[0]["kl"]) - float(kl.max())) < 1e-4
    # the grid: 8 rows (probes) x (input, reconstruction, overall, 6 dimensions) of 28 px tiles
    grid = Image.open(folder / "gradcam/epoch_000/maps.png")
    assert grid.size == (9 * 30 + 2, 8 * 30 + 2) and grid.mode == "RGB"

    sweep = torch.load(folder / "latent_sweep/epoch_000/sweep.pt", weights_only=True)
    x = sweep["image"]
    dims = sweep["dims"].tolist()
    assert len(dims) == 3 and sweep["images"].shape == (4, 3, 3, 1, 28, 28)  # 4 probes, 3 dims, 3 offsets
    mu, logvar = model.encode(x)
    assert dims == rank_dimensions(kl_per_dimension(mu, logvar).detach(), 3)
    again = latent_sweep(model, x, dims, [-1.0, 0.0, 1.0])
    torch.testing.assert_close(sweep["images"], again.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sweep["maps"], again.maps, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sweep["images"][:, :, 1], model.decode(mu).detach()[:, None].expand(-1, 3, -1, -1, -1),
                               rtol=1e-4, atol=1e-5)  # offset 0 decodes mu itself  # fmt: skip
    gif = Image.open(folder / f"latent_sweep/epoch_000/dim_{dims[0]:03d}.gif")
    assert gif.n_frames == 3
