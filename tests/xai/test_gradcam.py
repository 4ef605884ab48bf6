import warnings

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from src.base.maps import scale_by_max
from src.models.cvae import CVAE
from src.models.vae import VAE
from src.testing.tolerance import assert_close_scaled, chain_terms
from src.xai import targets
from src.xai.methods.gradcam import channel_shift_weights, gradcam


class Net(nn.Module):
    def __init__(self, inplace: bool = False, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, classes))
        self.cam_layer = "features.2"

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def x():
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_batched_equals_the_per_target_loop(x, method):
    net = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the batched backward itself ran, no fallback
        batched = gradcam(net, x, targets.select(), method=method, chunk_size=2)  # 5 targets in chunks of 2
    loop = gradcam(net, x, targets.select(), method=method, batched=False)
    assert batched.raw.shape == (4, 5, 6, 6)
    # a vmapped backward vs one per target: other kernels; then alpha's mean over 36 pixels
    terms = chain_terms(net) + 36
    assert_close_scaled(batched.raw, loop.raw, terms=terms)
    assert_close_scaled(batched.weights, loop.weights, terms=terms)
    # and each target alone, one backward of its own
    for k in range(5):
        alone = gradcam(net, x, targets.select([k]), method=method, batched=False)
        assert_close_scaled(alone.raw[:, 0], batched.raw[:, k], terms=terms, scale=batched.raw)


def test_class_logit_map_equals_captum_layer_gradcam(x):
    net = Net().eval()
    ours = gradcam(net, x, targets.select([3]))
    captum = LayerGradCam(net, net.features[2]).attribute(x, target=3, relu_attributions=True)
    terms = chain_terms(net) + 36  # Captum's mean and channel sum vs our einsum: other orders
    assert_close_scaled(ours.raw[:, 0], captum[:, 0], terms=terms)
    up = LayerAttribution.interpolate(captum, (12, 12), interpolate_mode="bilinear")
    assert_close_scaled(ours.upsampled()[:, 0], up[:, 0].clamp_min(0), terms=terms + 4)  # + bilinear's 4 taps
    # per-sample targets (each sample's own predicted class) against Captum's per-sample target list
    top = targets.top_classes(net(x), k=1)
    ours = gradcam(net, x, targets.per_sample(top))
    captum = LayerGradCam(net, net.features[2]).attribute(x, target=top[:, 0].tolist(), relu_attributions=True)
    assert_close_scaled(ours.raw[:, 0], captum[:, 0], terms=terms)


