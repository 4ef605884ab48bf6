"""The public API: one call shape for every method, the registry, Baseline, targets; the names of
the earlier snapshots are gone, with a clear error."""

import warnings

import pytest
import torch
from torch import nn

from src import xai
from src.testing.tolerance import assert_close_scaled, chain_terms
from src.xai import Baseline, targets


def gap_net() -> nn.Module:
    """conv -> ReLU -> global average pool -> linear: Grad-CAM at the ReLU has a closed form."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    ).eval()


def linear_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_notebook_style_gradcam_ig_and_a_deletion_curve_through_one_call_shape():
    """Only `src.xai` is imported; each call is method(model, inputs, target, **options)."""
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    net = gap_net()
    cam = xai.gradcam(net, x, targets.classes(1), layer="1")
    # at the ReLU output A, d y_1 / d A_c = w_1c / 16 at every pixel: map = ReLU(sum_c w_1c A_c) / 16
    acts = net[1](net[0](x))
    closed = torch.einsum("c,bchw->bhw", net[4].weight[1], acts).clamp_min(0) / 16
    assert cam.maps.shape == (2, 1, 4, 4)
    assert_close_scaled(cam.maps[:, 0], closed.detach(), terms=3 * 16)
    torch.testing.assert_close(cam.weights[:, 0], (net[4].weight[1] / 16).detach().expand(2, 3))

    lin = linear_net()
    ig = xai.integrated_gradients(lin, x, targets.classes(2), baseline=Baseline.constant(0.0), steps=8)
    # a linear model: IG from the zero image is x * w exactly (every path gradient is w)
    w = lin[1].weight[2].detach().view(1, 1, 4, 4)
    assert ig.attributions.shape == (2, 1, 1, 4, 4) and ig.maps.shape == (2, 1, 4, 4)
    assert_close_scaled(ig.attributions[:, 0], x * w, terms=16 + 8)

    curve = xai.deletion(lin, x, targets.classes(2), explanation=ig, steps=4, score="logit")
    # oracle: zero the 4 k most relevant pixels by hand and read the logit
    for b in range(2):
        order = torch.argsort((x * w)[b].flatten(), descending=True)
        for k in range(5):
            img = x[b].flatten().clone()
            img[order[: 4 * k]] = 0.0
            expected = lin(img.view(1, 1, 4, 4))[0, 2]
            assert_close_scaled(curve.scores[b, k], expected.detach(), terms=16)
    assert curve.aopc.shape == (2,) and torch.allclose(curve.aopc, (curve.scores[:, :1] - curve.scores).mean(1))
    # the same three through the registry, by name
    torch.testing.assert_close(xai.explain("gradcam", net, x, targets.classes(1), layer="1").maps, cam.maps)
    torch.testing.assert_close(xai.explain("integrated_gradients", lin, x, targets.classes(2), steps=8).maps, ig.maps)


def test_every_registered_method_takes_the_same_shape_and_k_columns_equal_a_per_column_loop():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3)).eval()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    both = torch.tensor([[0, 2], [1, 0]])
    fast = {"smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 4}, "mask_perturbation": {"steps": 3}}
    for name in xai.METHODS:
        result = xai.explain(name, net, x, targets.classes(both), **fast.get(name, {}))
        assert isinstance(result, xai.Explanation) and result.maps.shape == (2, 2, 6, 6), name
        for k in range(2):  # oracle: one method call per target column (Grad-CAM: another backward batch)
            one = xai.explain(name, net, x, targets.classes(both[:, k]), **fast.get(name, {}))
            assert_close_scaled(result.maps[:, k], one.maps[:, 0], terms=chain_terms(net) + 36, msg=name)


def test_a_callable_target_is_differentiated_like_autograd_does():
    lin = linear_net()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    v = torch.tensor([1.0, -2.0, 0.5])
    sal = xai.saliency(lin, x, targets.direction(v))
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((lin(xx) @ (v / v.norm())).sum(), xx)
    torch.testing.assert_close(sal.attributions[:, 0], g)
    with pytest.raises(ValueError, match="explains classes"):
        xai.lrp(lin, x, targets.direction(v))


def test_baselines_closed_forms_and_parsing():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(Baseline.constant(0.25)(x), torch.full_like(x, 0.25))
    assert torch.equal(Baseline.mean()(x), x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    noise = Baseline.noise(7)(x)
    assert torch.equal(noise, torch.rand(x.shape, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(Baseline.of(torch.ones(1, 3, 1, 1))(x), torch.ones_like(x))
    assert Baseline.parse(0.5) == Baseline.constant(0.5) and Baseline.parse("blur", sigma=2.0) == Baseline.blur(2.0)
    assert Baseline.parse({"kind": "noise", "seed": 3}) == Baseline.noise(3)
    with pytest.raises(ValueError, match="unknown baseline 'plaid'"):
        Baseline.parse("plaid")


def test_the_pre_release_names_are_gone_with_a_clear_error():
    import src.xai.latent.sweeps as sweeps
    import src.xai.methods.attribution as attribution
    import src.xai.scores.metrics as metrics

    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3)).eval()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    t = targets.classes(torch.tensor([2, 1]))
    assert not hasattr(attribution, "attribute") and not hasattr(attribution, "relevance_map")
    assert not hasattr(metrics, "perturbation_scores") and "kl_per_dimension" not in sweeps.__all__
    with pytest.raises(ValueError, match=r"unknown explanation method 'gradcam\+\+'; choose one of \[.*'gradcampp'"):
        xai.get_method("gradcam++")
    for old in ("black", "grey", "blurred"):
        with pytest.raises(ValueError, match=f"unknown baseline '{old}'"):
            Baseline.parse(old)
    for method, keyword in (
        ("occlusion", "fill"),
        ("mask_perturbation", "perturbation"),
        ("integrated_gradients", "sigma"),
    ):
        with pytest.raises(TypeError, match=keyword):
            xai.explain(method, net, x, t, **{keyword: "mean"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # nothing left warns
        xai.explain("gradcampp", net, x, t)


def test_exports_are_the_public_api():
    assert set(xai.__all__) <= set(dir(xai))
    assert {"gradcam", "integrated_gradients", "deletion", "Baseline", "targets", "METHODS"} <= set(xai.__all__)
    assert sorted(xai.METHODS) == sorted(
        {
            "saliency",
            "input_x_gradient",
            "guided_backprop",
            "deconvnet",
            "smoothgrad",
            "integrated_gradients",
            "occlusion",
            "lrp",
            "gradcam",
            "gradcampp",
            "guided_gradcam",
            "hirescam",
            "layercam",
            "xgradcam",
            "scorecam",
            "mask_perturbation",
            "excitation_backprop",
            "contrastive_excitation_backprop",
        }
    )


def test_a_forward_bound_to_a_condition_expands_with_captum_batches():
    """SmoothGrad, IG and occlusion evaluate the forward on expanded batches: a CVAE's condition
    rides along as Captum's additional forward argument. Oracle: each sample alone with its own c."""
    from src.models.cvae import CVAE

    torch.manual_seed(0)
    cvae = CVAE(
        condition_dim=3, image_size=8, in_channels=1, latent_dim=4, encoder={"channels": [4]}, norm="none"
    ).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]])
    # SmoothGrad without noise: its 3 copies of each sample still run as one expanded batch
    options = {
        "smoothgrad": {"samples": 3, "noise": 0.0},
        "integrated_gradients": {"steps": 4},
        "occlusion": {"patch": 4},
        "scorecam": {"chunk_size": 2},
    }
    for name, opts in options.items():
        together = xai.explain(name, cvae, x, targets.select([1, 3]), forward=targets.latent_mean(cvae, c), **opts)
        for b in range(3):
            alone = xai.explain(
                name,
                cvae,
                x[b : b + 1],
                targets.select([1, 3]),
                forward=targets.latent_mean(cvae, c[b : b + 1]),
                **opts,
            )
            # a batch of 3 vs of 1: other kernels, the same sums (the encoder, then 64 pixels)
            assert_close_scaled(together.maps[b], alone.maps[0], terms=chain_terms(cvae) + 64, msg=name)
        assert together.maps.shape == (3, 2, 8, 8) and torch.isfinite(together.maps).all()


def test_every_method_is_registered_and_exported_under_its_function_name():
    assert len(xai.METHODS) >= 18
    for name, info in xai.METHODS.items():
        assert info.fn.__name__ == name and getattr(xai, name) is info.fn and name in xai.__all__
