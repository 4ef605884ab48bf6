"""Classic attribution methods behind one call: `attribute(method, model, x, target, **options)`.

Every method returns [B, C, H, W] (the input's shape; map-type methods such as Grad-CAM repeat
their map over the channels). Captum does the methods it has; Grad-CAM comes from
`src/xai/gradcam.py`; mask perturbation (Fong & Vedaldi 2017) and (contrastive) excitation
backprop (Zhang et al. 2016) are written here. `to_map` reduces an attribution to [B, H, W] for
display and metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from src.xai import targets as cam_targets
from src.xai.gradcam import grad_cam

BASELINES = ("black", "blurred", "noise")
FILLS = ("grey", "mean")


def _targets(target, x: torch.Tensor) -> torch.Tensor:
    """[B] long class indices from an int, a list or a tensor."""
    t = torch.as_tensor(target, device=x.device).long().flatten()
    return t.expand(x.shape[0]) if t.numel() == 1 else t


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W], reflect-padded. `sigma`: one value, or one per image
    [B] (0 leaves that image as it is); kernel radius `radius`, default 3 x the largest sigma
    (cut to what the image size allows, then renormalised)."""
    b, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=torch.float32).flatten().cpu()
    if float(sig.max()) <= 0:
        return x
    r = radius if radius is not None else int(3 * float(sig.max()) + 0.5)
    r = max(1, min(r, h - 1, w - 1))
    grid = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (grid[None] / sig.clamp_min(1e-6)[:, None]) ** 2)  # [1 or B, K]; sigma 0 -> a delta
    k = (k / k.sum(1, keepdim=True)).expand(b, -1).repeat_interleave(c, 0).to(x.device, x.dtype)  # [B * C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def baseline_for(
    x: torch.Tensor, baseline: str | torch.Tensor = "black", sigma: float = 5.0, seed: int = 0
) -> torch.Tensor:
    """An IG / deletion reference image: black (zeros), blurred (Gaussian, `sigma` px), uniform
    noise in [0, 1] (seeded), or a given tensor broadcast to x."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "blurred":
        return gaussian_blur(x, sigma)
    if baseline == "noise":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(x.shape, generator=g).to(x.device, x.dtype)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES} or pass a tensor")


def to_map(attribution: torch.Tensor, reduce: str = "max_abs") -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W]: max |a| over channels (saliency's display), sum, or sum of |a|."""
    if reduce == "max_abs":
        return attribution.abs().amax(1)
    if reduce == "sum":
        return attribution.sum(1)
    if reduce == "abs_sum":
        return attribution.abs().sum(1)
    raise ValueError(f"unknown reduction {reduce!r}; choose max_abs, sum or abs_sum")


# -- Captum-backed methods ---------------------------------------------------------------------


def _saliency(model, x, t, abs: bool = False):
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=t, abs=abs)


def _input_x_gradient(model, x, t):
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(x, target=t)


def _guided_backprop(model, x, t):
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(x, target=t)


def _deconvnet(model, x, t):
    from captum.attr import Deconvolution

    return Deconvolution(model).attribute(x, target=t)


def _smoothgrad(model, x, t, noise: float = 0.15, samples: int = 25, kind: str = "smoothgrad", seed: int = 0,
                batch_size: int | None = None):  # fmt: skip
    """SmoothGrad over saliency; noise = stdev as a fraction of the batch's value range (max - min;
    Captum takes one stdev per input tensor, so this is the data's range, not each image's);
    kind: smoothgrad | smoothgrad_sq | vargrad. Seeded, and the global RNG is left as it was."""
    from captum.attr import NoiseTunnel, Saliency

    if kind not in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        raise ValueError(f"unknown SmoothGrad kind {kind!r}; choose smoothgrad, smoothgrad_sq or vargrad")
    stdev = float(noise) * float((x.amax() - x.amin()).clamp_min(1e-12))
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type=kind, nt_samples=samples, stdevs=stdev, target=t,
                                                      nt_samples_batch_size=batch_size)  # fmt: skip


