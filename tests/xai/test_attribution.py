import copy

import pytest
import torch
from captum.attr import (
    LRP,
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule
from torch import nn

from src.base.maps import gaussian_blur
from src.models.classifier import build_cnn
from src.testing.tolerance import assert_close_scaled, chain_terms
from src.xai import METHODS, Baseline, get_method, targets, to_map


def cnn(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    if bn:
        features, head = build_cnn(1, 12, 3, [{"conv": 4, "padding": 1}, {"pool": 2}, {"conv": 6, "padding": 1}], [8])
        return nn.Sequential(features, head).eval()
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 3, bias=False),
    ).eval()


@pytest.fixture
def x():
    return torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))


T = torch.tensor([0, 2, 1, 2])


def run(name, model, x, target, **options):
    """The registered method through the one call shape: [B, C, H, W] for the first target column
    (Grad-CAM's map repeated over the channels)."""
    result = get_method(name)(model, x, targets.classes(target), **options)
    if hasattr(result, "attributions"):
        return result.attributions[:, 0]
    return result.maps[:, 0:1].expand(-1, x.shape[1], -1, -1)


def test_every_method_returns_the_input_shape(x):
    model = cnn()
    fast = {"smoothgrad": {"samples": 3}, "integrated_gradients": {"steps": 8}, "mask_perturbation": {"steps": 5}}
    for name in METHODS:
        out = run(name, model, x, T, **fast.get(name, {}))
        assert out.shape == x.shape, name
        assert torch.isfinite(out).all(), name
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="unknown explanation method 'sailency'"):
        run("sailency", model, x, T)


