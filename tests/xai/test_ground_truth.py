import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from src.models.cvae import CVAE
from src.models.vae import VAE
from src.testing.tolerance import CONFIDENCE, assert_close_scaled, chain_terms, relative_bound
from src.xai import Agreement, agreement, auroc, condition_action, targets
from src.xai.scores.ground_truth import (
    counterfactual_localisation,
    decoder_action,
    encoding,
    region_scores,
    top_fraction,
)


def tiny_vae(channels: int = 3, latent_dim: int = 6) -> VAE:
    torch.manual_seed(0)
    model = VAE(
        image_size=16, in_channels=channels, latent_dim=latent_dim, encoder={"channels": [4, 8]}, norm="batch"
    ).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # running statistics away from (0, 1), so eval-mode BatchNorm does something
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def test_decoder_action_equals_central_finite_differences():
    model = tiny_vae().double()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    act = decoder_action(model, x, chunk_size=4)  # 6 dimensions: chunks of 4 and 2
    assert act.maps.shape == (3, 6, 16, 16) and act.dims == list(range(6))
    mu = model.encode(x)[0].detach()
    h = 1e-6
    with torch.no_grad():
        fd = torch.stack(
            [(model.decode(mu + h * e) - model.decode(mu - h * e)) / (2 * h) for e in torch.eye(6, dtype=mu.dtype)], 1
        )  # [B, K, C, H, W]
        logits = model.decode_logits(mu)
        logit_slope = torch.stack(
            [torch.func.jvp(model.decode_logits, (mu,), (e.expand_as(mu),))[1] for e in torch.eye(6, dtype=mu.dtype)]
        )
    # The bound, per element of the quotient: each decode carries a rounding error of at most
    # relative_bound(terms) * |logits| (the sigmoid's slope is <= 1/4, so <= 1), the difference of
    # two of them over 2h at most relative_bound * |logits| / h; truncation: the decoder is
    # piecewise linear in z (ReLU, BatchNorm and convs; no kink lies within 1e-6 of these points)
    # and the sigmoid's third derivative is at most 1/8, so at most h^2 / 6 * 1/8 * |d logits / dz|^3.
    # The channel norm adds at most sqrt(C) x the largest channel's error.
    terms = chain_terms(model.decoder, backward=False)
    rounding = relative_bound(terms, torch.float64) * float(logits.abs().max()) / h
    truncation = h**2 / 6 / 8 * float(logit_slope.abs().max()) ** 3
    tol = math.sqrt(3) * (rounding + truncation)
    assert tol < 1e-5 * float(act.maps.max())  # far below the maps' size: the comparison means something
    diff = (act.maps - fd.norm(dim=2)).abs().max()
    assert diff <= tol, f"decoder_action differs from finite differences by {float(diff):.3g} > {tol:.3g}"


def test_decoder_action_equals_a_per_dimension_autograd_jvp_loop():
    model = tiny_vae()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    dims = [4, 1, 3]
    act = decoder_action(model, x, targets.select(dims), chunk_size=2)
    assert act.maps.shape == (2, 3, 16, 16) and act.dims == dims
    mu = model.encode(x)[0].detach()
    loop = []
    for d in dims:
        e = torch.zeros_like(mu)
        e[:, d] = 1.0
        loop.append(torch.autograd.functional.jvp(lambda z: model.decode(z), mu, e)[1].norm(dim=1))
    expected = torch.stack(loop, 1)
    # two orderings of one forward-mode chain; the channel norm adds sqrt(C)
    assert_close_scaled(
        act.maps, expected, terms=chain_terms(model.decoder, backward=False), k=CONFIDENCE * math.sqrt(3)
    )
    assert not act.maps.requires_grad and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="outside"):
        decoder_action(model, x, targets.select([6]))


def test_decoder_action_passes_the_condition():
    torch.manual_seed(0)
    cvae = CVAE(condition_dim=3, image_size=16, in_channels=1, latent_dim=4, encoder={"channels": [4, 8]}).eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    c = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    act = decoder_action(cvae, x, [2, 0], c=c)
    mu = cvae.encode(x, c)[0].detach()
    loop = []
    for d in (2, 0):
        e = torch.zeros_like(mu)
        e[:, d] = 1.0
        loop.append(torch.autograd.functional.jvp(lambda z: cvae.decode(z, c), mu, e)[1].norm(dim=1))
    assert_close_scaled(act.maps, torch.stack(loop, 1), terms=chain_terms(cvae.decoder, backward=False))


