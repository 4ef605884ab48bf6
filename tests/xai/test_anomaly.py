import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.image import structural_similarity_index_measure

from src.base.gaussian import kl_standard_normal
from src.models.elbo import reconstruction_loss
from src.models.vae import VAE
from src.testing.tolerance import assert_close_scaled, chain_terms, relative_bound
from src.xai import targets
from src.xai.methods.attribution import smoothgrad
from src.xai.methods.gradcam import gradcam
from src.xai.scores.anomaly import (
    ANOMALY_MAPS,
    LatentStatistics,
    anomaly_map,
    best_iou,
    image_auroc,
    image_scores,
    latent_statistics,
    localisation_scores,
    pixel_auroc,
    pro,
    ssim_map,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- metrics on constructed maps -------------------------------------------------------------------


def blob_masks(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n - 1):  # the last image is normal
        top, left = torch.randint(0, size - 5, (2,), generator=g).tolist()
        h, w = torch.randint(2, 6, (2,), generator=g).tolist()
        masks[i, top : top + h, left : left + w] = True
    return masks


def test_perfect_inverted_and_constant_maps():
    masks = blob_masks()
    perfect = masks.float()
    scores = localisation_scores(perfect, masks)
    assert scores["pixel_auroc"] == 1.0 and scores["best_iou"] == 1.0 and scores["pro"] == pytest.approx(1.0)
    assert pixel_auroc(1 - perfect, masks) == 0.0
    assert pixel_auroc(torch.full_like(perfect, 0.3), masks) == 0.5
    # a constant map scales to 0 everywhere, so map > t (t >= 0) predicts nothing: IoU 0
    assert best_iou(torch.full_like(perfect, 0.3), masks) == {"iou": 0.0, "threshold": 0.0}


def test_random_maps_score_chance_within_the_mann_whitney_error():
    masks = torch.rand(20, 32, 32, generator=gen(1)) < 0.2
    maps = torch.rand(20, 32, 32, generator=gen(2))
    n1, n2 = int(masks.sum()), int((~masks).sum())
    se = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # the standard error of AUROC under H0
    assert abs(pixel_auroc(maps, masks) - 0.5) < 5 * se


def test_pixel_and_image_auroc_equal_sklearn_with_ties():
    masks = blob_masks(seed=3)
    maps = (torch.rand(masks.shape, generator=gen(4)) * 5).floor() + 2 * masks.float() * (
        torch.rand(masks.shape, generator=gen(5)) < 0.7
    )  # quantised: many ties
    expected = roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.2, 0.9, 0.4])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_best_iou_equals_a_brute_force_threshold_loop():
    masks = blob_masks(n=3, size=8, seed=6)
    maps = torch.rand(masks.shape, generator=gen(7)) + masks.float() * torch.rand(masks.shape, generator=gen(8))
    v = maps.double()
    v = (v - v.min()) / (v.max() - v.min())
    best, best_t = -1.0, None
    for i in range(100):
        t = i / 100
        pred = v > t
        union = int((pred | masks).sum())
        iou = int((pred & masks).sum()) / union
        if iou > best:
            best, best_t = iou, t
    result = best_iou(maps, masks, thresholds=100)
    assert result["iou"] == best and result["threshold"] == best_t
    assert 0 < best < 1


def two_regions() -> tuple[torch.Tensor, torch.Tensor]:
    """One 10 x 10 image: region A (2 x 2 = 4 px) scored 1 everywhere, region B (4 x 4 = 16 px)
    scored 1 on its top half only; 8 of the 80 normal pixels score 0.5, the rest 0."""
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # A
    masks[0, 5:9, 5:9] = True  # B, not touching A
    maps = torch.zeros(1, 10, 10)
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 5:7, 5:9] = 1.0
    maps[0, 0, 4:10] = 0.5
    maps[0, 9, 0:2] = 0.5
    return maps, masks


