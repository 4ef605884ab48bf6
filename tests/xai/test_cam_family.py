"""HiResCAM, LayerCAM, XGradCAM and Score-CAM (and Grad-CAM / Grad-CAM++) against independent oracles:
pytorch-grad-cam, the per-target loop, closed forms and a hand-checked Score-CAM."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.base.cam import VARIANTS, XGRADCAM_EPS, cam_from_gradients
from src.models.vae import VAE
from src.testing.tolerance import assert_close_scaled, chain_terms, relative_bound
from src.xai import targets
from src.xai.core import explain, get_method
from src.xai.methods.gradcam import (
    SCORECAM_EPS,
    gradcam,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)

NEW = {"hirescam": hirescam, "layercam": layercam, "xgradcam": xgradcam, "scorecam": scorecam}
GRADIENT = ("hirescam", "layercam", "xgradcam")


class FullRes(nn.Module):
    """A classifier whose CAM layer (the ReLU after two same-padded convs) keeps the input's
    resolution, so pytorch-grad-cam's cv2 resize to the input is the identity."""

    def __init__(self, classes: int = 4, logit_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, classes)
        )
        with torch.no_grad():
            self.head[3].weight.mul_(logit_scale)
        self.cam_layer = "features.3"

    def forward(self, x):
        return self.head(self.features(x))