def test_condition_action_equals_a_per_entry_autograd_jvp_loop():
    torch.manual_seed(0)
    cvae = CVAE(condition_dim=3, image_size=16, in_channels=1, latent_dim=4, encoder={"channels": [4, 8]}).eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    c = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    act = condition_action(cvae, x, targets.select([1, 2]), c=c)
    mu = cvae.encode(x, c)[0].detach()
    loop = []
    for j in (1, 2):  # oracle: autograd's jvp (the double-backward trick), one condition entry at a time
        e = torch.zeros_like(c)
        e[:, j] = 1.0
        loop.append(torch.autograd.functional.jvp(lambda cond: cvae.decode(mu, cond), c, e)[1].norm(dim=1))
    assert act.dims == [1, 2]
    assert_close_scaled(act.maps, torch.stack(loop, 1), terms=chain_terms(cvae.decoder, backward=False))
    with pytest.raises(ValueError, match="condition entries"):
        condition_action(cvae, x, targets.select([3]), c=c)


def test_auroc_equals_sklearn_row_by_row():
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 6, (8, 50), generator=g).float()  # many ties
    scores[1] = torch.rand(50, generator=g)  # none
    truth = torch.rand(8, 50, generator=g) < 0.3
    truth[2, :] = False  # no positives
    truth[3, :] = True  # no negatives
    got = auroc(scores, truth)
    for i in range(8):
        if truth[i].all() or not truth[i].any():
            assert math.isnan(got[i])
        else:
            assert got[i].item() == pytest.approx(roc_auc_score(truth[i].numpy(), scores[i].numpy()), abs=1e-6)
    assert auroc(torch.ones(1, 4), torch.tensor([[True, False, True, False]])).item() == 0.5


def box(b: int = 2, size: int = 10) -> torch.Tensor:
    region = torch.zeros(b, size, size, dtype=torch.bool)
    region[:, 2:5, 3:7] = True  # 12 of 100 pixels
    return region


def test_region_scores_on_constructed_maps():
    region = box()
    area = 12 / 100
    itself = region_scores(region.float(), region)
    assert itself["pointing"].tolist() == [1.0, 1.0] and itself["auroc"].tolist() == [1.0, 1.0]
    torch.testing.assert_close(itself["density"], torch.full((2,), 1 / area))
    torch.testing.assert_close(itself["mass_inside"], torch.ones(2))
    uniform = region_scores(torch.full((2, 10, 10), 0.3), region)
    torch.testing.assert_close(uniform["auroc"], torch.full((2,), 0.5))
    torch.testing.assert_close(uniform["density"], torch.ones(2))
    torch.testing.assert_close(uniform["pointing"], torch.full((2,), area))  # a tied maximum: its share inside
    inverted = region_scores(1 - region.float(), region)
    assert inverted["auroc"].tolist() == [0.0, 0.0] and inverted["pointing"].tolist() == [0.0, 0.0]
    assert inverted["density"].tolist() == [0.0, 0.0]
    # a peak inside a broad map: pointing hits, density between uniform and the region itself
    broad = torch.rand(2, 10, 10, generator=torch.Generator().manual_seed(6)) + region
    scores = region_scores(broad, region)
    assert (
        scores["pointing"].tolist() == [1.0, 1.0]
        and (1 < scores["density"]).all()
        and (scores["density"] < 1 / area).all()
    )
    empty = region_scores(torch.rand(1, 10, 10), torch.zeros(1, 10, 10, dtype=torch.bool))
    assert all(math.isnan(empty[k].item()) for k in ("pointing", "mass_inside", "density", "auroc"))