def test_pro_on_two_regions_of_different_size():
    maps, masks = two_regions()
    assert int((maps[~masks] == 0.5).sum()) == 8
    # the curve: (0, 0); t = 1: FPR 0, PRO = (1 + 1/2) / 2 = 3/4; t = 0.5: FPR 8/80 = 0.1, PRO 3/4;
    # t = 0: (1, 1). Area up to 0.3: 0.1 * 3/4 + trapezoid from 0.1 to 0.3, PRO(0.3) = 3/4 + 1/4 * 0.2 / 0.9
    pro_at = 0.75 + 0.25 * 0.2 / 0.9
    expected = (0.1 * 0.75 + 0.2 * (0.75 + pro_at) / 2) / 0.3
    assert pro(maps, masks, max_fpr=0.3) == pytest.approx(expected, rel=1e-12)
    # below the first false positive the curve is flat at 3/4 (pixel recall would be 12 / 20 = 0.6)
    assert pro(maps, masks, max_fpr=0.05) == pytest.approx(0.75, rel=1e-12)
    # thresholds at 0, 0.5 and 1 (3 steps over the range) reach the same points
    assert pro(maps, masks, max_fpr=0.3, steps=3) == pytest.approx(expected, rel=1e-12)
    # 4-connectivity splits a diagonal step into two regions (1 px, 2 px), 8-connectivity keeps one
    # (3 px); the map finds the single pixel. The curve is (0, 0), (0, p), (1, 1): area p + (1 - p) m / 2
    diag = torch.zeros(1, 4, 4, dtype=torch.bool)
    diag[0, 0, 0] = diag[0, 1, 1] = diag[0, 1, 2] = True
    half = torch.zeros(1, 4, 4)
    half[0, 0, 0] = 1.0
    for connectivity, p in ((8, 1 / 3), (4, 1 / 2)):
        assert pro(half, diag, max_fpr=0.01, connectivity=connectivity) == pytest.approx(p + (1 - p) * 0.005)
    assert math.isnan(pro(half, torch.zeros_like(diag)))


def test_pro_weighs_regions_not_pixels():
    # a map that finds only the small region: PRO 1/2 at FPR 0, pixel recall only 4/20
    maps, masks = two_regions()
    maps = torch.where(masks & (torch.arange(10)[None, :, None] < 2), 1.0, 0.0)
    assert pro(maps, masks, max_fpr=0.01) == pytest.approx(0.5 + 0.5 * 0.005, rel=1e-12)


def test_pro_equals_a_threshold_loop_over_labelled_regions():
    from scipy import ndimage

    masks = blob_masks(n=5, size=12, seed=13)
    maps = ((torch.rand(masks.shape, generator=gen(14)) + masks.float() * 0.6) * 4).floor()  # few levels: ties
    m, truth = maps.numpy(), masks.numpy()
    labelled = [ndimage.label(t, structure=np.ones((3, 3)))[0] for t in truth]
    fprs, overlaps = [0.0], [0.0]
    for t in sorted(np.unique(m), reverse=True):
        pred = m >= t
        fprs.append((pred & ~truth).sum() / (~truth).sum())
        per_region = [
            (pred[i] & (lab == k)).sum() / (lab == k).sum()
            for i, lab in enumerate(labelled)
            for k in range(1, lab.max() + 1)
        ]
        overlaps.append(float(np.mean(per_region)))
    fprs, overlaps = np.array(fprs), np.array(overlaps)
    for max_fpr in (0.05, 0.3, 1.0):
        keep = fprs <= max_fpr
        x, y = list(fprs[keep]), list(overlaps[keep])
        if x[-1] < max_fpr:
            x.append(max_fpr)
            y.append(float(np.interp(max_fpr, fprs, overlaps)))
        expected = np.trapezoid(y, x) / max_fpr
        assert pro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, rel=1e-12)


# -- SSIM ---------------------------------------------------------------------------------------------