class Strided(nn.Module):
    """A classifier with its CAM layer at half the input's resolution (Score-CAM upsamples)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 5, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, classes))
        self.cam_layer = "conv"

    def forward(self, x):
        return self.head(self.conv(x))


def tiny_vae():
    torch.manual_seed(0)
    return VAE(image_size=16, in_channels=1, latent_dim=6, encoder={"channels": [4, 8]}, norm="batch").eval()


def layer_activation_and_gradient(net, layer, x, cls):
    """A [B, C, h, w] and d(sum_b logit[b, cls[b]]) / dA by plain autograd."""
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    out = net(x)
    handle.remove()
    (g,) = torch.autograd.grad(out.gather(1, cls.view(-1, 1)).sum(), acts["a"])
    return acts["a"].detach().double(), g.double()


def pgc_scale(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scale_cam_image per map, in float32: (m - min) / (1e-7 + max(m - min))."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (1e-7 + shifted.amax(dim=(-2, -1), keepdim=True))


# -- 1. pytorch-grad-cam ----------------------------------------------------------------------------------


def test_class_maps_equal_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = FullRes(logit_scale=100.0).eval()  # large gradients: Grad-CAM++'s 1e-6 (see below) stays small
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    cls = targets.top_classes(net(x), k=1)[:, 0]
    a, g = layer_activation_and_gradient(net, net.features[3], x, cls)
    channels, pixels = a.shape[1], a.shape[2] * a.shape[3]
    classes = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "xgradcam": pgc.XGradCAM,
        "scorecam": pgc.ScoreCAM,
    }
    for name, cam_class in classes.items():
        ours = get_method(name)(net, x, targets.per_sample(cls))
        with cam_class(model=net, target_layers=[net.features[3]]) as cam:
            theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in cls]))
        raw = ours.raw[:, 0].double()
        # the scale of the terms of each map pixel: sum_c |weight_c| |A_c| (a pixel's own |g_c| for the
        # element-wise maps); Score-CAM's softmax weights move by 2 |d score| relative to themselves
        if name in ("hirescam", "layercam"):
            terms_scale = (g.abs() * a).sum(1).amax()
        else:
            terms_scale = torch.einsum("bc,bchw->bhw", ours.weights[:, 0].double().abs(), a).amax()
        terms = chain_terms(net) + channels + pixels
        extra = 0.0
        if name == "scorecam":
            scores = net(x).gather(1, cls.view(-1, 1)).detach()
            terms_scale = terms_scale * (1 + 2 * float(scores.abs().max()))
        if name == "gradcampp":
            # pytorch-grad-cam adds 1e-6 to a_ij's denominator d = g^2 (2 + S g) where we guard d = 0
            # only: each term of alpha differs by exactly ours * 1e-6 / (d + 1e-6) (no rounding)
            s = a.sum(dim=(-2, -1), keepdim=True)
            d = g**2 * (2 + s * g)
            term = torch.where(g != 0, g**2 / torch.where(d != 0, d, 1.0), 0.0) * g.clamp_min(0)
            shift = (term * 1e-6 / (d + 1e-6)).sum(dim=(-2, -1))  # [B, C]
            extra = float(torch.einsum("bc,bchw->bhw", shift, a).amax())
        spread = float((raw.amax(dim=(-2, -1)) - raw.amin(dim=(-2, -1))).min())
        assert spread > 0.01 * float(raw.max()), name  # a map with contrast, or the comparison is empty
        # pytorch-grad-cam min-max scales each layer's map, then the layers' mean: a raw error e moves
        # the scaled map by at most 4 e / (max - min); the scalings' own subtract and divide round at
        # the scaled map's scale, 1
        atol = 4 * (relative_bound(terms) * float(terms_scale) + extra) / spread + relative_bound(8)
        ours_scaled = pgc_scale(pgc_scale(ours.raw[:, 0]))
        assert_close_scaled(ours_scaled, theirs, terms=terms, scale=atol / relative_bound(terms), msg=name)
        # the oracle is sharp: it tells the methods apart
        if name != "gradcam":
            other = pgc_scale(pgc_scale(gradcam(net, x, targets.per_sample(cls)).raw[:, 0]))
            assert (other - theirs).abs().max() > 10 * atol, name


# -- 2. K targets at once = one call per target ------------------------------------------------------------


@pytest.mark.parametrize("name", list(NEW))
def test_k_targets_at_once_equal_the_per_target_loop(name):
    method = NEW[name]
    # the latent means of a VAE, all six at once, at the last encoder block's output (after its ReLU:
    # Score-CAM's near-uniform weights on the conv's mostly negative output leave nothing)
    vae = tiny_vae()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    forward = targets.latent_mean(vae)
    opts = {"forward": forward, "layer": "encoder.blocks.1.act"}
    both = method(vae, x, targets.select(), chunk_size=4, **opts)  # chunks of 4 (+ 2)
    assert both.raw.shape == (3, 6, 4, 4) and both.weights.shape == (3, 6, 8) and both.maps.shape == (3, 6, 16, 16)
    assert (both.raw > 0).any()
    loop = method(vae, x, targets.select(), batched=False, **opts)
    # batched vs per-target backwards (or masked forwards of 4 x 3 vs 3 images): other kernels; then
    # the sums over 16 pixels, 8 channels; Score-CAM's softmax moves by 2 |d score| of itself
    terms = chain_terms(vae) + 16 + 8
    scale = both.raw.abs().max() * (1 + 2 * float(forward(x).detach().abs().max()) if name == "scorecam" else 1)
    assert_close_scaled(both.raw, loop.raw, terms=terms, scale=scale)
    for k in range(6):
        alone = method(vae, x, targets.select([k]), **opts)
        assert_close_scaled(alone.raw[:, 0], both.raw[:, k], terms=terms, scale=scale, msg=f"{name} latent {k}")
        assert_close_scaled(alone.weights[:, 0], both.weights[:, k], terms=terms, scale=both.weights, msg=name)
    # per-sample class targets: each sample's two most likely classes
    net = FullRes().eval()
    xc = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    logits = net(xc)
    top = targets.top_classes(logits, k=2)
    both = method(net, xc, targets.per_sample(top))
    terms = chain_terms(net) + 64 + 8
    scale = both.raw.abs().max() * (1 + 2 * float(logits.detach().abs().max()) if name == "scorecam" else 1)
    for k in range(2):
        alone = method(net, xc, targets.per_sample(top[:, k]))
        assert_close_scaled(alone.raw[:, 0], both.raw[:, k], terms=terms, scale=scale, msg=f"{name} class {k}")
    # and through the registry, by name, with the one call shape
    torch.testing.assert_close(explain(name, net, xc, targets.per_sample(top)).raw, both.raw)


# -- 3. closed forms when the target is linear in the layer -------------------------------------------------


class LinearOnLayer(nn.Module):
    """A = conv(x); y = W flatten(A) + b: dy_k / dA = W_k reshaped to [C, h, w], whatever A is."""

    def __init__(self, classes: int = 3, positive: bool = False) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 6, classes)
        if positive:  # A >= 0 for x >= 0: XGradCAM's sum_pq A_c is a sum of like-signed terms
            with torch.no_grad():
                self.conv.weight.abs_()
                self.conv.bias.abs_()

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_linear_target_gives_the_closed_forms():
    x = torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(6))
    net = LinearOnLayer()
    a = net.conv(x).detach()
    w = net.fc.weight.detach().view(3, 4, 5, 6)
    # HiResCAM: M_k = ReLU(sum_c W_k[c] * A_c) exactly (the batched backward of a linear map is W_k:
    # all other rows add exact zeros), up to the order of the 4-channel sum
    hires = hirescam(net, x, targets.select(), layer="conv")
    expected = torch.einsum("kchw,bchw->bkhw", w, a)
    scale = torch.einsum("kchw,bchw->bkhw", w.abs(), a.abs())
    assert_close_scaled(hires.raw, expected.clamp_min(0), terms=4, scale=scale)
    assert_close_scaled(
        hires.weights,
        torch.einsum("kchw,bchw->bkc", w, a) / 30,
        terms=30,
        scale=torch.einsum("kchw,bchw->bkc", w.abs(), a.abs()) / 30,
    )
    assert (hires.raw > 0).any() and (expected < 0).any()  # the ReLU cut something
    # LayerCAM: the positive part of W_k
    layer = layercam(net, x, targets.select(), layer="conv")
    assert_close_scaled(
        layer.raw, torch.einsum("kchw,bchw->bkhw", w.clamp_min(0), a).clamp_min(0), terms=4, scale=scale
    )
    # XGradCAM: alpha_kc = sum_pq A_c / (sum A_c + eps) W_k[c]
    net = LinearOnLayer(positive=True)
    a = net.conv(x).detach()
    w = net.fc.weight.detach().view(3, 4, 5, 6)
    xg = xgradcam(net, x, targets.select(), layer="conv")
    alpha = torch.einsum("kchw,bchw->bkc", w, a / (a.sum(dim=(-2, -1), keepdim=True) + XGRADCAM_EPS))
    alpha_scale = w.abs().amax(dim=(-2, -1)).expand(2, 3, 4)  # shares sum to 1
    assert_close_scaled(xg.weights, alpha, terms=30 + 30, scale=alpha_scale)  # the sum of A, then of 30 products
    assert_close_scaled(
        xg.raw,
        torch.einsum("bkc,bchw->bkhw", alpha, a).clamp_min(0),
        terms=60 + 4,
        scale=torch.einsum("bkc,bchw->bkhw", alpha_scale, a),
    )


# -- 4. Score-CAM by hand and by an explicit loop over channels -----------------------------------------------


class TwoChannels(nn.Module):
    """A_0 = x, A_1 = -x (a 1x1 conv); y_0 = sum A_0 = sum x, y_1 = sum A_1 = -sum x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return self.conv(x).sum(dim=(-2, -1))


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_score_cam_by_hand(chunk_size):
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = torch.stack([x1, 2 * x1]).unsqueeze(1)  # [2, 1, 2, 2]
    cam = scorecam(TwoChannels(), x, targets.select(), layer="conv", chunk_size=chunk_size)
    # sample 1: masks m_0 = (x - 1) / 3 = [[0, 1/3], [2/3, 1]], m_1 = (4 - x) / 3 = [[1, 2/3], [1/3, 0]];
    # y_0 of x * m_0 = 0 + 2/3 + 2 + 4 = 20/3, of x * m_1 = 1 + 4/3 + 1 + 0 = 10/3 (y_1: their negatives).
    # Sample 2 (= 2 x1): the same masks, twice the scores.
    s = torch.tensor([[20 / 3, 10 / 3], [40 / 3, 20 / 3]])  # [B, C] for y_0
    w0 = torch.softmax(s, dim=1)
    w1 = torch.softmax(-s, dim=1)
    assert_close_scaled(cam.weights, torch.stack([w0, w1], 1), terms=4 + 2 + 2, scale=1.0)
    # the map: ReLU(w_0 x - w_1 x) = tanh((s_0 - s_1) / 2) x for y_0, and ReLU(-that) = 0 for y_1
    expected0 = torch.tanh(torch.tensor([10 / 6, 20 / 6])).view(2, 1, 1) * x[:, 0]
    # the scores: sums of 4 products; the softmax moves by 2 |d score| relative to itself
    assert_close_scaled(cam.raw[:, 0], expected0, terms=4 + 2 + 2, scale=x.max() * (1 + 2 * s.max()))
    assert torch.equal(cam.raw[:, 1], torch.zeros(2, 2, 2))
    assert cam.maps.shape == (2, 2, 2, 2)