def action_maps(b: int = 3, k: int = 4, size: int = 12) -> torch.Tensor:
    """[B, K, H, W] each dimension acting on its own blob, plus a little everywhere."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = [(2, 2), (2, 9), (9, 2), (9, 9)][:k]
    blobs = torch.stack([torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4) for y, x in centres])
    return blobs.expand(b, k, size, size) + 0.01 * torch.rand(b, k, size, size, generator=g)


def test_agreement_on_constructed_maps():
    action = action_maps()
    perfect = agreement(action, action, top=0.1)
    assert isinstance(perfect, Agreement) and perfect.dims == [0, 1, 2, 3]
    torch.testing.assert_close(perfect.spearman, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(perfect.auroc, torch.ones(4, dtype=torch.float64))
    assert (perfect.mismatched_spearman < perfect.spearman).all() and (perfect.mismatched_auroc < 0.5).all()
    rescaled = agreement(5 * action**3, action)  # a monotone transform ranks the same
    torch.testing.assert_close(rescaled.auroc, perfect.auroc)
    torch.testing.assert_close(rescaled.spearman, perfect.spearman)
    uniform = agreement(torch.ones_like(action), action)
    torch.testing.assert_close(uniform.auroc, torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(uniform.spearman, torch.zeros(4, dtype=torch.float64))
    inverted = agreement(-action, action)
    torch.testing.assert_close(inverted.auroc, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(inverted.spearman, -torch.ones(4, dtype=torch.float64))
    rows = agreement(action, action, dims=[10, 11, 12, 13]).rows()
    assert [r["dim"] for r in rows] == [10, 11, 12, 13]
    assert rows[0]["uniform_auroc"] == 0.5 and rows[0]["uniform_spearman"] == 0.0 and rows[0]["auroc"] == 1.0
    summary = perfect.summary()
    assert summary["auroc"] == 1.0 and summary["uniform_auroc"] == 0.5 and summary["dimensions"] == 4
    assert summary["mismatched_auroc"] == pytest.approx(float(perfect.mismatched_auroc.mean()))
    single = agreement(action[:, :1], action[:, :1])
    assert math.isnan(single.mismatched_auroc[0]) and single.auroc[0] == 1.0
    dead = action.clone()
    dead[:, 2] = 0.0  # a dimension that acts nowhere has no top set: NaN, not chance
    assert math.isnan(agreement(action, dead).auroc[2])


def test_top_fraction_counts_and_ties():
    a = torch.arange(20.0).view(1, 20)
    assert top_fraction(a, 0.1).sum() == 2 and top_fraction(a, 0.1)[0, -2:].all()
    assert top_fraction(torch.tensor([[0.3, 0.3, 0.1, 0.0]]), 0.25).tolist() == [[True, True, False, False]]
    assert top_fraction(torch.tensor([[1.0, 2.0, 3.0] * 10]), 0.3).sum() == 10  # 0.3 * 30 is not 10 in floats


class LinearEncoder(torch.nn.Module):
    """encode(x) = (the first 3 pixels, log 0.25): sigma 0.5 everywhere."""

    def encode(self, x, c=None):
        mu = x.flatten(1)[:, :3]
        return mu, torch.full_like(mu, math.log(0.25))


def test_encoding_closed_form():
    x_off = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(8))
    x_on = x_off.clone()
    x_on[:, 0, 0, 1] += 1.0  # dimension 1 moves by 1 = 2 sigma in every pair
    x_on[:, 0, 1, 0] += torch.tensor([0.5, -0.5, 0.5, -0.5])  # dimension 2 moves by 1 sigma, no net direction
    enc = encoding(LinearEncoder(), x_off, x_on)
    torch.testing.assert_close(enc.shift, torch.tensor([0.0, 2.0, 1.0]))
    torch.testing.assert_close(enc.direction, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(enc.sigma, torch.full((3,), 0.5))
    assert enc.norm == pytest.approx(2.0) and enc.n == 4 and enc.top_dims(2) == [1, 2] and enc.top_dims() == [1, 2, 0]


def test_counterfactual_localisation_skips_faces_without_a_region():
    region = box(3)
    region[2] = False
    maps = region.float()
    maps[1] = 1 - maps[1]
    out = counterfactual_localisation(maps, region)
    assert out["n"] == 2 and out["auroc"] == 0.5 and out["pointing"] == 0.5
    assert out["density"] == pytest.approx(0.5 / 0.12)


def test_latent_localisation_and_agreement_rows_equal_their_parts_run_one_by_one():
    from src.xai import latent_agreement, latent_localisation, saliency

    model = tiny_vae()
    g = torch.Generator().manual_seed(9)
    x_off, x_on = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    region = torch.zeros(4, 16, 16, dtype=torch.bool)
    region[:, 4:9, 5:11] = True
    rows = latent_localisation(model, {"a": (x_off, x_on, region)}, {"sal": ("saliency", {})}, top_dims=2)
    assert [(r["method"], r["target"]) for r in rows] == [
        ("uniform", "-"),
        ("sal", "dims"),
        ("sal", "direction"),
        ("sal", "random dims"),
    ]
    uniform = rows[0]
    assert uniform["auroc"] == 0.5 and uniform["density"] == pytest.approx(1.0)
    assert uniform["pointing"] == pytest.approx(30 / 256)  # every pixel is a maximum: the region's share
    enc = encoding(model, x_off, x_on)
    assert rows[1]["top_dims"] == enc.top_dims(2) and rows[1]["shift_top"] == pytest.approx(float(enc.shift.max()))
    forward = targets.latent_mean(model)
    per_dim = [
        counterfactual_localisation(
            saliency(model, x_on, targets.select([d]), forward=forward).maps[:, 0].abs(), region
        )
        for d in enc.top_dims(2)
    ]
    for key in ("pointing", "auroc", "density", "mass_inside"):
        assert rows[1][key] == pytest.approx(sum(p[key] for p in per_dim) / 2), key
    direction = saliency(model, x_on, targets.direction(enc.direction), forward=forward).maps[:, 0].abs()
    assert rows[2]["auroc"] == pytest.approx(counterfactual_localisation(direction, region)["auroc"])
    agree = latent_agreement(model, x_on, [1, 4], {"sal": ("saliency", {})})
    action = decoder_action(model, x_on, targets.select([1, 4])).maps
    maps = saliency(model, x_on, targets.select([1, 4]), forward=forward).maps.abs()
    assert agree[0]["spearman"] == pytest.approx(agreement(maps, action, dims=[1, 4]).summary()["spearman"])