def test_ssim_map_by_hand_at_an_inner_pixel_and_in_closed_form():
    a = torch.rand(2, 3, 16, 16, generator=gen(9), dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=gen(10), dtype=torch.float64)).clamp(0, 1)
    ours = ssim_map(a, b)
    assert ours.shape == a.shape
    # Wang et al. 2004 at pixel (8, 8), whose 11 x 11 window lies inside: Gaussian weights, local moments
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    w = torch.outer(g, g) / torch.outer(g, g).sum()
    pa, pb = a[..., 3:14, 3:14], b[..., 3:14, 3:14]
    mu_a, mu_b = (w * pa).sum((-2, -1)), (w * pb).sum((-2, -1))
    var_a = (w * pa * pa).sum((-2, -1)) - mu_a**2
    var_b = (w * pb * pb).sum((-2, -1)) - mu_b**2
    cov = (w * pa * pb).sum((-2, -1)) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert_close_scaled(ours[..., 8, 8], expected, terms=2 * 121, scale=1.0, dtype=torch.float64)
    # constant images p and q: no variance, so SSIM = (2pq + C1) / (p^2 + q^2 + C1) at every pixel
    p, q = torch.full((1, 1, 12, 12), 0.3, dtype=torch.float64), torch.full((1, 1, 12, 12), 0.7, dtype=torch.float64)
    closed = (2 * 0.3 * 0.7 + c1) / (0.3**2 + 0.7**2 + c1)
    # the variances are E[x^2] - E[x]^2: their rounding (of E[x^2] <= 1) is divided by var + C2 = C2 here
    assert_close_scaled(ssim_map(p, q), torch.full_like(p, closed), terms=2 * 121, scale=1 / c2, dtype=torch.float64)
    same = ssim_map(a.float(), a.float())
    assert (same - 1).abs().max() <= relative_bound(2 * 121)
    with pytest.raises(ValueError, match="odd size under twice"):
        ssim_map(a[..., :4, :4], b[..., :4, :4])


# -- maps on a tiny model ---------------------------------------------------------------------------------


def tiny_vae(reconstruction: str = "bce") -> VAE:
    torch.manual_seed(0)
    model = VAE(
        image_size=16,
        in_channels=1,
        latent_dim=4,
        encoder={"channels": [8, 8]},
        norm="batch",
        loss={"reconstruction": reconstruction, "beta": 0.7, "recon_weight": 1.3},
    )
    g = gen(11)
    for m in model.modules():  # running statistics away from (0, 1), so eval-mode BatchNorm does something
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval().double()


def images(n: int = 3, seed: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=gen(seed), dtype=torch.float64)


def manual_grad_cam(model: VAE, x: torch.Tensor, score) -> torch.Tensor:
    """Grad-CAM by hand: a forward hook keeps the layer's output A, autograd differentiates
    score(mu) summed over the batch (samples are independent in eval mode)."""
    kept = {}
    handle = model.get_submodule(model.cam_layer).register_forward_hook(lambda m, i, out: kept.update(a=out))
    try:
        mu = model.encode(x)[0]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(score(mu).sum(), kept["a"])
    alpha = grads.mean(dim=(-2, -1))
    raw = torch.einsum("bc,bchw->bhw", alpha, kept["a"].detach()).clamp_min(0)
    return F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False).clamp_min(0)[:, 0]


def test_attention_and_deviation_equal_a_hand_written_grad_cam():
    model, x = tiny_vae(), images()
    terms = chain_terms(model.encoder, model.fc_mu)
    attention = anomaly_map("attention", model, x)
    assert attention.shape == (3, 16, 16) and attention.dtype == torch.float64
    assert_close_scaled(attention, manual_grad_cam(model, x, lambda mu: mu.sum(1)), terms=terms)
    unit = LatentStatistics(mean=torch.zeros(4), std=torch.ones(4))
    deviation = anomaly_map("deviation", model, x, stats=unit)
    assert_close_scaled(deviation, manual_grad_cam(model, x, lambda mu: mu.pow(2).sum(1)), terms=terms)
    stats = LatentStatistics(mean=torch.tensor([0.1, -0.2, 0.3, 0.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.25]))
    shifted = anomaly_map("deviation", model, x, stats=stats)
    oracle = manual_grad_cam(model, x, lambda mu: ((mu - stats.mean.double()) / stats.std.double()).pow(2).sum(1))
    assert_close_scaled(shifted, oracle, terms=terms)
    assert not torch.allclose(shifted, deviation)