class LinearHead(nn.Module):
    """A = W x (1x1 conv, linear in the input), y_k = sum_c V[k, c] sum_pq A_c[p, q]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1, bias=False)
        self.V = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])

    def forward(self, x):
        return self.conv(x).sum(dim=(-2, -1)) @ self.V.T


def test_linear_layer_gives_the_analytic_map():
    net = LinearHead()
    x = torch.randn(2, 2, 4, 5)
    cam = gradcam(net, x, targets.select(), layer="conv")
    a = net.conv(x).detach()
    # dy_k / dA_c[p, q] = V[k, c] everywhere, so alpha = V and M_k = ReLU(sum_c V[k, c] A_c)
    expected = torch.einsum("kc,bchw->bkhw", net.V, a).clamp_min(0)
    pixels = 4 * 5  # alpha: the mean of 20 equal gradients; the map: 3 channels
    assert_close_scaled(cam.raw, expected, terms=pixels + 3)
    assert_close_scaled(cam.weights, net.V.expand(2, 2, 3), terms=pixels)
    # Grad-CAM++ closed form with constant gradients g = V: a = g^2 / (2 g^2 + S g^3), w = sum_pq a ReLU(g)
    pp = gradcam(net, x, targets.select(), layer="conv", method="gradcampp")
    g = net.V.view(1, 2, 3)
    s = a.sum(dim=(-2, -1)).view(2, 1, 3)
    a_ij = torch.where(g != 0, g**2 / (2 * g**2 + s * g**3), torch.zeros(()))
    assert_close_scaled(pp.weights, 20 * a_ij * g.clamp_min(0), terms=2 * pixels)  # sum of A, sum of a * g


def test_hooks_released_after_an_error(x):
    net = Net().eval()

    def broken(out):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        gradcam(net, x, broken)
    assert not net.features[2]._forward_hooks
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        gradcam(net, x, lambda out: out.sum())
    assert not net.features[2]._forward_hooks
    gradcam(net, x, targets.select([0]))
    assert not net.features[2]._forward_hooks


def test_inplace_relu_after_the_layer_is_safe(x):
    plain = gradcam(Net(inplace=False).eval(), x, targets.select())
    inplace = gradcam(Net(inplace=True).eval(), x, targets.select())
    torch.testing.assert_close(plain.raw, inplace.raw)
    assert (plain.raw > 0).any()


def test_gradients_on_inside_no_grad_and_inference_mode_and_no_param_grads(x):
    net = Net().eval()
    reference = gradcam(net, x, targets.select()).raw
    with torch.no_grad():
        torch.testing.assert_close(gradcam(net, x, targets.select()).raw, reference)
    with torch.inference_mode():
        xi = x.clone()
        torch.testing.assert_close(gradcam(net, xi, targets.select()).raw, reference)
    assert all(p.grad is None for p in net.parameters())
    for p in net.parameters():  # frozen weights: the activation is still in the graph
        p.requires_grad_(False)
    torch.testing.assert_close(gradcam(net, x, targets.select()).raw, reference)


def test_bad_layer_names_the_conv_layers(x):
    with pytest.raises(ValueError, match=r"no layer 'features.9'.*features.0"):
        gradcam(Net(), x, targets.select(), layer="features.9")


def test_normalized_and_overall_maps(x):
    cam = gradcam(Net().eval(), x, targets.select())
    norm = cam.normalized()
    assert norm.shape == (4, 5, 12, 12) and norm.min() >= 0
    peaks = norm.amax(dim=(-2, -1))
    assert torch.all((peaks == 1) | (cam.raw.amax(dim=(-2, -1)) == 0))  # peak / peak is exactly 1 in IEEE
    torch.testing.assert_close(cam.overall(), scale_by_max(cam.upsampled().mean(1, keepdim=True))[:, 0])
    assert torch.equal(scale_by_max(torch.zeros(1, 1, 3, 3)), torch.zeros(1, 1, 3, 3))


def tiny_vae():
    torch.manual_seed(0)
    return VAE(image_size=16, in_channels=1, latent_dim=6, encoder={"channels": [4, 8]}, norm="batch").eval()


def test_latent_dimension_maps_follow_liu_et_al():
    vae = tiny_vae()
    x = torch.rand(3, 1, 16, 16)
    cam = gradcam(vae, x, targets.select(), forward=targets.latent_mean(vae))
    assert cam.raw.shape == (3, 6, 4, 4)
    # the oracle: for each dimension i, alpha = spatial mean of d mu_i / d A, by hand
    layer = vae.get_submodule(vae.cam_layer)
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    mu, _ = vae.encode(x)
    handle.remove()
    for i in range(6):
        (g,) = torch.autograd.grad(mu[:, i].sum(), acts["a"], retain_graph=True)
        expected = (g.mean(dim=(-2, -1), keepdim=True) * acts["a"]).sum(1).clamp_min(0)
        # one backward per dimension vs batched, other reductions: at the scale of all the maps
        assert_close_scaled(cam.raw[:, i], expected.detach(), terms=chain_terms(vae) + 16, scale=cam.raw)


def test_sampled_latent_is_reproducible_and_differs_from_the_mean():
    vae = tiny_vae()
    x = torch.rand(2, 1, 16, 16)
    a = gradcam(vae, x, targets.select([0, 1]), forward=targets.sampled_latent(vae, seed=3)).raw
    b = gradcam(vae, x, targets.select([0, 1]), forward=targets.sampled_latent(vae, seed=3)).raw
    torch.testing.assert_close(a, b)
    z1 = targets.sampled_latent(vae, seed=3)(x)
    z2 = targets.sampled_latent(vae, seed=4)(x)
    assert not torch.allclose(z1, z2)


class TinySeg(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, classes, 2, stride=2)

    def forward(self, x):
        return self.up(torch.relu(self.down(x)))


def _seg_oracle(net, x, c, mask):
    acts = {}
    h = net.down.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    out = net(x)
    h.remove()
    (g,) = torch.autograd.grad((out[:, c] * mask).sum(), acts["a"])
    return (g.mean(dim=(-2, -1), keepdim=True) * acts["a"]).sum(1).clamp_min(0).detach()


def test_seg_grad_cam_regions_match_the_formula():
    net = TinySeg()
    x = torch.rand(2, 1, 8, 8)
    out = net(x)
    # a box region, one class
    region = targets.box((8, 8), 2, 3, 3, 2)
    cam = gradcam(net, x, targets.segmentation_region(1, region), layer="down")
    terms = chain_terms(net) + 64 + 16  # + the region's 64-pixel sum, alpha's 16-pixel mean
    assert_close_scaled(cam.raw[:, 0], _seg_oracle(net, x, 1, region), terms=terms)
    # all pixels predicted as each class, three classes in one batched pass
    cam = gradcam(net, x, targets.segmentation_region([0, 1, 2]), layer="down")
    for c in range(3):
        predicted = (out.argmax(1) == c).float()
        assert_close_scaled(cam.raw[:, c], _seg_oracle(net, x, c, predicted), terms=terms, scale=cam.raw)
    # binary masks: one channel, the pixels with positive logits
    binary = TinySeg(classes=1)
    cam = gradcam(binary, x, targets.segmentation_region(0), layer="down")
    positive = (binary(x)[:, 0] > 0).float()
    assert_close_scaled(cam.raw[:, 0], _seg_oracle(binary, x, 0, positive), terms=terms)


def test_reconstruction_error_target():
    vae = tiny_vae()
    x = torch.rand(2, 1, 16, 16)
    forward = targets.reconstruction_error(vae)
    err = forward(x)
    assert err.shape == (2, 1)
    probs = vae.decode(vae.encode(x)[0])
    expected = torch.nn.functional.binary_cross_entropy(probs, x, reduction="none").flatten(1).sum(1)
    # BCE of sigmoid probabilities vs src's from logits: log(1 - p) has p / (1 - p) ulps of 1 - p's
    # rounding, on top of the 256-pixel sum and the forward pass
    scale = expected * float((1 / (1 - probs)).max())
    assert_close_scaled(err[:, 0], expected, terms=chain_terms(vae, backward=False) + 256, scale=scale)
    assert gradcam(vae, x, targets.select(), forward=forward).raw.shape == (2, 1, 4, 4)


def test_forward_mode_equals_reverse_mode():
    x = torch.rand(3, 1, 16, 16)
    torch.manual_seed(0)
    vae = VAE(image_size=16, in_channels=1, latent_dim=20, encoder={"channels": [4, 8]}, norm="batch").eval()
    forward = targets.latent_mean(vae)
    reverse = gradcam(vae, x, targets.select(), forward=forward, mode="reverse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no silent fallback
        fwd = gradcam(vae, x, targets.select(), forward=forward, mode="forward", chunk_size=3)
        auto = gradcam(vae, x, targets.select(), forward=forward)  # 8 channels < 20 targets: forward mode
    # JVPs (forward mode) vs a backward pass: every sum in another order
    terms = chain_terms(vae) + 16
    assert_close_scaled(fwd.weights, reverse.weights, terms=terms)
    assert_close_scaled(fwd.raw, reverse.raw, terms=terms)
    assert_close_scaled(auto.raw, reverse.raw, terms=terms)
    # segmentation regions chosen from the output itself (argmax inside the target)
    net, xs = TinySeg(), torch.rand(2, 1, 8, 8)
    a = gradcam(net, xs, targets.segmentation_region([0, 1, 2]), layer="down", mode="forward")
    b = gradcam(net, xs, targets.segmentation_region([0, 1, 2]), layer="down", mode="reverse")
    assert_close_scaled(a.raw, b.raw, terms=chain_terms(net) + 64 + 16)
    # per-sample class targets on a classifier
    classifier = Net().eval()
    xc = torch.randn(4, 3, 12, 12)
    top = targets.top_classes(classifier(xc), k=2)
    a = gradcam(classifier, xc, targets.per_sample(top), mode="forward")
    b = gradcam(classifier, xc, targets.per_sample(top), mode="reverse")
    assert_close_scaled(a.raw, b.raw, terms=chain_terms(classifier) + 36)
    with pytest.raises(ValueError, match="gradcampp"):
        gradcam(vae, x, targets.select(), forward=forward, mode="forward", method="gradcampp")


def test_forward_mode_one_sample_at_a_time_equals_the_per_target_loop():
    """The channel-shift JVPs cut by sample (rows=1: the layers before A run per sample) give the
    per-target loop's weights: a VAE's latent means, a CVAE's (its forward bound to per-sample
    conditions, which are cut alike), per-sample class targets; a target that cannot be cut (a
    segmentation region chosen on the whole output) keeps the batch whole."""
    torch.manual_seed(0)
    vae = VAE(image_size=16, in_channels=1, latent_dim=20, encoder={"channels": [4, 8]}, norm="batch").eval()
    cvae = CVAE(
        condition_dim=3,
        image_size=16,
        in_channels=1,
        latent_dim=12,
        encoder={"channels": [4, 8]},
        norm="none",
        bias=True,
    ).eval()
    x, c = torch.rand(3, 1, 16, 16), torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]])
    classifier, xc = Net().eval(), torch.randn(4, 3, 12, 12)
    cases = [
        (vae, x, targets.latent_mean(vae), targets.select()),
        (cvae, x, targets.latent_mean(cvae, c), targets.select()),
        (classifier, xc, classifier, targets.per_sample(targets.top_classes(classifier(xc), k=2))),
    ]
    for model, inputs, forward, target in cases:
        layer = model.get_submodule(model.cam_layer)
        loop = gradcam(model, inputs, target, forward=forward, mode="reverse", batched=False)
        channels = loop.weights.shape[-1]
        pixels = loop.raw.shape[-1] * loop.raw.shape[-2]
        by_sample = channel_shift_weights(forward, target, layer, inputs, channels, pixels, rows=1)
        assert_close_scaled(by_sample, loop.weights, terms=chain_terms(model) + pixels)
    net, xs = TinySeg(), torch.rand(2, 1, 8, 8)
    region = targets.segmentation_region([0, 1, 2])
    whole = channel_shift_weights(net, region, net.down, xs, 4, 16)
    assert torch.equal(channel_shift_weights(net, region, net.down, xs, 4, 16, rows=1), whole)
    # a closure over a per-sample condition (not a Bound) is not cut: it still sees the whole batch
    c_all = c

    def closure(inp):
        return cvae.encode(inp, c_all)[0]

    layer = cvae.get_submodule(cvae.cam_layer)
    loop = gradcam(cvae, x, targets.select(), forward=closure, mode="reverse", batched=False)
    got = channel_shift_weights(closure, targets.select(), layer, x, loop.weights.shape[-1], 16, rows=1)
    assert_close_scaled(got, loop.weights, terms=chain_terms(cvae) + 16)
