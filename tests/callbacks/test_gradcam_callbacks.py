"""The explanation callbacks inside a real (tiny) training run: their saved tensors are what the
xai functions give for the saved model on the saved probes."""

import csv

import torch
from PIL import Image

from src.base.gaussian import kl_per_dimension
from src.base.maps import scale_by_max
from src.models.vae import VAE
from src.testing.tolerance import assert_close_scaled, chain_terms, relative_bound
from src.train import train
from src.xai import decoder_action, targets
from src.xai.latent.sweeps import latent_sweep, rank_dimensions
from src.xai.methods.gradcam import gradcam


def test_gradcam_and_sweep_tensors_match_the_saved_model(train_cfg, tmp_path):
    cfg = train_cfg(
        "test=false",
        "explain=default",
        "explain.gradcam.save_tensors=true",
        "explain.latent_sweep.save_tensors=true",
        "explain.latent_sweep.num_dims=3",
        "explain.latent_sweep.offsets=[-1.0,0.0,1.0]",
    )
    train(cfg)
    run = tmp_path / "run"
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    folder = run / "explanations"

    saved = torch.load(folder / "gradcam/epoch_000/maps.pt", weights_only=True)
    x = saved["image"]
    assert x.shape == (8, 1, 28, 28)
    cam = gradcam(model, x, targets.select(), forward=targets.latent_mean(model), mode="reverse")
    # the callback's mode: forward (JVPs, fewer channels than latents) vs a backward pass here
    encoder = chain_terms(model.encoder, model.fc_mu)
    pixels = cam.raw.shape[-2] * cam.raw.shape[-1]
    assert_close_scaled(saved["raw"], cam.raw, terms=encoder + pixels)
    mu, logvar = model.encode(x)
    # under the trainer's inference mode vs with autograd here: the same encoder, maybe other kernels
    assert_close_scaled(saved["mu"], mu.detach(), terms=chain_terms(model.encoder, model.fc_mu, backward=False))
    # ranking table: every dimension, sorted by KL, values as computed here
    with open(folder / "gradcam/epoch_000/ranking.csv") as fh:
        rows = list(csv.DictReader(fh))
    kl = kl_per_dimension(mu, logvar).detach()
    assert [int(r["dim"]) for r in rows] == rank_dimensions(kl)
    # the table rounds to 5 decimals; KL's terms (mean over 8 probes) of up to this size
    kl_terms = float((0.5 * (mu**2 + logvar.exp() + 1 + logvar.abs())).max())
    kl_budget = relative_bound(chain_terms(model.encoder, model.fc_mu, backward=False) + 8) * kl_terms
    assert abs(float(rows[0]["kl"]) - float(kl.max())) <= 0.5e-5 + kl_budget
    # each shown dimension's decoder action map (every third column: gradcam | smoothgrad | acts)
    dims = saved["dims"].tolist()
    assert dims == rank_dimensions(kl)[:6]
    action = scale_by_max(decoder_action(model.eval(), x, targets.select(dims)).maps)
    assert_close_scaled(saved["shown"][:, 2::3], action, terms=chain_terms(model.decoder) + 16)
    # the grid: 8 rows (probes) x (input, reconstruction, overall, 6 dimensions x 3 maps) of 28 px tiles
    grid = Image.open(folder / "gradcam/epoch_000/maps.png")
    assert grid.size == ((3 + 6 * 3) * 30 + 2, 8 * 30 + 2) and grid.mode == "RGB"

    sweep = torch.load(folder / "latent_sweep/epoch_000/sweep.pt", weights_only=True)
    x = sweep["image"]
    dims = sweep["dims"].tolist()
    assert len(dims) == 3 and sweep["images"].shape == (4, 3, 3, 1, 28, 28)  # 4 probes, 3 dims, 3 offsets
    mu, logvar = model.encode(x)
    assert dims == rank_dimensions(kl_per_dimension(mu, logvar).detach(), 3)
    again = latent_sweep(model, x, targets.select(dims), offsets=[-1.0, 0.0, 1.0])
    # the same call (inference mode in the trainer, autograd here): encode, decode, re-encode, Grad-CAM
    decode = chain_terms(model.decoder, backward=False)
    assert_close_scaled(sweep["images"], again.images, terms=chain_terms(model, backward=False) + decode)
    assert_close_scaled(sweep["maps"], again.maps, terms=chain_terms(model) + encoder + pixels)  # peak 1
    # offset 0 decodes mu itself (4 codes here vs the sweep's 36: other kernels)
    plain = model.decode(mu).detach()[:, None].expand(-1, 3, -1, -1, -1)
    assert_close_scaled(sweep["images"][:, :, 1], plain, terms=chain_terms(model, backward=False))
    gif = Image.open(folder / f"latent_sweep/epoch_000/dim_{dims[0]:03d}.gif")
    assert gif.n_frames == 3
