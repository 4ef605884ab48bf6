"""Input-space attribution methods, each `method(model, inputs, target, **options) -> Attribution`
(see `src.xai.core` for the call shape, `Baseline` and the glossary).

Captum does the methods it has (saliency, input x gradient, guided backprop, deconvnet,
SmoothGrad, integrated gradients, occlusion, LRP); Guided Grad-CAM multiplies Captum's guided
backprop by our batched Grad-CAM (`src.xai.methods.gradcam`); mask perturbation [Fong2017] and
(contrastive) excitation backprop [Zhang2016] are written here; Grad-CAM is in
`src.xai.methods.gradcam`. Every result holds `attributions` [B, K, C, H, W] and `maps` [B, K, H, W].
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from src.base.rng import seeded
from src.xai import targets as tg
from src.xai.core import BLURRED, GREY, ZERO, Attribution, Baseline, MaskAttribution, OnStep, Unsupported, register
from src.xai.folding import BATCH_NORMS


class _Forward(nn.Module):
    """`fn(x)` as a module that holds `model`: Captum's hook-based methods (guided backprop,
    deconvnet) find the model's layers inside it."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *args)


def _input(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy of the inputs that takes gradients (also when they come from inference mode)."""
    return (inputs.clone() if inputs.is_inference() else inputs).detach().requires_grad_(True)


def _captum_runs(model: nn.Module, x: torch.Tensor, target, forward) -> tuple[nn.Module, list]:
    """(the module Captum differentiates, Captum's `target` argument for each of the K columns).
    Column targets pass their indices to Captum (the forward's own output is explained); any
    other callable is folded into the forward and Captum takes its columns 0 .. K-1."""
    fn = forward or model
    # a forward bound to per-sample tensors (a CVAE's condition) takes them as Captum's additional
    # forward arguments, which Captum expands with the inputs (noise copies, IG steps, occlusions)
    raw, args = (forward.fn, forward.args) if isinstance(forward, tg.Bound) else (fn, ())
    if isinstance(target, tg.Columns):
        net = model if forward is None else _Forward(model, raw)
        k = target.width()
        if k is None:
            with torch.no_grad():
                k = fn(x).shape[1]
        return net, [target.index(i, x.shape[0]).to(x.device) for i in range(k)]
    net = _Forward(model, lambda inp, *extra: target(raw(inp, *extra)))
    with torch.no_grad():
        k = net(x, *args).shape[1]
    return net, list(range(k))


def _per_column(model, inputs, target, forward, reduce: str, one: Callable) -> Attribution:
    """Attribution of each target column by `one(net, x, captum_target) -> [B, C, H, W]`,
    stacked to [B, K, C, H, W]. Gradients are switched on here (also inside no_grad)."""
    target = tg.as_target(target)
    with torch.inference_mode(False), torch.enable_grad():
        x = _input(inputs)
        net, columns = _captum_runs(model, x, target, forward)
        extra = {"additional_forward_args": forward.args} if isinstance(forward, tg.Bound) else {}
        out = torch.stack([one(net, x, t, **extra).detach() for t in columns], 1)
    return Attribution(out, reduce)


def _captum(method: type, **fixed) -> Callable:
    """`one` for `_per_column`: Captum's `method(net).attribute` of one target column."""
    return lambda net, x, t, **kw: method(net).attribute(x, target=t, **fixed, **kw)


# -- Captum-backed methods ---------------------------------------------------------------------


@register()
def saliency(model: nn.Module, inputs: torch.Tensor, target, *, abs: bool = False, forward=None) -> Attribution:
    """[Simonyan2014]: d target / d input (its absolute value with abs=True)."""
    from captum.attr import Saliency

    return _per_column(model, inputs, target, forward, "max_abs", _captum(Saliency, abs=abs))


@register()
def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target, *, forward=None) -> Attribution:
    """[Shrikumar2016]: input * d target / d input."""
    from captum.attr import InputXGradient

    return _per_column(model, inputs, target, forward, "sum", _captum(InputXGradient))


@register()
def guided_backprop(model: nn.Module, inputs: torch.Tensor, target, *, forward=None) -> Attribution:
    """[Springenberg2015]: the gradient with negative values stopped at every ReLU on the way back."""
    from captum.attr import GuidedBackprop

    return _per_column(model, inputs, target, forward, "max_abs", _captum(GuidedBackprop))


@register()
def deconvnet(model: nn.Module, inputs: torch.Tensor, target, *, forward=None) -> Attribution:
    """[Zeiler2014]: the signal projected back through ReLUs applied to the backward signal."""
    from captum.attr import Deconvolution

    return _per_column(model, inputs, target, forward, "max_abs", _captum(Deconvolution))


@register()
def guided_gradcam(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    layer: str | nn.Module | None = None,
    forward=None,
    interpolate: str = "bilinear",
) -> Attribution:
    """[Selvaraju2017]: guided backpropagation times the Grad-CAM map resized to the input
    (`interpolate`: the paper's "bilinear", or "nearest", Captum's GuidedGradCam default),
    high-resolution and class-discriminative. The K targets' Grad-CAM maps come from one batched
    `gradcam` call at `layer` (default the model's cam_layer); guided backprop is Captum's, per
    target column."""
    from src.xai.methods.gradcam import gradcam

    cam = gradcam(model, inputs, target, layer=layer, forward=forward)
    guided = guided_backprop(model, inputs, target, forward=forward).attributions  # [B, K, C, H, W]
    b, k, h, w = cam.raw.shape
    size = tuple(inputs.shape[-2:])
    align = {"align_corners": False} if interpolate in ("bilinear", "bicubic") else {}
    up = F.interpolate(cam.raw.reshape(b * k, 1, h, w), size=size, mode=interpolate, **align).view(b, k, 1, *size)
    return Attribution(attributions=guided * up.to(guided.dtype), reduce="max_abs")


SMOOTHGRAD_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register()
def smoothgrad(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    noise: float = 0.15,
    samples: int = 25,
    kind: str = "smoothgrad",
    seed: int = 0,
    batch_size: int | None = None,
    forward=None,
) -> Attribution:
    """[Smilkov2017]: saliency averaged over `samples` noisy copies; noise = stdev as a
    fraction of the batch's value range (max - min; Captum takes one stdev per input tensor, so
    this is the data's range, not each image's); kind: smoothgrad | smoothgrad_sq | vargrad.
    Seeded, and the global RNG is left as it was."""
    from captum.attr import NoiseTunnel, Saliency

    if kind not in SMOOTHGRAD_KINDS:
        raise ValueError(f"unknown SmoothGrad kind {kind!r}; choose one of {SMOOTHGRAD_KINDS}")
    stdev = float(noise) * float((inputs.amax() - inputs.amin()).clamp_min(1e-12))

    def one(net, x, t, **kw):
        with seeded(seed, x.device):
            return NoiseTunnel(Saliency(net)).attribute(
                x, nt_type=kind, nt_samples=samples, stdevs=stdev, target=t, nt_samples_batch_size=batch_size, **kw
            )

    return _per_column(model, inputs, target, forward, "max_abs", one)


@register()
def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    baseline: Baseline | str | float | torch.Tensor = ZERO,
    steps: int = 50,
    internal_batch_size: int | None = None,
    forward=None,
) -> Attribution:
    """[Sundararajan2017]: (x - x') * the mean gradient on the straight path from the
    baseline x' to x (`steps` Riemann / Gauss-Legendre points, Captum's default rule)."""
    from captum.attr import IntegratedGradients

    base = Baseline.parse(baseline)
    return _per_column(
        model,
        inputs,
        target,
        forward,
        "sum",
        lambda net, x, t, **kw: IntegratedGradients(net).attribute(
            x, baselines=base(x).detach(), target=t, n_steps=steps, internal_batch_size=internal_batch_size, **kw
        ),
    )


@register()
def occlusion(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    patch: int = 4,
    stride: int = 2,
    baseline: Baseline | str | float | torch.Tensor = GREY,
    forward=None,
) -> Attribution:
    """[Zeiler2014]: the drop in the target when a `patch` x `patch` window (moved by
    `stride`) is replaced by the baseline; each pixel gets the mean over the windows covering it."""
    from captum.attr import Occlusion

    base = Baseline.parse(baseline)
    c = inputs.shape[1]

    def one(net, x, t, **kw):
        ref = float(base.value) if base.kind == "constant" else base(x).detach()
        return Occlusion(net).attribute(
            x, sliding_window_shapes=(c, patch, patch), strides=(c, stride, stride), baselines=ref, target=t, **kw
        )

    return _per_column(model, inputs, target, forward, "sum", one)


# -- methods defined on class logits -------------------------------------------------------------


def _class_columns(model: nn.Module, x: torch.Tensor, target, forward, method: str) -> torch.Tensor:
    """[B, K] the class each target column reads, for methods that walk the classifier itself."""
    if forward is not None:
        raise ValueError(f"{method} walks the classifier's own layers: it takes no forward=")
    with torch.no_grad():
        logits = model(x)
    return tg.class_indices(tg.as_target(target), logits)


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
        raise Unsupported("LRP: only Flatten modules inside a Sequential can be handled")
    return net


def _lrp_one(model, x, t, epsilon: float):
    """LRP with the epsilon rule on conv / linear / pooling / BatchNorm layers, relevance passed
    unchanged through ReLU, Dropout and Flatten. Runs on a copy: Captum attaches its rules to the modules."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    net = _fold_flattens(copy.deepcopy(_network(model)))
    for module in net.modules():
        if list(module.children()):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, *BATCH_NORMS)):
            module.rule = EpsilonRule(epsilon=epsilon)
        elif isinstance(module, nn.Identity):
            raise Unsupported("LRP: remove nn.Identity layers (Captum cannot hook a layer that returns its input)")
        elif isinstance(module, nn.ReLU):
            module.inplace = False
    return LRP(net).attribute(x, target=t)


@register()
def lrp(model: nn.Module, inputs: torch.Tensor, target, *, epsilon: float = 1e-9) -> Attribution:
    """Layer-wise relevance propagation [Bach2015], epsilon rule. The target must name
    classes (targets.classes / select / per_sample)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = _input(inputs)
        cols = _class_columns(model, x, target, None, "LRP")
        out = torch.stack([_lrp_one(model, x, cols[:, k], epsilon).detach() for k in range(cols.shape[1])], 1)
    return Attribution(out, "sum")


# -- mask perturbation ---------------------------------------------------------------------------


@register(nondeterministic_on_cuda="the backward of its masks' bilinear upsampling")
def mask_perturbation(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    baseline: Baseline | str | float | torch.Tensor = BLURRED,
    steps: int = 300,
    lr: float = 0.1,
    l1: float = 0.05,
    tv: float = 0.2,
    tv_beta: float = 3.0,
    mask_size: int | None = None,
    probabilities: bool = True,
    forward=None,
    progress: OnStep | None = None,
) -> MaskAttribution:
    """[Fong2017], 'meaningful perturbation': learn the smallest deletion mask m (1 =
    delete) that kills the target: min l1 * mean(m) + tv * TV_beta(m) + s(x * (1 - m) + r * m),
    with r the baseline image (blurred x by default) and s the target read from the softmax of
    the output (`probabilities`, for classifiers) or from the output itself. m is learnt at low
    resolution (`mask_size`, default H / 4) and upsampled bilinearly; one mask per target column.
    `progress(done, steps)` after each step (it may raise to stop)."""
    base = Baseline.parse(baseline)
    fn, target = forward or model, tg.as_target(target)
    b, c, h, w = inputs.shape
    size = mask_size or max(2, h // 4)
    with torch.inference_mode(False), torch.enable_grad():
        x = (inputs.clone() if inputs.is_inference() else inputs).detach()
        reference = base(x).detach()
        with torch.no_grad():
            k_total = target(fn(x)).shape[1]
        masks, lows, losses = [], [], []
        for k in range(k_total):
            logit_m = torch.full((b, 1, size, size), -2.0, device=x.device, requires_grad=True)  # start: keep ~all
            opt = torch.optim.Adam([logit_m], lr=lr)
            curve = []
            for i in range(int(steps)):
                m = torch.sigmoid(logit_m)
                up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
                out = fn(x * (1 - up) + reference * up)
                score = target(F.softmax(out, dim=1) if probabilities else out)[:, k]
                dx = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(tv_beta).mean(dim=(1, 2, 3))
                dy = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(tv_beta).mean(dim=(1, 2, 3))
                loss = l1 * m.mean(dim=(1, 2, 3)) + tv * (dx + dy) + score
                curve.append(loss.detach())
                (logit_m.grad,) = torch.autograd.grad(loss.sum(), logit_m)  # nothing piles up in the model's .grad
                opt.step()
                if progress is not None:
                    progress(k * int(steps) + i + 1, k_total * int(steps))
            with torch.no_grad():
                low = torch.sigmoid(logit_m)
                up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
                masks.append(up.expand(-1, c, -1, -1))
                lows.append(low)
                losses.append(torch.stack(curve) if curve else torch.zeros(0, b, device=x.device))
    return MaskAttribution(
        torch.stack(masks, 1).contiguous(), "sum", mask=torch.stack(lows, 1), loss=torch.stack(losses, -1)
    )


# -- excitation backprop -------------------------------------------------------------------------


def _sequential_layers(model: nn.Module) -> list[nn.Module]:
    leaves = [m for m in model.modules() if not list(m.children())]
    allowed = (
        nn.Conv2d,
        nn.Linear,
        nn.ReLU,
        *BATCH_NORMS,
        nn.Dropout,
        nn.Dropout2d,
        nn.Flatten,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.Identity,
    )
    bad = [type(m).__name__ for m in leaves if not isinstance(m, allowed)]
    if bad:
        raise Unsupported(
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


def _excitation_one(model: nn.Module, x: torch.Tensor, t: torch.Tensor, contrastive: bool) -> torch.Tensor:
    """Excitation backprop [Zhang2016]: the target unit gets probability 1, passed down
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
        raise Unsupported("excitation backprop needs every layer to run once (a module is reused in forward)")
    last = records[-1][0]
    if not isinstance(last, nn.Linear):
        raise Unsupported("excitation backprop needs a Linear class layer at the top")
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


def _excitation(model: nn.Module, inputs: torch.Tensor, target, contrastive: bool) -> Attribution:
    with torch.inference_mode(False), torch.enable_grad():
        x = _input(inputs)
        cols = _class_columns(model, x, target, None, "excitation backprop")
        out = [_excitation_one(model, x, cols[:, k], contrastive).detach() for k in range(cols.shape[1])]
    return Attribution(torch.stack(out, 1), "sum")


@register()
def excitation_backprop(model: nn.Module, inputs: torch.Tensor, target) -> Attribution:
    """[Zhang2016]: marginal winning probabilities of a class passed down a feed-forward
    classifier. The target must name classes."""
    return _excitation(model, inputs, target, contrastive=False)


@register()
def contrastive_excitation_backprop(model: nn.Module, inputs: torch.Tensor, target) -> Attribution:
    """[Zhang2016]: excitation backprop of the class minus that of its dual unit (all
    other evidence). The target must name classes."""
    return _excitation(model, inputs, target, contrastive=True)
