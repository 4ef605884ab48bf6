import pytest
import torch

from src.base.gaussian import kl_per_dimension
from src.models.cvae import CVAE
from src.models.vae import VAE
from src.testing.tolerance import assert_close_scaled, chain_terms
from src.xai import targets
from src.xai.latent.sweeps import attention_mass, attribute_sweep, latent_sweep, offset_scale, rank_dimensions
from src.xai.methods.gradcam import gradcam


def tiny_vae():
    torch.manual_seed(0)
    return VAE(image_size=16, in_channels=1, latent_dim=5, encoder={"channels": [4, 8]}, norm="batch").eval()


def test_kl_per_dimension_closed_form_and_ranking():
    mu = torch.tensor([[0.0, 2.0, 0.0], [0.0, -2.0, 1.0]])
    logvar = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, -2.0]])
    kl = kl_per_dimension(mu, logvar)
    # 0.5 (mu^2 + s^2 - 1 - log s^2) averaged over the two rows
    expected = torch.tensor([0.0, 2.0, 0.5 * ((0 + 1) / 2 + torch.e**-2 - 1 + 2)])
    torch.testing.assert_close(kl, expected)
    assert rank_dimensions(kl) == [1, 2, 0] and rank_dimensions(kl, top=1) == [1]
    assert attention_mass(torch.ones(2, 3, 4, 4)).tolist() == [16.0, 16.0, 16.0]


def test_offset_scales():
    mu = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    logvar = torch.log(torch.tensor([[0.25, 1.0], [0.25, 1.0]]))
    torch.testing.assert_close(offset_scale(mu, logvar, "aggregate"), torch.tensor([[1.25**0.5, 1.0]] * 2))
    torch.testing.assert_close(offset_scale(mu, logvar, "posterior"), torch.tensor([[0.5, 1.0]] * 2))
    assert torch.equal(offset_scale(mu, logvar, "absolute"), torch.ones(2, 2))
    with pytest.raises(ValueError, match="aggregate"):
        offset_scale(mu, logvar, "wide")


def test_latent_sweep_moves_only_the_swept_node_and_matches_per_image_oracle():
    vae = tiny_vae()
    x = torch.rand(2, 1, 16, 16)
    sweep = latent_sweep(vae, x, targets.select([3, 1]), offsets=[-1.0, 0.0, 2.0], scale="posterior")
    assert sweep.images.shape == (2, 2, 3, 1, 16, 16) and sweep.maps.shape == (2, 2, 3, 16, 16)
    mu, logvar = vae.encode(x)
    sigma = (0.5 * logvar).exp()
    # decodings of 1 code vs of the sweep's batch, maps of 1 image vs of a chunk: other kernels
    decode_terms, cam_terms = chain_terms(vae.decoder, backward=False), chain_terms(vae) + 16
    for b in range(2):
        for n, dim in enumerate([3, 1]):
            for j, o in enumerate([-1.0, 0.0, 2.0]):
                z = mu[b].clone()
                z[dim] += o * sigma[b, dim]
                torch.testing.assert_close(sweep.z[b, n, j], z)
                assert_close_scaled(sweep.images[b, n, j], vae.decode(z[None])[0], terms=decode_terms)
                # the map is that node's Grad-CAM on the re-encoded decoding
                one = gradcam(vae, sweep.images[b, n, j][None], targets.select([dim]), forward=targets.latent_mean(vae))
                assert_close_scaled(sweep.maps[b, n, j], one.normalized()[0, 0], terms=cam_terms)  # scale: peak 1
    # offset 0 reproduces the plain reconstruction through mu
    assert_close_scaled(sweep.images[:, 0, 1], vae.decode(mu), terms=decode_terms)
    with pytest.raises(ValueError, match="latent_dim = 5"):
        latent_sweep(vae, x, targets.select([5]))


def test_cvae_sweeps_hold_the_condition_and_attribute_sweep_varies_one_entry():
    torch.manual_seed(0)
    cvae = CVAE(
        condition_dim=3, image_size=16, in_channels=1, latent_dim=4, encoder={"channels": [4, 8]}, norm="none"
    ).eval()
    x, c = torch.rand(2, 1, 16, 16), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    sweep = latent_sweep(cvae, x, targets.select([0]), offsets=[0.0], c=c, with_maps=False)
    terms = chain_terms(cvae, backward=False)  # encode and decode, in and out of no_grad: other kernels
    assert_close_scaled(sweep.images[:, 0, 0], cvae.decode(cvae.encode(x, c)[0], c), terms=terms)
    assert sweep.maps is None
    images = attribute_sweep(cvae, x, targets.select([2]), c=c, values=[0.0, 1.0])
    assert images.shape == (2, 1, 2, 1, 16, 16)
    mu = cvae.encode(x, c)[0]
    off, on = c.clone(), c.clone()
    off[:, 2], on[:, 2] = 0.0, 1.0
    assert_close_scaled(images[:, 0, 0], cvae.decode(mu, off), terms=terms)
    assert_close_scaled(images[:, 0, 1], cvae.decode(mu, on), terms=terms)
