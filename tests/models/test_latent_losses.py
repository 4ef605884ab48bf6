"""FactorVAE's total-correlation term and Liu et al.'s attention-disentanglement loss."""

import math

import pytest
import torch

from src.base.errors import ConfigError
from src.base.gaussian import total_correlation
from src.base.maps import attention_overlap
from src.models.vae import VAE, attention_disentanglement


def loop_total_correlation(z, mu, logvar, n):
    """The stratified estimate written out with torch.distributions, one sample at a time, with the
    importance weights of Chen et al.'s appendix C.2 built entry by entry."""
    b, d = z.shape
    m = b - 1
    normal = torch.distributions.Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    out = 0.0
    for i in range(b):
        w = torch.full((b,), 1.0 / m, dtype=torch.float64)
        w[i] = 1.0 / n
        w[(i + 1) % b] = (n - m) / (n * m)
        per_dim = normal.log_prob(z[i].double())  # [B (j), D]
        log_qz = torch.logsumexp(per_dim.sum(1) + w.log(), 0)
        log_marginals = sum(torch.logsumexp(per_dim[:, k] + w.log(), 0) for k in range(d))
        out += (log_qz - log_marginals) / b
    return out


def test_total_correlation_equals_the_written_out_estimate():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(12, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(12, 5, generator=g, dtype=torch.float64)
    z = mu + torch.randn(12, 5, generator=g, dtype=torch.float64) * torch.exp(0.5 * logvar)
    got = total_correlation(z, mu, logvar, dataset_size=1000)
    torch.testing.assert_close(got, loop_total_correlation(z, mu, logvar, 1000), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_total_correlation_of_a_gaussian_code(rho):
    """mu ~ N(0, S) and posteriors N(mu, s^2 I): the aggregate is ~ N(0, S + s^2 I), whose total
    correlation is -0.5 log det of its correlation matrix. Tolerance: 5 standard errors of the mean
    of the per-sample terms, plus the aggregate's own sampling error (the same size)."""
    g = torch.Generator().manual_seed(4)
    b, s2 = 2000, 0.25
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    mu = torch.randn(b, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    logvar = torch.full_like(mu, math.log(s2))
    z = mu + math.sqrt(s2) * torch.randn(b, 2, generator=g, dtype=torch.float64)
    terms = total_correlation(z, mu, logvar, dataset_size=b, reduce=False)
    r = (rho / (1 + s2)) if rho else 0.0
    expected = -0.5 * math.log(1 - r * r)
    tolerance = 2 * 5 * terms.std().item() / math.sqrt(b)
    assert abs(terms.mean().item() - expected) < tolerance, (terms.mean().item(), expected, tolerance)


def test_attention_overlap_closed_forms():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert attention_overlap(a, a).item() == 1.0
    assert attention_overlap(a, a.flip(0)).item() == 0.0
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert attention_overlap(a, b).item() == pytest.approx(2 * 1 / 3)
    assert attention_overlap(torch.zeros(2, 2), torch.zeros(2, 2)).item() == 0.0


def test_ad_loss_equals_its_formula_on_known_gradients():
    """mu = GAP(A) @ W, so d mu_i / d A_c is W[c, i] / (h w) at every pixel: alpha is known in
    closed form and the maps are ReLU(sum_c W[c, i] A_c / (h w))."""
    g = torch.Generator().manual_seed(2)
    b, c, h, w, d = 3, 4, 5, 5, 6
    activation = torch.rand(b, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c, d, generator=g, dtype=torch.float64)
    mu = activation.mean((2, 3)) @ weight
    kl_dims = torch.tensor([[0.1, 5.0, 0.2, 4.0, 3.0, 0.3]], dtype=torch.float64).expand(b, d)
    got = attention_disentanglement(activation, mu, kl_dims, top=3)
    dims = [1, 3, 4]  # the three with the most KL
    maps = [torch.einsum("c,bchw->bhw", weight[:, i] / (h * w), activation.detach()).clamp_min(0) for i in dims]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(2 * torch.minimum(maps[p], maps[q]).sum() / (maps[p] + maps[q]).sum() for p, q in pairs) / 3
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def small_vae(**loss):
    torch.manual_seed(0)
    return VAE(
        image_size=16,
        in_channels=1,
        latent_dim=6,
        encoder={"channels": [8, 8]},
        norm="none",
        bias=True,
        loss={"reconstruction": "bce", **loss},
    )


def test_ad_loss_reaches_the_encoder_and_adds_to_the_loss():
    model = small_vae(ad_weight=2.0, ad_dims=3, tc_weight=0.5).train()
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    terms = model.loss_terms({"image": x}, beta=1.0)
    assert set(terms) == {"loss", "recon", "kl", "tc", "ad"}
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"] + 0.5 * terms["tc"] + 2.0 * terms["ad"])
    assert 0 < terms["ad"].item() <= 1
    first_conv = model.encoder.blocks[0].conv.weight
    (grad,) = torch.autograd.grad(terms["ad"], first_conv)
    assert grad.abs().sum() > 0
    # the decoder does not shape the maps: no AD gradient reaches it
    assert torch.autograd.grad(terms["ad"], model.decoder.parameters().__next__(), allow_unused=True)[0] is None
    with torch.no_grad():  # evaluation: the AD term needs gradients and is left out
        assert "ad" not in model.loss_terms({"image": x}, beta=1.0)


def test_terms_off_by_default_and_bad_values_are_config_errors():
    assert set(small_vae().loss_terms({"image": torch.rand(2, 1, 16, 16)}, 1.0)) == {"loss", "recon", "kl"}
    for loss, key in (
        ({"ad_weight": -1}, "model.loss.ad_weight"),
        ({"ad_dims": 1}, "model.loss.ad_dims"),
        ({"tc_wieght": 1.0}, "model.loss"),
    ):
        with pytest.raises(ConfigError) as err:
            small_vae(**loss)
        assert err.value.key == key


def test_total_correlation_of_a_whole_data_set_batch_is_the_exact_mixture():
    """N = B: q(z) is the mixture of the batch's B posteriors, log q(z_i) = logsumexp_j - log B."""
    g = torch.Generator().manual_seed(5)
    mu, logvar = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
    )
    z = mu + torch.randn(7, 3, generator=g, dtype=torch.float64) * torch.exp(0.5 * logvar)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    per_dim = torch.stack([normal.log_prob(z[i]) for i in range(7)])  # [i, j, D]
    log_qz = torch.logsumexp(per_dim.sum(2), 1) - math.log(7)
    log_marginals = (torch.logsumexp(per_dim, 1) - math.log(7)).sum(1)
    torch.testing.assert_close(
        total_correlation(z, mu, logvar, dataset_size=7), (log_qz - log_marginals).mean(), rtol=1e-12, atol=1e-12
    )
    total_correlation(z[:2], mu[:2], logvar[:2], dataset_size=100)  # two samples are enough
    with pytest.raises(ValueError, match="at least 2"):
        total_correlation(z[:1], mu[:1], logvar[:1], dataset_size=100)


def test_tc_term_skips_a_single_sample_and_evaluation_is_repeatable():
    model = small_vae(tc_weight=1.0).eval()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert "tc" not in model.loss_terms({"image": x[:1]}, 1.0)
        state = torch.random.get_rng_state()
        first, second = (model.loss_terms({"image": x}, 1.0)["tc"] for _ in range(2))
    assert torch.equal(first, second) and torch.equal(torch.random.get_rng_state(), state)


def test_a_bad_ad_layer_names_its_key():
    with pytest.raises(ConfigError) as err:
        small_vae(ad_weight=1.0, ad_layer="encoder.blocks.9.conv")
    assert err.value.key == "model.loss.ad_layer"


def test_the_vae_config_shows_the_loss_defaults_of_vaeloss():
    """conf/model/vae.yaml lists model.loss for users; VAELoss holds the defaults: they agree."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from src.models.elbo import VAELoss
    from src.testing.compose import CONF_DIR

    shown = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "vae.yaml").loss)
    assert shown == asdict(VAELoss())