def test_captum_backed_methods_equal_captum_on_identical_settings(x):
    """The same Captum calls on the same inputs: exact, except IG in batches of 7 (other kernels)."""
    model = cnn()
    t = T.tolist()
    torch.testing.assert_close(run("saliency", model, x, T), Saliency(model).attribute(x, target=t, abs=False))
    torch.testing.assert_close(run("input_x_gradient", model, x, T), InputXGradient(model).attribute(x, target=t))
    torch.testing.assert_close(run("guided_backprop", model, x, T), GuidedBackprop(model).attribute(x, target=t))
    torch.testing.assert_close(run("deconvnet", model, x, T), Deconvolution(model).attribute(x, target=t))
    ig = IntegratedGradients(model).attribute(x, baselines=gaussian_blur(x, 2.0), target=t, n_steps=16)
    ours = run("integrated_gradients", model, x, T, baseline=Baseline.blur(2.0), steps=16, internal_batch_size=7)
    assert_close_scaled(ours, ig, terms=chain_terms(model) + 16)  # batches of 7 vs 64: other conv kernels
    occ = Occlusion(model).attribute(x, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), baselines=0.5, target=t)
    torch.testing.assert_close(run("occlusion", model, x, T, patch=3, stride=2), occ)
    torch.manual_seed(5)
    stdev = 0.2 * float(x.max() - x.min())
    sg = NoiseTunnel(Saliency(model)).attribute(x, nt_type="vargrad", nt_samples=4, stdevs=stdev, target=t)
    state = torch.random.get_rng_state()
    ours = run("smoothgrad", model, x, T, noise=0.2, samples=4, kind="vargrad", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    torch.testing.assert_close(ours, sg)


def test_lrp_equals_captum_and_leaves_the_model_alone(x):
    model = cnn(bn=False)
    before = copy.deepcopy(model.state_dict())
    ours = run("lrp", model, x, T)
    torch.testing.assert_close(ours, LRP(FunctionalFlatten(model)).attribute(x, target=T.tolist()))
    assert not any(hasattr(m, "rule") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # with the BatchNorm / Dropout / Flatten layers of our CNN presets it runs and is conservative-ish
    lrp = run("lrp", cnn(), x, T)
    assert lrp.shape == x.shape and torch.isfinite(lrp).all()


class FunctionalFlatten(nn.Module):
    """The same weights as cnn(bn=False), flattening inside forward: what Captum's LRP handles."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        layers = list(copy.deepcopy(seq))
        i = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
        self.features, self.head = nn.Sequential(*layers[:i]), nn.Sequential(*layers[i + 1 :])

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_linear_model_saliency_is_the_weights_and_ig_is_complete():
    model = Linear().eval()
    x = torch.rand(2, 2, 5, 5)
    sal = run("saliency", model, x, [1, 2])
    torch.testing.assert_close(sal[0].flatten(), model.fc.weight[1])
    torch.testing.assert_close(sal[1].flatten(), model.fc.weight[2])
    for baseline in ("constant", "blur", "noise"):
        ig = run("integrated_gradients", model, x, [1, 2], baseline=baseline, steps=20)
        base = Baseline.parse(baseline)(x)
        gap = model(x).gather(1, torch.tensor([[1], [2]])) - model(base).gather(1, torch.tensor([[1], [2]]))
        # completeness: the 50 inputs' attributions, each a 20-step mean, against a difference of
        # logits (so at the logits' scale)
        logits = torch.cat([model(x), model(base)]).detach()
        assert_close_scaled(ig.flatten(1).sum(1), gap.squeeze(1).detach(), terms=3 * 50 + 20, scale=logits)


def test_excitation_backprop_is_normalised_z_plus_lrp(x):
    """EB's winner-take-all probabilities = LRP with the z+ (alpha1-beta0) rule divided by the
    target logit, on a bias-free ReLU net with non-negative inputs; they sum to 1 per image."""
    model = cnn(bn=False)
    eb = run("excitation_backprop", model, x, T)
    net = FunctionalFlatten(model)
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.rule = Alpha1_Beta0_Rule()
    lrp = LRP(net).attribute(x, target=T.tolist())
    logits = model(x).gather(1, T.view(-1, 1)).view(-1, 1, 1, 1).detach()
    assert_close_scaled(eb, lrp / logits, terms=chain_terms(model))  # two algorithms, other reduction orders
    sums = eb.flatten(1).sum(1)
    has_evidence = lrp.flatten(1).abs().sum(1) > 0  # a random net may give a class no positive evidence
    assert has_evidence.sum() >= 3
    ones = torch.ones(int(has_evidence.sum()))
    assert_close_scaled(sums[has_evidence], ones, terms=chain_terms(model) + x[0].numel())  # + the 144-pixel sum
    assert (eb >= 0).all()


def test_contrastive_excitation_subtracts_the_dual_unit(x):
    model = cnn(bn=False)
    c = run("contrastive_excitation_backprop", model, x, T)
    # oracle: EB of the target minus EB of a model whose target row is negated, both taken from the
    # top layer's input down (the top layer's own normalisation is over the same inputs)
    top = model[-1]
    expected, parts = [], []
    for b in range(4):
        d = copy.deepcopy(model)
        d[-1].weight.data[T[b]] = -top.weight.data[T[b]]
        parts += [
            run("excitation_backprop", model, x[b : b + 1], T[b : b + 1]),
            run("excitation_backprop", d, x[b : b + 1], T[b : b + 1]),
        ]
        expected.append(parts[-2] - parts[-1])
    # one image at a time vs four (other kernels); a difference of two maps, so at their scale
    terms = chain_terms(model)
    assert_close_scaled(c, torch.cat(expected), terms=terms, scale=torch.cat(parts))
    eb = run("excitation_backprop", model, x, T).flatten(1).sum(1)
    sums = c.flatten(1).sum(1)[eb > 0.5]
    assert_close_scaled(sums, torch.zeros_like(sums), terms=terms + x[0].numel(), scale=1.0)  # 1 - 1: both sum to 1


class PatchModel(nn.Module):
    """Class 0's logit reads only the top-left 4x4 patch; class 1 is a constant."""

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * 6  # p(class 0) = 0.73 on a white image
        return torch.stack([s, torch.full_like(s, 5.0)], 1)


def test_mask_perturbation_finds_the_patch_the_class_reads():
    x = torch.ones(2, 1, 16, 16)
    mask = run("mask_perturbation", PatchModel(), x, 0, baseline=Baseline.constant(0.0), steps=150, lr=0.2, l1=0.5)
    inside, outside = mask[:, 0, :4, :4].mean(), mask[:, 0, 8:, 8:].mean()
    assert inside > 0.5 and outside < 0.1, (inside, outside)


def test_to_map_reductions():
    a = torch.tensor([[[[1.0, -3.0]], [[-2.0, 0.5]]]])  # [1, 2, 1, 2]
    assert to_map(a).tolist() == [[[2.0, 3.0]]]
    assert to_map(a, "sum").tolist() == [[[-1.0, -2.5]]]
    assert to_map(a, "abs_sum").tolist() == [[[3.0, 3.5]]]


def test_gradcam_method_is_the_cam_module_upsampled(x):
    from src.xai import targets
    from src.xai.methods.gradcam import gradcam

    model = cnn()
    out = run("gradcam", model, x, T, layer="0.2.conv")
    cam = gradcam(model, x, targets.per_sample(T.view(-1, 1)), layer="0.2.conv")
    torch.testing.assert_close(out[:, 0], cam.upsampled()[:, 0])


def test_excitation_backprop_folds_batchnorm_into_the_weights():
    """conv -> BN (one negative gamma) -> ReLU ... equals the same net with BN folded into the conv."""
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0]))
        bn.bias.copy_(torch.tensor([0.2, 0.5, 0.1]))
    head = [nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4, bias=False)]
    model = nn.Sequential(conv, bn, *head).eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_conv = nn.Conv2d(1, 3, 3, padding=1, bias=True)
    with torch.no_grad():
        folded_conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded_conv.bias.copy_(bn.bias - bn.running_mean * scale)
    folded = nn.Sequential(folded_conv, *head).eval()
    x = torch.rand(2, 1, 6, 6)
    # conv + BN vs the folded conv: the same terms, rounded in another order
    assert_close_scaled(model(x), folded(x), terms=chain_terms(model) + 2)
    for method in ("excitation_backprop", "contrastive_excitation_backprop"):
        ours, theirs = run(method, model, x, [1, 3]), run(method, folded, x, [1, 3])
        assert_close_scaled(ours, theirs, terms=chain_terms(model) + 2, msg=method)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_gradcam_equals_captum(x, mode):
    """Captum's GuidedGradCam (guided backprop x its LayerGradCam resized) at the same layer, per
    class target; ours takes every target's Grad-CAM map from one batched call."""
    model = cnn(bn=False)
    layer = model[3]
    t = T.tolist()
    captum = GuidedGradCam(model, layer).attribute(x, target=t, interpolate_mode=mode)
    ours = run("guided_gradcam", model, x, T, layer="3", interpolate=mode)
    # Grad-CAM weights: Captum's mean of the gradient vs our batched backward (sums in other orders)
    assert_close_scaled(ours, captum, terms=chain_terms(model) + 36, scale=captum.abs().max())
    # K targets at once (every class of every sample) equal K single-target runs
    every = get_method("guided_gradcam")(model, x, targets.select(), layer="3", interpolate=mode).attributions
    for k in range(3):
        one = GuidedGradCam(model, layer).attribute(x, target=k, interpolate_mode=mode)
        assert_close_scaled(every[:, k], one, terms=chain_terms(model) + 36, scale=one.abs().max())


def test_guided_gradcam_for_every_latent_of_a_vae_equals_captum():
    from src.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE(
        image_size=16,
        in_channels=1,
        latent_dim=12,
        encoder={"channels": [4, 8]},
        norm="none",
        activation="relu",
        bias=True,
    ).eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    forward = targets.latent_mean(vae)
    ours = get_method("guided_gradcam")(vae, x, targets.select(), forward=forward, interpolate="nearest")
    assert ours.attributions.shape == (3, 12, 1, 16, 16)
    wrapped = nn.Module()  # Captum's guided backprop finds the ReLU modules inside the module it is given
    wrapped.vae, wrapped.forward = vae, forward
    for k in (0, 5, 11):
        one = GuidedGradCam(wrapped, vae.get_submodule(vae.cam_layer)).attribute(x, target=k)
        # 8 channels < 12 targets: our Grad-CAM weights come from forward-mode JVPs, Captum's from backward
        assert_close_scaled(ours.attributions[:, k], one, terms=chain_terms(vae) + 16, scale=one.abs().max())
