"""The CAM family for K targets at once, at any layer named by dotted path: Grad-CAM, Grad-CAM++,
HiResCAM, LayerCAM, XGradCAM (from gradients) and Score-CAM (from masked forwards).

A target is a callable `target(output) -> [B, K]` (see `src/xai/targets.py`): class logits,
latent-mean dimensions [Liu2020], a segmentation region (Seg-Grad-CAM), ... For each of
the K scalars and each sample the map is

    alpha_c = mean_{p,q} d y_k / d A_c[p, q],    M_k = ReLU(sum_c alpha_c A_c)

and the other gradient variants' formulas are in `src.base.cam` (`VARIANTS`, `cam_from_gradients`),
which the models' attention-disentanglement loss uses too.
All K gradients come from one batched backward (`torch.autograd.grad(..., is_grads_batched=True)`),
chunked to bound memory; a per-target loop is the fallback and the test oracle. Score-CAM
([Wang2020], `scorecam`) needs no gradient: one forward per layer channel, of the input masked by
that channel, scores all K targets at once.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.base.cam import cam_from_gradients, cam_variant, layer_gradients
from src.base.maps import scale_by_max
from src.xai.core import Explanation, Unsupported, register
from src.xai.targets import Bound, Columns, as_target

MODES = ("auto", "reverse", "forward")
SCORECAM_EPS = 1e-8  # in Score-CAM's (max - min + eps) mask normalisation, as pytorch-grad-cam


class ActivationCapture:
    """The output of one module during a forward pass, kept in the autograd graph.

    The hook hands the rest of the network a clone, so an in-place op after the layer (e.g.
    ReLU(inplace=True)) cannot overwrite the captured values or break their gradient."""

    def __init__(self) -> None:
        self.activation: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Grad-CAM needs a layer whose output is one tensor, got {type(output).__name__}")
        self.activation = output
        return output.clone()


@contextmanager
def capture(module: nn.Module) -> Iterator[ActivationCapture]:
    """Forward hook on `module` for the duration of the block; always removed, errors included."""
    box = ActivationCapture()
    handle = module.register_forward_hook(box)
    try:
        yield box
    finally:
        handle.remove()


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """`layer` as a module: a dotted path inside `model`, the module itself, else the model's
    cam_layer, else its last Conv2d."""
    if isinstance(layer, nn.Module):
        return layer
    path = layer if layer is not None else getattr(model, "cam_layer", None)
    if path is None:
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise Unsupported("Grad-CAM needs a conv layer: name one with layer=...")
        path = convs[-1]
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        raise ValueError(f"no layer {path!r} in {type(model).__name__}; conv layers: {names}") from exc


@dataclass
class CamMaps(Explanation):
    """CAM maps for B samples x K targets.

    raw: [B, K, h, w] ReLU(sum_c alpha_c A_c) at the layer's resolution (for analysis);
    weights: [B, K, C] the alpha_c (Grad-CAM, Grad-CAM++, XGradCAM, Score-CAM's softmax weights);
    for the element-wise HiResCAM and LayerCAM, which have no channel weight, the spatial mean of
    the per-pixel product (g * A, ReLU(g) * A), so that h * w * weights sums to the map's total
    before the ReLU; size: the input's (H, W); maps: [B, K, H, W] the raw maps upsampled to the
    input (computed on first use)."""

    raw: torch.Tensor
    weights: torch.Tensor
    size: tuple[int, int]

    @property
    def maps(self) -> torch.Tensor:  # type: ignore[override]
        cached = self.__dict__.get("_maps")
        if cached is None:
            cached = self.__dict__["_maps"] = self.upsampled()
        return cached

    def upsampled(self) -> torch.Tensor:
        """[B, K, H, W] raw maps, bilinearly resized to the input."""
        b, k, h, w = self.raw.shape
        if (h, w) == tuple(self.size):
            return self.raw
        up = F.interpolate(self.raw.reshape(b * k, 1, h, w), size=self.size, mode="bilinear", align_corners=False)
        return up.clamp_min(0).reshape(b, k, *self.size)

    def normalized(self) -> torch.Tensor:
        """[B, K, H, W] in [0, 1]: each upsampled map divided by its own maximum (all-zero stays 0)."""
        return scale_by_max(self.upsampled())

    def overall(self) -> torch.Tensor:
        """[B, H, W] the mean of the K upsampled raw maps ([Liu2020]'s overall map), normalised."""
        return scale_by_max(self.upsampled().mean(1, keepdim=True))[:, 0]


TANGENT_BUDGET = 2**22  # elements of one vmapped call's channel-shift tangent (2**22 x 4 bytes in float32)


def row_slices(
    forward: Callable[[torch.Tensor], Any], target: Callable[[Any], torch.Tensor], batch: int, rows: int
) -> list[tuple[slice, Callable, Callable]] | None:
    """(rows, forward, target) for consecutive slices of `rows` samples, or None when the forward
    or the target cannot be cut by sample. Cut: a `Bound` forward (its per-sample tensors sliced
    alike), a module, or a forward marked `per_sample = True` (`targets.latent_mean`); a column
    target (its per-sample indices sliced). Anything else - a closure that may hold per-sample
    tensors, a runner-up class fixed on the whole batch - keeps the batch whole."""
    if rows >= batch:
        return None
    if not isinstance(target, Columns):
        return None
    if not (isinstance(forward, Bound | nn.Module) or getattr(forward, "per_sample", False)):
        return None
    out = []
    for start in range(0, batch, rows):
        sl = slice(start, min(start + rows, batch))
        fwd = Bound(forward.fn, *(a[sl] for a in forward.args)) if isinstance(forward, Bound) else forward
        out.append((sl, fwd, target if target.indices is None else Columns(indices=target.indices[sl])))
    return out


def channel_shift_weights(
    forward: Callable[[torch.Tensor], Any],
    target: Callable[[Any], torch.Tensor],
    module: nn.Module,
    x: torch.Tensor,
    channels: int,
    pixels: int,
    chunk_size: int = 64,
    rows: int | None = None,
) -> torch.Tensor:
    """Grad-CAM's alpha [B, K, C] in forward mode: the spatial mean of dy_k/dA_c equals
    (1 / pixels) * dy_k/ds_c, where s_c shifts the whole channel c of A by one constant. So C
    Jacobian-vector products (one per channel, vmapped) replace K backward passes: cheaper
    whenever a layer has fewer channels than there are targets (64 channels vs 200 latents).

    The samples go `rows` at a time (default: as many as keep the tangent, rows x C x C x pixels,
    within TANGENT_BUDGET elements): the samples are independent, the layers before A then run
    once per sample in all, and the tangents stay small enough for the CPU's caches. A forward or target that
    cannot be cut by sample (`row_slices`) keeps the batch whole."""
    b = x.shape[0]
    rows = rows or max(1, TANGENT_BUDGET // max(1, channels * channels * pixels))
    pieces = row_slices(forward, target, b, int(rows))
    if pieces is not None:
        return torch.cat(
            [
                channel_shift_weights(fwd, tgt, module, x[sl], channels, pixels, chunk_size, rows=b)
                for sl, fwd, tgt in pieces
            ]
        )

    def scores_given_shift(shift: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda m, i, out: out + shift[:, :, None, None].to(out.dtype))
        try:
            return target(forward(x))
        finally:
            handle.remove()

    zero = torch.zeros(b, channels, dtype=x.dtype, device=x.device)
    basis = torch.eye(channels, dtype=x.dtype, device=x.device)[:, None, :].expand(channels, b, channels)

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(scores_given_shift, (zero,), (tangent,))[1]

    jac = torch.func.vmap(column, chunk_size=max(1, int(chunk_size)))(basis)  # [C, B, K]
    return jac.permute(1, 2, 0) / pixels


@register()
def gradcam(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Callable[[Any], torch.Tensor],
    *,
    layer: str | nn.Module | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    method: str = "gradcam",
    batched: bool = True,
    chunk_size: int = 64,
    mode: str = "auto",
) -> CamMaps:
    """Grad-CAM maps of every target scalar for every sample of `inputs` [B, C, H, W].

    `forward(inputs)` (default `model`) produces the output that `target` turns into [B, K]
    scores; `layer` is a dotted path in `model` (default `model.cam_layer`). Gradients are
    switched on here even inside `torch.no_grad()` / inference mode, nothing accumulates in the
    parameters' `.grad`, and the model's train/eval state is left as it is (call `.eval()` first:
    BatchNorm in train mode mixes the samples of a batch).

    mode: 'reverse' - batched backward passes (chunks of `chunk_size` targets), or the per-target
    loop when batched=False; 'forward' - Grad-CAM weights from one JVP per layer channel (see
    `channel_shift_weights`; Grad-CAM only: the other variants need every pixel's gradient);
    'auto' - forward for Grad-CAM when the layer has fewer channels than there are targets, else
    reverse. `method`: one of VARIANTS (`hirescam`, `layercam`, `xgradcam` call this)."""
    method = cam_variant(method)
    target = as_target(target)
    if mode not in MODES:
        raise ValueError(f"unknown Grad-CAM mode {mode!r}; choose one of {MODES}")
    if mode == "forward" and method != "gradcam":
        raise ValueError(f"forward mode gives Grad-CAM's averaged gradients only; use mode='reverse' for {method}")
    module = resolve_layer(model, layer)
    forward = forward or model
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.clone() if inputs.is_inference() else inputs
        x = x.detach().requires_grad_(True)  # so A is in the graph even when the weights are frozen
        with capture(module) as box:
            output = forward(x)
        if box.activation is None:
            raise RuntimeError(f"the layer {layer or getattr(model, 'cam_layer', '')!r} did not run in forward()")
        scores = target(output)
        if scores.dim() != 2 or scores.shape[0] != x.shape[0]:
            raise ValueError(f"a target must return [B, K] scores, got {tuple(scores.shape)} for B = {x.shape[0]}")
        activation = box.activation
        if activation.dim() != 4:
            raise ValueError(f"Grad-CAM needs a [B, C, h, w] layer output, got {tuple(activation.shape)}")
        channels, pixels = activation.shape[1], activation.shape[2] * activation.shape[3]
        use_forward = mode == "forward" or (
            mode == "auto" and method == "gradcam" and batched and channels < scores.shape[1]
        )
        if use_forward:
            del output, scores  # the reverse graph is not needed
            try:
                alpha = channel_shift_weights(forward, target, module, x.detach(), channels, pixels, chunk_size)
            except RuntimeError as exc:
                if mode == "forward":
                    raise
                warnings.warn(f"forward-mode Grad-CAM failed ({exc}); using batched backward passes", stacklevel=2)
                options = dict(layer=layer, forward=forward, batched=batched, chunk_size=chunk_size)
                return gradcam(model, inputs, target, method=method, mode="reverse", **options)
            a = activation.detach()
            maps = torch.einsum("bkc,bchw->bkhw", alpha.to(a.dtype), a).clamp_min(0)
            return CamMaps(raw=maps.contiguous(), weights=alpha.contiguous(), size=tuple(inputs.shape[-2:]))
        maps, weights = [], []
        for grads in layer_gradients(activation, scores, batched, chunk_size):
            m, w = cam_from_gradients(activation.detach(), grads.detach(), method)
            maps.append(m)
            weights.append(w)
    return CamMaps(
        raw=torch.cat(maps).transpose(0, 1).contiguous(),
        weights=torch.cat(weights).transpose(0, 1).contiguous(),
        size=tuple(inputs.shape[-2:]),
    )


def _reverse_variant(variant: str, doc: str) -> Callable[..., CamMaps]:
    """A registered CAM method that is `gradcam(..., method=variant)` in reverse mode (it needs
    every pixel's gradient), taking gradcam's options but `method` and `mode`."""

    def method(model: nn.Module, inputs: torch.Tensor, target: Callable[[Any], torch.Tensor], **options) -> CamMaps:
        return gradcam(model, inputs, target, method=variant, mode="reverse", **options)

    signature = inspect.signature(gradcam)
    kept = [p for p in signature.parameters.values() if p.name not in ("method", "mode")]
    method.__signature__ = signature.replace(parameters=kept)  # what MethodInfo.options reads
    method.__name__ = method.__qualname__ = variant
    method.__doc__ = doc + " Options: gradcam's (layer, forward, batched, chunk_size), in reverse mode."
    return register()(method)


gradcampp = _reverse_variant(
    "gradcampp",
    """Grad-CAM++ [Chattopadhay2018]: the positive gradients weighed
    per pixel by the closed form of its eq. 19.""",
)
hirescam = _reverse_variant(
    "hirescam",
    """HiResCAM [Draelos2020]: M_k = ReLU(sum_c
    dy_k/dA_c * A_c), element-wise, so the map is exactly what the layer's pixels add to y_k where
    y_k is linear in A. `weights` holds the spatial mean of dy_k/dA_c * A_c (see CamMaps).""",
)
layercam = _reverse_variant(
    "layercam",
    """LayerCAM [Jiang2021]: M_k = ReLU(sum_c
    ReLU(dy_k/dA_c) * A_c), element-wise. `weights` holds the spatial mean of ReLU(dy_k/dA_c) * A_c
    (see CamMaps).""",
)
xgradcam = _reverse_variant(
    "xgradcam",
    """XGradCAM [Fu2020]: alpha_c = sum_pq A_c[p, q] /
    (sum_pq A_c + 1e-7) * dy_k/dA_c[p, q], M_k = ReLU(sum_c alpha_c A_c).""",
)


def _split_batch(output: Any, parts: int) -> list[Any]:
    """An output of `parts` * B samples (a tensor, or tuples / lists / dicts of them) as `parts`
    outputs of B samples each, in order."""
    if isinstance(output, torch.Tensor):
        return list(output.split(output.shape[0] // parts))
    if isinstance(output, tuple | list):
        pieces = [
            _split_batch(o, parts) if isinstance(o, torch.Tensor | tuple | list | dict) else [o] * parts for o in output
        ]
        return [type(output)(p[i] for p in pieces) for i in range(parts)]
    if isinstance(output, dict):
        pieces = {
            key: _split_batch(o, parts) if isinstance(o, torch.Tensor | tuple | list | dict) else [o] * parts
            for key, o in output.items()
        }
        return [{key: p[i] for key, p in pieces.items()} for i in range(parts)]
    raise Unsupported(f"Score-CAM splits the forward's output by sample; cannot split a {type(output).__name__}")


@register()
def scorecam(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Callable[[Any], torch.Tensor],
    *,
    layer: str | nn.Module | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    batched: bool = True,
    chunk_size: int = 64,
) -> CamMaps:
    """Score-CAM [Wang2020] maps of every target scalar for every sample of `inputs`.

    Each channel A_c of the layer, upsampled to the input (bilinear, align_corners=True, as
    pytorch-grad-cam's UpsamplingBilinear2d) and min-max scaled to [0, 1] per sample
    ((a - min) / (max - min + 1e-8)), masks the input; the K target scores s_c of that masked
    input give w = softmax_c(s) per sample and target, and M_k = ReLU(sum_c w_c A_c). The C masked
    forwards serve all K targets: the cost is C forwards of B images whatever K is. No gradients.

    `forward`, `layer`: as gradcam's. chunk_size: channels per masked forward (a forward of
    chunk_size * B images); batched=False: one channel per forward. The target reads each
    channel's B masked samples as one output of B samples (per-sample indices apply); a forward
    that draws noise by batch shape (`sampled_latent`) draws it for that batch size."""
    target = as_target(target)
    module = resolve_layer(model, layer)
    forward = forward or model
    with torch.no_grad():
        with capture(module) as box:
            output = forward(inputs)
        if box.activation is None:
            raise RuntimeError(f"the layer {layer or getattr(model, 'cam_layer', '')!r} did not run in forward()")
        scores = target(output)
        b = inputs.shape[0]
        if scores.dim() != 2 or scores.shape[0] != b:
            raise ValueError(f"a target must return [B, K] scores, got {tuple(scores.shape)} for B = {b}")
        activation = box.activation
        if activation.dim() != 4:
            raise ValueError(f"Score-CAM needs a [B, C, h, w] layer output, got {tuple(activation.shape)}")
        del output
        channels = activation.shape[1]
        up = F.interpolate(activation, size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
        masks = ((up - lo) / (hi - lo + SCORECAM_EPS)).to(inputs.dtype)  # [B, C, H, W]
        del up
        step = max(1, int(chunk_size)) if batched else 1
        channel_scores = scores.new_empty(channels, b, scores.shape[1])  # [C, B, K]
        for start in range(0, channels, step):
            stop = min(start + step, channels)
            masked = inputs.unsqueeze(0) * masks[:, start:stop].transpose(0, 1).unsqueeze(2)  # [n, B, C_in, H, W]
            flat = masked.reshape((stop - start) * b, *inputs.shape[1:])
            if isinstance(forward, Bound):  # per-sample arguments (a CVAE's condition) repeat with the channels
                out = forward.fn(flat, *(a.repeat(stop - start, *([1] * (a.dim() - 1))) for a in forward.args))
            else:
                out = forward(flat)
            for c, part in enumerate(_split_batch(out, stop - start), start):
                channel_scores[c] = target(part)
        weights = torch.softmax(channel_scores, dim=0).permute(1, 2, 0)  # [B, K, C]
        maps = torch.einsum("bkc,bchw->bkhw", weights.to(activation.dtype), activation).clamp_min(0)
    return CamMaps(raw=maps.contiguous(), weights=weights.contiguous(), size=tuple(inputs.shape[-2:]))