def test_attention_weights_are_the_sum_of_the_per_dimension_weights():
    # Grad-CAM's alpha is linear in the target: alpha(sum_i mu_i) = sum_i alpha(mu_i)
    model, x = tiny_vae(), images()
    forward = targets.latent_mean(model)
    whole = gradcam(model, x, lambda mu: mu.sum(1, keepdim=True), forward=forward, mode="reverse")
    parts = gradcam(model, x, targets.select(None), forward=forward, mode="reverse")
    assert parts.weights.shape == (3, 4, 8)
    assert_close_scaled(whole.weights[:, 0], parts.weights.sum(1), terms=chain_terms(model.encoder, model.fc_mu))


def test_per_dimension_map_weighs_each_dimension_by_its_deviation():
    model, x = tiny_vae(), images()
    stats = LatentStatistics(mean=torch.tensor([0.1, -0.2, 0.3, 0.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.25]))
    with torch.no_grad():
        z = stats.standardise(model.encode(x)[0])
    oracle = sum(z[:, i, None, None].pow(2) * manual_grad_cam(model, x, lambda mu, i=i: mu[:, i]) for i in range(4))
    got = anomaly_map("per_dimension", model, x, stats=stats)
    assert_close_scaled(got, oracle, terms=chain_terms(model.encoder, model.fc_mu))
    mean = sum(manual_grad_cam(model, x, lambda mu, i=i: mu[:, i]) for i in range(4)) / 4
    assert_close_scaled(anomaly_map("per_dimension", model, x), mean, terms=chain_terms(model.encoder, model.fc_mu))


def test_latent_smoothgrad_is_the_input_gradient_without_noise():
    model, x = tiny_vae(), images(2)
    stats = LatentStatistics(mean=torch.tensor([0.1, -0.2, 0.3, 0.0]), std=torch.tensor([0.5, 1.0, 2.0, 0.25]))
    got = anomaly_map("latent_smoothgrad", model, x, stats=stats, noise=0.0, samples=2)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(stats.deviation(model.encode(xg)[0]).sum(), xg)
    assert got.shape == (2, 16, 16)
    assert_close_scaled(got, grad.abs().amax(1), terms=chain_terms(model.encoder, model.fc_mu))
    # with noise: the project's SmoothGrad of the same target (same seed, 8 samples by default)
    noisy = anomaly_map("latent_smoothgrad", model, x, stats=stats)
    ref = smoothgrad(model, x, stats.deviation, samples=8, forward=targets.latent_mean(model)).maps[:, 0]
    assert torch.equal(noisy, ref)
    # without statistics: the mean of the per-dimension maps of mu
    per_dim = anomaly_map("latent_smoothgrad", model, x, dims=[1, 3], noise=0.0, samples=2)
    grads = [torch.autograd.grad(model.encode(xg)[0][:, i].sum(), xg)[0].abs().amax(1) for i in (1, 3)]
    assert_close_scaled(per_dim, (grads[0] + grads[1]) / 2, terms=chain_terms(model.encoder, model.fc_mu))


def test_reconstruction_maps():
    model, x = tiny_vae(), images()
    x_hat = model.reconstruct(x)
    assert torch.equal(anomaly_map("recon_error", model, x), (x - x_hat).pow(2).sum(1))
    assert torch.equal(anomaly_map("recon_error", model, x, kind="l1"), (x - x_hat).abs().sum(1))
    with torch.no_grad():
        logits = model.decode_logits(model.encode(x)[0])
    bce = anomaly_map("recon_error", model, x, kind="bce")
    assert_close_scaled(bce, F.binary_cross_entropy_with_logits(logits, x, reduction="none")[:, 0], terms=1)
    ssim = anomaly_map("recon_ssim", model, x)
    assert ssim.shape == (3, 16, 16)
    _, full = structural_similarity_index_measure(x_hat, x, data_range=1.0, return_full_image=True, reduction="none")
    assert_close_scaled(ssim, 1 - full[:, 0], terms=2 * 121, scale=1.0)
    # normalised maps are min-max scaled per image
    scaled = anomaly_map("recon_error", model, x, normalize=True)
    assert torch.allclose(scaled.amin((1, 2)), torch.zeros(3, dtype=x.dtype))
    assert torch.allclose(scaled.amax((1, 2)), torch.ones(3, dtype=x.dtype))


