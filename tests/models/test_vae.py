import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.base.errors import ConfigError
from src.models.nets import ConvSpec
from src.models.vae import VAE
from src.testing.compose import CONF_DIR
from src.testing.tolerance import assert_close_scaled, chain_terms


def preset(name: str, **overrides) -> VAE:
    """A VAE built from the arch preset file, as the config tree would build it."""
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "vae.yaml"))
    base.pop("defaults")
    base.pop("_target_")
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "arch" / f"{name}.yaml"))
    kwargs = {**base, **arch, **overrides}
    return VAE(**kwargs)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_face_vae_matches_the_seed_keras_summary():
    model = preset("face_vae", image_size=128, in_channels=3)
    # seed 001: encoder "Total params: 1,732,048", decoder "Total params: 916,483"
    encoder = n_params(model.encoder) + n_params(model.fc_mu) + n_params(model.fc_logvar)
    assert encoder == 1_732_048
    assert n_params(model.decoder) == 916_483
    assert model.encoder.spec.sizes == [128, 64, 32, 16, 8]
    assert [b.conv.out_channels for b in model.decoder.blocks] == [64, 64, 32, 3]
    x = torch.rand(2, 3, 128, 128)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 200)
    assert torch.equal(model.encode_mean(x), mu)  # mu without logvar: the same ops on the same input
    out = model.decode(mu)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    # Grad-CAM layer: the last encoder conv (8x8x64), before its activation
    assert model.cam_layer == "encoder.blocks.3.conv"
    assert isinstance(model.get_submodule(model.cam_layer), nn.Conv2d)
    assert isinstance(model.encoder.blocks[0].act, nn.LeakyReLU) and model.encoder.blocks[0].act.negative_slope == 0.3


def test_convvae28_matches_the_thesis_listing():
    model = preset("convvae28", image_size=28, in_channels=1)
    assert model.encoder.spec.sizes == [28, 10, 8, 6]
    assert model.encoder.out_features == 128 and model.latent_dim == 100
    convs = [b.conv for b in model.encoder.blocks]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (1, 16, 5, 3, 2),
        (16, 32, 3, 1, 0),
        (32, 64, 3, 1, 0),
    ]
    assert all(c.bias is None for c in convs)
    tconvs = [b.conv for b in model.decoder.blocks]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in tconvs] == [
        (64, 32, 3, 1),
        (32, 16, 3, 1),
        (16, 1, 5, 3),
    ]
    assert isinstance(model.decoder.blocks[-1].norm, nn.BatchNorm2d)  # BatchNorm2d(1) before sigmoid
    model.eval()
    x = torch.rand(4, 1, 28, 28)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(5).shape == (5, 1, 28, 28)


def test_sample_is_seeded():
    model = preset("convvae28", image_size=28, in_channels=1).eval()
    a = model.sample(3, generator=torch.Generator().manual_seed(7))
    b = model.sample(3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("size", [28, 30, 64, 100])
def test_mirrored_decoder_reaches_any_size(size):
    spec = ConvSpec.build(size, [8, 8, 8], 3, 2, 1)
    model = VAE(image_size=size, in_channels=2, latent_dim=4, encoder={"channels": [8, 8, 8]}, norm="none")
    assert model.decode(torch.zeros(1, 4)).shape == (1, 2, size, size)
    assert spec.sizes[0] == size


def test_bad_sizes_name_the_key():
    with pytest.raises(ConfigError, match=r"model.latent_dim.*positive"):
        preset("convvae28", image_size=28, in_channels=1, latent_dim=0)
    with pytest.raises(ConfigError, match=r"model.image_size.*shrinks"):
        preset("convvae28", image_size=4, in_channels=1)
    with pytest.raises(ConfigError, match=r"model.encoder.stride.*one per encoder layer"):
        preset("convvae28", image_size=28, in_channels=1, encoder={"channels": [8, 8], "stride": [1, 2, 2]})
    with pytest.raises(ConfigError, match="model.cam_layer"):
        preset("convvae28", image_size=28, in_channels=1, cam_layer="encoder.nope")
    with pytest.raises(ConfigError, match="model.output_activation"):
        preset("convvae28", image_size=28, in_channels=1, output_activation="tanh")


def test_loss_terms_average_over_batch():
    model = preset(
        "convvae28", image_size=28, in_channels=1, encoder={"channels": [4], "hidden": []}, decoder={}
    ).eval()
    x = torch.rand(3, 1, 28, 28)
    terms = model.loss_terms({"image": x}, beta=0.5)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        logits = model.decode_logits(mu)
    per_image = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    # the loss's forward (autograd on) vs this one (no_grad): other kernels, then 784-pixel sums of
    # BCE terms up to |logit| + 1, latent sums of KL terms, means over 3 images
    forward, pixels = chain_terms(model, backward=False), x[0].numel()
    recon_scale = (logits.abs() + 1).sum((1, 2, 3)).max()
    kl_scale = 0.5 * (mu**2 + logvar.exp() + 1 + logvar.abs()).sum(1).max()
    assert_close_scaled(terms["recon"], per_image.mean(), terms=forward + pixels + 3, scale=recon_scale)
    assert_close_scaled(terms["kl"], kl.mean(), terms=forward + mu.shape[1] + 3, scale=kl_scale)
    loss = per_image.mean() + 0.5 * kl.mean()
    assert_close_scaled(terms["loss"], loss, terms=forward + pixels + 4, scale=recon_scale + kl_scale)


def test_overfits_a_small_batch():
    torch.manual_seed(0)
    model = VAE(image_size=28, in_channels=1, latent_dim=8, encoder={"channels": [8, 16]}, norm="none", bias=True)
    x = (torch.rand(8, 1, 28, 28) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.loss_terms({"image": x}, beta=0.1)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
