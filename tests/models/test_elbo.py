import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from src.base.errors import ConfigError
from src.base.gaussian import kl_standard_normal
from src.models.elbo import kl_weight, reconstruction_loss
from src.testing.tolerance import assert_close_scaled


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g) * 2
    logvar = torch.randn(6, 5, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    # two closed forms, elementwise: 4 terms (and an exp / log) of up to this size each
    terms = 0.5 * (mu**2 + logvar.exp() + 1 + logvar.abs())
    assert_close_scaled(kl_standard_normal(mu, logvar), expected, terms=4, scale=terms)


def test_kl_matches_monte_carlo_estimate():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.7, -1.2, 0.0]])
    logvar = torch.tensor([[-0.5, 0.3, 1.0]])
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(400_000, 3, generator=g, dtype=torch.float64).float()
    log_q = Normal(mu, std).log_prob(z)
    log_p = Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).double().mean(0)
    # sampling error, not rounding: 0.01 is 4.5 standard errors (<= 0.0022) of the 400k-sample means
    torch.testing.assert_close(kl_standard_normal(mu, logvar)[0].double(), mc, atol=0.01, rtol=0.0)


def test_kl_zero_at_prior():
    assert kl_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0


def test_bce_summed_per_image_from_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 4, 4, generator=g) * 3
    target = torch.rand(3, 1, 4, 4, generator=g)
    p = torch.sigmoid(logits.double())  # in float64: 1 - p keeps its digits where the sigmoid saturates
    manual = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    out = reconstruction_loss(logits, target, "bce")
    assert out.shape == (3,)
    # float32 from logits, max(z, 0) - z t + log(1 + exp(-|z|)): 16 pixels of terms up to |z| + 1
    scale = (logits.abs() + 1).flatten(1).sum(1)
    assert_close_scaled(out.double(), manual, terms=3 * 16, scale=scale, dtype=torch.float32)
    # stable where the sigmoid saturates (naive BCE on probabilities would give inf)
    extreme = reconstruction_loss(torch.full((1, 1, 2, 2), -200.0), torch.ones(1, 1, 2, 2), "bce")
    torch.testing.assert_close(extreme, torch.tensor([800.0]))


def test_mse_summed_per_image():
    logits = torch.zeros(2, 3, 2, 2)  # sigmoid -> 0.5 everywhere
    target = torch.ones(2, 3, 2, 2)
    torch.testing.assert_close(reconstruction_loss(logits, target, "mse"), torch.tensor([3.0, 3.0]))
    decoded = torch.full((2, 3, 2, 2), 0.9)
    torch.testing.assert_close(reconstruction_loss(logits, target, "mse", decoded), torch.full((2,), 0.12))
    torch.testing.assert_close(
        reconstruction_loss(logits, target, "mse", decoded).mean(), F.mse_loss(decoded, target, reduction="sum") / 2
    )


def test_unknown_reconstruction_names_key():
    with pytest.raises(ConfigError, match="model.loss.reconstruction"):
        reconstruction_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "l1")


def test_kl_warmup_linear():
    assert kl_weight(0, 2.0, 100) == 0.0
    assert kl_weight(25, 2.0, 100) == 0.5
    assert kl_weight(100, 2.0, 100) == 2.0
    assert kl_weight(500, 2.0, 100) == 2.0
    assert kl_weight(0, 2.0, 0) == 2.0