def test_unknown_map_names_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        anomaly_map("nope", tiny_vae(), images())
    assert set(ANOMALY_MAPS) == {
        "attention",
        "deviation",
        "per_dimension",
        "latent_smoothgrad",
        "recon_error",
        "recon_ssim",
    }


@pytest.mark.parametrize("reconstruction", ["bce", "mse"])
def test_image_scores_equal_the_models_own_loss_per_image(reconstruction):
    model, x = tiny_vae(reconstruction), images(4)
    stats = latent_statistics(model, [images(5, seed=20), {"image": images(3, seed=21)}])
    scores = image_scores(model, x, stats)
    assert set(scores) == {"elbo", "recon_error", "kl", "deviation", "attention_mass"}
    assert all(v.shape == (4,) for v in scores.values())
    with torch.no_grad():
        mu, logvar = model.encode(x)
        logits = model.decode_logits(mu)
        recon = reconstruction_loss(logits, x, reconstruction, model.decode(mu))
        kl = kl_standard_normal(mu, logvar).sum(1)
        batch_loss = model.loss_terms({"image": x}, model.loss_cfg.beta)["loss"]
    scale = float((1.3 * recon + 0.7 * kl).abs().max())
    assert_close_scaled(scores["elbo"], 1.3 * recon + 0.7 * kl, terms=1, scale=scale)
    assert_close_scaled(scores["elbo"].mean(), batch_loss, terms=4 * 256, scale=scale)
    assert_close_scaled(scores["kl"], kl, terms=1)
    assert torch.equal(scores["recon_error"], (model.decode(mu) - x).pow(2).flatten(1).sum(1))
    assert_close_scaled(scores["deviation"], stats.deviation(mu)[:, 0], terms=1)
    assert torch.equal(scores["attention_mass"], anomaly_map("attention", model, x).sum((1, 2)))


def test_latent_statistics_of_a_tensor_and_of_batches():
    model = tiny_vae()
    x = images(8, seed=30)
    whole = latent_statistics(model, x)
    split = latent_statistics(model, [x[:5], (x[5:], None)])
    with torch.no_grad():
        mu, logvar = model.encode(x)
    assert whole.mean.shape == whole.std.shape == (4,)
    assert_close_scaled(whole.mean, mu.mean(0), terms=8, dtype=torch.float32)
    assert_close_scaled(whole.std, mu.std(0, correction=0), terms=8, dtype=torch.float32)
    assert_close_scaled(split.mean, whole.mean, terms=8)
    posterior = latent_statistics(model, x, spread="posterior")
    assert_close_scaled(posterior.std, torch.exp(0.5 * logvar.mean(0)), terms=8, dtype=torch.float32)
    # a constant dimension's spread is floored, so the deviation stays finite
    assert float(latent_statistics(model, x[:1]).std.min()) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="spread"):
        latent_statistics(model, x, spread="nope")


def test_evaluate_equals_its_parts_computed_on_the_whole_set():
    """score_anomalies() chunks the test set; every number must equal the same function on the whole set."""
    from src.xai.scores.anomaly import score_anomalies

    model, normal, x = tiny_vae(), images(8, seed=20), images(7, seed=21)
    anomalous = torch.tensor([0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    masks = blob_masks(7, 16, seed=3)
    out = score_anomalies(
        model, normal, x, anomalous, masks, maps=("attention", "deviation", "recon_error"), batch_size=3, thresholds=20
    )
    stats = latent_statistics(model, normal)
    for name in ("attention", "deviation", "recon_error"):
        whole = anomaly_map(name, model, x, **({"stats": stats} if name == "deviation" else {}))
        expected = localisation_scores(whole, masks, thresholds=20)
        mass_auroc = image_auroc(whole.sum((1, 2)), anomalous)
        assert out["pixel"][name] == pytest.approx({**expected, "image_auroc": mass_auroc})
    for key, value in image_scores(model, x, stats).items():
        assert out["image"][key] == pytest.approx(image_auroc(value, anomalous))
    share = pytest.approx(masks.float().mean().item())
    assert out["counts"] == {"images": 7, "anomalous": 3, "anomalous_pixel_share": share}
    with pytest.raises(ValueError, match="unknown anomaly map"):
        score_anomalies(model, normal, x, anomalous, maps=("gradients",))