def test_score_cam_equals_a_loop_over_channels():
    net = Strided().eval()
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    logits = net(x)
    top = targets.top_classes(logits, k=2)
    cam = scorecam(net, x, targets.per_sample(top), chunk_size=2)  # 5 channels: chunks of 2, 2, 1
    a = net.conv(x).detach()
    scores = []
    for c in range(5):  # the oracle: one forward of the B images masked by channel c
        up = F.interpolate(a[:, c : c + 1], size=(8, 8), mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
        scores.append(net(x * (up - lo) / (hi - lo + SCORECAM_EPS)).gather(1, top).detach())
    weights = torch.softmax(torch.stack(scores, -1), dim=-1)  # [B, K, C]
    expected = torch.einsum("bkc,bchw->bkhw", weights, a).clamp_min(0)
    terms = chain_terms(net, backward=False) + 64 + 5  # + the bilinear taps and min-max, + 5 channels
    s = float(torch.stack(scores).abs().max())
    assert_close_scaled(cam.weights, weights, terms=terms, scale=2 * s)
    scale = torch.einsum("bkc,bchw->bkhw", weights, a.abs()).max() * (1 + 2 * s)
    assert_close_scaled(cam.raw, expected, terms=terms, scale=scale)
    assert (cam.raw > 0).any() and cam.raw.shape == (3, 2, 4, 4)
    # a forward with a tuple output: each channel's B samples reach the target as one output
    pair = scorecam(net, x, lambda out: out[0].gather(1, top), forward=lambda z: (net(z), "extra"), chunk_size=2)
    torch.testing.assert_close(pair.raw, cam.raw)


def test_score_cam_needs_no_gradients():
    net = Strided().eval()
    x = torch.rand(2, 2, 8, 8)
    reference = scorecam(net, x, targets.classes(1)).raw
    with torch.inference_mode():
        torch.testing.assert_close(scorecam(net, x.clone(), targets.classes(1)).raw, reference)
    assert all(p.grad is None for p in net.parameters())
    assert not net.conv._forward_hooks


# -- 5. names ---------------------------------------------------------------------------------------------------


def test_unknown_variants_name_the_choices():
    a, g = torch.rand(1, 2, 3, 3), torch.rand(1, 1, 2, 3, 3)
    for variant in ("gradcam", "gradcampp", "hirescam", "layercam", "xgradcam"):
        assert variant in VARIANTS
        maps, weights = cam_from_gradients(a, g, variant)
        assert maps.shape == (1, 1, 3, 3) and weights.shape == (1, 1, 2)
    with pytest.raises(ValueError, match=r"unknown Grad-CAM method 'hires'.*hirescam.*layercam.*xgradcam"):
        cam_from_gradients(a, g, "hires")
    net, x = FullRes().eval(), torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'scorecam'.*gradcam.*call the scorecam function itself"):
        gradcam(net, x, targets.classes(0), method="scorecam")
    with pytest.raises(ValueError, match="mode='reverse' for layercam"):
        gradcam(net, x, targets.classes(0), method="layercam", mode="forward")
    with pytest.raises(ValueError, match="unknown explanation method 'score_cam'.*scorecam"):
        get_method("score_cam")
    for name, fn in NEW.items():
        assert get_method(name) is fn