def _integrated_gradients(model, x, t, baseline: str | torch.Tensor = "black", steps: int = 50,
                          internal_batch_size: int | None = None, sigma: float = 5.0, seed: int = 0):  # fmt: skip
    from captum.attr import IntegratedGradients

    base = baseline_for(x, baseline, sigma, seed)
    return IntegratedGradients(model).attribute(x, baselines=base, target=t, n_steps=steps,
                                                internal_batch_size=internal_batch_size)  # fmt: skip


def _occlusion(model, x, t, patch: int = 4, stride: int = 2, fill: str = "grey"):
    from captum.attr import Occlusion

    if fill == "grey":
        base = 0.5
    elif fill == "mean":
        base = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    else:
        raise ValueError(f"unknown occlusion fill {fill!r}; choose one of {FILLS}")
    c = x.shape[1]
    return Occlusion(model).attribute(x, sliding_window_shapes=(c, patch, patch), strides=(c, stride, stride),
                                      baselines=base, target=t)  # fmt: skip


def _network(model: nn.Module) -> nn.Module:
    """The module tree that computes the logits: a Classifier's `net` (its forward is net(x);
    the LightningModule also holds metrics), else the model itself. LRP and excitation backprop
    walk this tree layer by layer."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


class _FlattenThen(nn.Module):
    """Flatten, then the wrapped layer: Captum's LRP cannot pass relevance through a Flatten
    module (its hooks may not change a tensor's shape), but it can through a reshape inside a
    parent module's forward."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


def _fold_flattens(net: nn.Module) -> nn.Module:
    """Drop each Flatten from its Sequential and wrap the module after it in _FlattenThen."""
    for parent in net.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for i, name in enumerate(names):
            if isinstance(parent._modules[name], nn.Flatten):
                if i + 1 == len(names):
                    raise ValueError("LRP: a Flatten must be followed by a layer in the same Sequential")
                parent._modules[names[i + 1]] = _FlattenThen(parent._modules[names[i + 1]])
                del parent._modules[name]
    if any(isinstance(m, nn.Flatten) for m in net.modules()):
        raise ValueError("LRP: only Flatten modules inside a Sequential can be handled")
    return net


def _lrp(model, x, t, epsilon: float = 1e-9):
    """LRP with the epsilon rule on conv / linear / pooling / BatchNorm layers, relevance passed
    unchanged through ReLU, Dropout and Flatten. Runs on a copy: Captum attaches its rules to the modules."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    net = _fold_flattens(copy.deepcopy(_network(model)))
    for module in net.modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.Conv2d | nn.Linear | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d
                      | nn.BatchNorm2d | nn.BatchNorm1d):  # fmt: skip
            module.rule = EpsilonRule(epsilon=epsilon)
        elif isinstance(module, nn.Identity):
            raise ValueError("LRP: remove nn.Identity layers (Captum cannot hook a layer that returns its input)")
        elif isinstance(module, nn.ReLU):
            module.inplace = False
    return LRP(net).attribute(x, target=t)


# -- Grad-CAM ----------------------------------------------------------------------------------


def _cam(model, x, t, method: str, layer: str | None = None):
    """Grad-CAM at `layer`, else the model's cam_layer, else its last Conv2d."""
    if layer is None and getattr(model, "cam_layer", None) is None:
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("Grad-CAM needs a conv layer: name one with layer=...")
        layer = convs[-1]
    cam = grad_cam(model, x, cam_targets.per_sample(t.view(-1, 1)), layer=layer, method=method)
    return cam.upsampled()[:, :1].expand(-1, x.shape[1], -1, -1).contiguous()


# -- written here --------------------------------------------------------------------------------


def _mask_perturbation(model, x, t, perturbation: str = "blur", steps: int = 300, lr: float = 0.1,
                       l1: float = 0.05, tv: float = 0.2, tv_beta: float = 3.0, mask_size: int | None = None,
                       sigma: float = 5.0, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None):  # fmt: skip
    """Fong & Vedaldi 2017, 'meaningful perturbation': learn the smallest deletion mask m (1 =
    delete) that kills the class probability: min l1 * mean(m) + tv * TV_beta(m) + p_t(x * (1 - m)
    + r * m), with r the blurred image, a constant (0) or uniform noise; m is learnt at low
    resolution (`mask_size`, default H / 4) and upsampled bilinearly. Returns m at input size.
    `progress(done, steps)` after each step (it may raise to stop)."""
    b, c, h, w = x.shape
    size = mask_size or max(2, h // 4)
    if perturbation == "blur":
        reference = gaussian_blur(x, sigma)
    elif perturbation == "constant":
        reference = torch.zeros_like(x)
    elif perturbation == "noise":
        reference = baseline_for(x, "noise", seed=seed)
    else:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose blur, constant or noise")
    logit_m = torch.full((b, 1, size, size), -2.0, device=x.device, requires_grad=True)  # start: keep ~all
    opt = torch.optim.Adam([logit_m], lr=lr)
    x, reference = x.detach(), reference.detach()
    for i in range(int(steps)):
        m = torch.sigmoid(logit_m)
        up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        prob = F.softmax(model(x * (1 - up) + reference * up), dim=1).gather(1, t.view(-1, 1)).squeeze(1)
        dx = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(tv_beta).mean(dim=(1, 2, 3))
        dy = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(tv_beta).mean(dim=(1, 2, 3))
        loss = (l1 * m.mean(dim=(1, 2, 3)) + tv * (dx + dy) + prob).sum()
        (logit_m.grad,) = torch.autograd.grad(loss, logit_m)  # nothing piles up in the model's .grad
        opt.step()
        if progress is not None:
            progress(i + 1, int(steps))
    with torch.no_grad():
        up = F.interpolate(torch.sigmoid(logit_m), size=(h, w), mode="bilinear", align_corners=False)
    return up.expand(-1, c, -1, -1).contiguous()


def _sequential_layers(model: nn.Module) -> list[nn.Module]:
    leaves = [m for m in model.modules() if not list(m.children())]
    allowed = (nn.Conv2d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d,
               nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)  # fmt: skip
    bad = [type(m).__name__ for m in leaves if not isinstance(m, allowed)]
    if bad:
        raise ValueError(
            f"excitation backprop needs a plain feed-forward stack; unsupported layers: {sorted(set(bad))}"
        )
    return leaves


def _bn_scales(records: list[tuple[nn.Module, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """For each conv / linear layer that a BatchNorm follows directly: gamma / sqrt(var + eps), the
    per-output-channel factor that BN (eval mode) multiplies its output by. Folded into the weights
    before they are clamped, so a negative gamma turns inhibitory weights excitatory as it should."""
    scales = {}
    for i, (layer, _) in enumerate(records[:-1]):
        bn = records[i + 1][0]
        if isinstance(layer, nn.Conv2d | nn.Linear) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            scales[i] = (gamma / torch.sqrt(bn.running_var + bn.eps)).detach()
    return scales


def _mwp(records: list[tuple[nn.Module, torch.Tensor]], top: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Marginal winning probabilities from the top back to the input, over the (layer, input)
    pairs in execution order: through conv / linear / pooling layers P_in = a_in * W+^T
    (P_out / (W+ a_in)) (the probabilistic winner-take-all over non-negative weights and
    activations; a BatchNorm after the layer is folded into W first); ReLU, Dropout, BatchNorm and
    Flatten pass P through (reshaped)."""
    scales = _bn_scales(records)
    p = top
    for i in reversed(range(len(records))):
        layer, a = records[i]
        if isinstance(layer, nn.Conv2d | nn.Linear):
            w = layer.weight
            if i in scales:
                w = w * scales[i].view(-1, *([1] * (w.dim() - 1)))
            w = w.clamp_min(0)
            a = a.detach().clamp_min(0).requires_grad_(True)
            if isinstance(layer, nn.Conv2d):
                z = F.conv2d(a, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            else:
                z = F.linear(a, w)
        elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            a = a.detach().clamp_min(0).requires_grad_(True)
            z = layer(a)
        elif isinstance(layer, nn.Flatten):
            p = p.reshape(a.shape)
            continue
        else:  # ReLU, Dropout (eval), BatchNorm (folded above), Identity: P passes through
            continue
        (g,) = torch.autograd.grad(z, a, grad_outputs=p / (z + eps) * (z > eps))
        p = (a * g).detach()
    return p


def _excitation(model, x, t, contrastive: bool = False):
    """Excitation backprop (Zhang et al. 2016): the target unit gets probability 1, passed down
    by `_mwp`. Contrastive: the same from a 'dual' unit whose incoming weights are the negated
    target weights (the evidence for everything but the class), subtracted from the target's."""
    model = _network(model)
    layers = _sequential_layers(model)
    records: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: records.append((m, i[0]))) for m in layers]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if len({id(m) for m, _ in records}) != len(records):
        raise ValueError("excitation backprop needs every layer to run once (a module is reused in forward)")
    last = records[-1][0]
    if not isinstance(last, nn.Linear):
        raise ValueError("excitation backprop needs a Linear class layer at the top")
    onehot = F.one_hot(t, last.out_features).to(x.dtype)
    with torch.enable_grad():
        if not contrastive:
            return _mwp(records, onehot)
        # the top layer's input gets the target unit's MWP minus the dual unit's (weights -W_t)
        a = records[-1][1].detach().clamp_min(0)
        contrib_t = a * last.weight[t].clamp_min(0)  # [B, features]
        contrib_dual = a * (-last.weight[t]).clamp_min(0)
        p_top = contrib_t / contrib_t.sum(1, keepdim=True).clamp_min(1e-12)
        p_dual = contrib_dual / contrib_dual.sum(1, keepdim=True).clamp_min(1e-12)
        return _mwp(records[:-1], p_top - p_dual)


METHODS: dict[str, Callable] = {
    "saliency": _saliency,
    "input_x_gradient": _input_x_gradient,
    "guided_backprop": _guided_backprop,
    "deconvnet": _deconvnet,
    "smoothgrad": _smoothgrad,
    "integrated_gradients": _integrated_gradients,
    "occlusion": _occlusion,
    "lrp": _lrp,
    "gradcam": lambda model, x, t, layer=None: _cam(model, x, t, "gradcam", layer),
    "gradcampp": lambda model, x, t, layer=None: _cam(model, x, t, "gradcam++", layer),
    "mask_perturbation": _mask_perturbation,
    "excitation_backprop": _excitation,
    "contrastive_excitation_backprop": lambda model, x, t: _excitation(model, x, t, contrastive=True),
}


# how each method's [B, C, H, W] output becomes one relevance map: gradient-like methods by their
# magnitude (max |a| over channels), the others by their signed sum over channels
GRADIENT_LIKE = ("saliency", "smoothgrad", "guided_backprop", "deconvnet")


def relevance_map(method: str, attribution: torch.Tensor) -> torch.Tensor:
    """[B, H, W] relevance for display and metrics, by the method's kind (see GRADIENT_LIKE)."""
    return to_map(attribution, "max_abs" if method in GRADIENT_LIKE else "sum")


# methods with an optimisation loop: they take `progress(done, total)`, called once per step
PROGRESS_METHODS = ("mask_perturbation",)


def attribute(method: str, model: nn.Module, x: torch.Tensor, target,
              progress: Callable[[int, int], None] | None = None, **options) -> torch.Tensor:  # fmt: skip
    """Attribution of class `target` (an int, or one per sample) for `x` [B, C, H, W] by the named
    method; returns [B, C, H, W]. Call `model.eval()` first. Gradients are switched on here.
    `progress` goes to the methods in PROGRESS_METHODS (the others ignore it)."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {sorted(METHODS)}")
    if progress is not None and method in PROGRESS_METHODS:
        options = {**options, "progress": progress}
    t = _targets(target, x)
    with torch.inference_mode(False), torch.enable_grad():
        # Captum differentiates w.r.t. the input (and warns when it has to switch that on itself)
        xx = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)
        out = METHODS[method](model, xx, t, **options)
    return out.detach()
