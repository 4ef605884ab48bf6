"""Faster inference copies of models that an explanation only evaluates (and differentiates with
respect to their inputs): eval-mode batch norm folded into the convolution or linear layer before
it, 4-d convolutions in channels-last memory format.

`folded(*models)` gives shadow models: shallow copies of each container on the way to a swapped
layer (sharing every other submodule, parameter and buffer with the original), where the layers
are frozen, folded copies. The originals are never touched, so a checkpoint written meanwhile
(e.g. by a signal handler during a long render) holds the real model, and any number of callers
may fold the same model at once. The function each shadow computes is the same up to float
rounding provided each nn.Sequential's children are only run through its forward; `agrees` checks
a shadow against its original on real inputs. Semantic morphing spends its time in many small
forward and backward passes of the decoder and classifier, where a batch-norm backward and
memory-format conversions cost as much as the convolutions (`bench/morph_speed.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

# the batch norms that compute the same thing in eval mode: SyncBatchNorm (trainer=ddp's
# sync_batchnorm) syncs statistics across ranks only in training, its dimension is its input's
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _swappable(m: nn.Module) -> bool:
    """A layer whose copy computes the same function: a plain (not parametrised, not hooked) conv
    or linear layer with plain float weights, in eval mode."""
    return (
        isinstance(m, _FOLDABLE)
        and not m.training
        and not _hooked(m)
        and not parametrize.is_parametrized(m)
        and m.weight.is_floating_point()
        and type(m) in _FOLDABLE  # subclasses may override forward
    )


def _foldable_norm(m: nn.Module, layer: nn.Module) -> bool:
    """An eval-mode batch norm with running statistics, of the layer's output width, unhooked."""
    if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.training or not m.track_running_stats:
        return False
    if m.running_mean is None or _hooked(m) or type(m) not in BATCH_NORMS:
        return False
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if m.num_features != width:
        return False
    if isinstance(layer, nn.modules.conv._ConvTransposeNd) and layer.groups != 1:
        return False  # torch's fusion scales a transposed weight's second dimension, out_channels / groups wide
    if isinstance(layer, nn.Linear):  # BatchNorm1d (meant for [N, F]; `agrees` catches [N, C, L]), affine: torch's
        return isinstance(m, nn.BatchNorm1d | nn.SyncBatchNorm) and m.affine  # linear fusion needs its weight, bias
    return type(m) is nn.SyncBatchNorm or {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[
        layer.weight.dim() - 2
    ] is type(m)


def _fast_copy(layer: nn.Module, norm: nn.Module | None, channels_last: bool) -> nn.Module:
    """A frozen copy of `layer`, with `norm` folded in when given."""
    with torch.no_grad():
        if norm is None:
            new = copy.deepcopy(layer)
        elif isinstance(layer, nn.Linear):
            new = fuse_linear_bn_eval(layer, norm)
        else:
            new = fuse_conv_bn_eval(layer, norm, transpose=isinstance(layer, nn.modules.conv._ConvTransposeNd))
        for p in new.parameters():
            p.requires_grad_(False)
        if channels_last and isinstance(new, (nn.Conv2d, nn.ConvTranspose2d)):
            new.weight = nn.Parameter(_channels_last(new.weight.detach()), requires_grad=False)
    return new


def _channels_last(w: torch.Tensor) -> torch.Tensor:
    """w [A, B, H, W] with channels-last strides even where B = 1 (there `.contiguous(memory_format=...)`
    keeps the default strides, both layouts being the same bytes, and the convolution then picks the
    default format for its output: a first layer reading one-channel images would hand the next
    layers' gradients back in the other format, where each ReLU backward runs on mixed layouts)."""
    _, b, h, width = w.shape
    out = torch.empty_strided(w.shape, (h * width * b, 1, width * b, b), dtype=w.dtype, device=w.device)
    return out.copy_(w)


class _GradInInputLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in channels-last layout."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        return tangent.view_as(tangent)


def _functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running: layouts cannot be asked
    for under vmap, so the layout hint steps aside (torch has no public query for this)."""
    query = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(query()) if query is not None else True


class _Flatten(nn.Flatten):
    """nn.Flatten whose gradient keeps a channels-last input's layout: autograd reshapes the flat
    gradient back in the default layout, and the ReLU before it would run its backward on mixed
    layouts (far slower than on matching ones). Only where flattening copies anyway (the
    flattened dimensions include the channels: no view of the hint's output escapes, so in-place
    ops after it behave as after nn.Flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.requires_grad and not x.is_contiguous():
            start, end = self.start_dim % 4, self.end_dim % 4
            if start <= 1 < end and x.is_contiguous(memory_format=torch.channels_last) and not _functorch_active():
                x = _GradInInputLayout.apply(x)
        return super().forward(x)


def _plan(root: nn.Module, channels_last: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, child name, replacement) for every swap: inside an nn.Sequential (not a subclass: its
    forward runs its children in order, so a batch norm right after a layer reads only that layer's output) a
    layer and the batch norm after it become the folded layer and an identity; elsewhere a layer
    becomes its channels-last copy, and an nn.Flatten one that keeps the gradient's layout (when
    `channels_last`)."""
    swaps = []
    for parent in root.modules():
        names = [n for n, m in parent._modules.items() if m is not None]
        i = 0
        while i < len(names):
            layer = parent._modules[names[i]]
            nxt = parent._modules[names[i + 1]] if i + 1 < len(names) else None
            if _swappable(layer):
                if type(parent) is nn.Sequential and nxt is not None and _foldable_norm(nxt, layer):
                    swaps += [
                        (parent, names[i], _fast_copy(layer, nxt, channels_last)),
                        (parent, names[i + 1], nn.Identity()),
                    ]
                    i += 2
                    continue
                if channels_last and isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                    swaps.append((parent, names[i], _fast_copy(layer, None, channels_last)))
            elif channels_last and type(layer) is nn.Flatten and not _hooked(layer):
                swaps.append((parent, names[i], _Flatten(layer.start_dim, layer.end_dim)))
            i += 1
    return swaps


def _shadow(m: nn.Module, swaps: dict[tuple[int, str], nn.Module], memo: dict[int, nn.Module]) -> nn.Module:
    """`m` itself when nothing below it is swapped; else a shallow copy with its own child dict (and its
    own hook, parameter and buffer registries holding the same entries). A submodule reached twice
    gets one shadow: sharing stays sharing."""
    if id(m) in memo:
        return memo[id(m)]
    children = {
        name: swaps[id(m), name] if (id(m), name) in swaps else child if child is None else _shadow(child, swaps, memo)
        for name, child in m._modules.items()
    }
    if all(children[name] is child for name, child in m._modules.items()):
        memo[id(m)] = m
        return m
    new = m.__class__.__new__(m.__class__)
    new.__dict__.update(m.__dict__)
    for key, value in m.__dict__.items():
        if key.startswith("_") and isinstance(value, dict | set):
            new.__dict__[key] = copy.copy(value)
    new.__dict__["_modules"] = children
    memo[id(m)] = new
    return new


def folded(*models, channels_last: bool = True) -> tuple:
    """For each of `models`: a shadow nn.Module whose eval-mode layers are frozen copies (batch norm
    folded into the conv / linear layer it follows in an nn.Sequential, 2-d convolutions in
    channels-last format, nn.Flatten handing gradients back in that format), or the object itself
    (anything that is not an nn.Module, e.g. a plain function, or a model with nothing to swap).
    Layers in training mode, with hooks, parametrisations or a subclassed forward are left as they
    are. Gradients reach the inputs but not the parameters. The originals are not modified; a
    shadow has its own hook registries but shares the layers it did not copy, so `.train()` on a
    shadow reaches those."""
    out = []
    for model in models:
        if not isinstance(model, nn.Module):
            out.append(model)
            continue
        with torch.inference_mode(False):  # the copies must be usable by autograd
            swaps = {(id(parent), name): new for parent, name, new in _plan(model, channels_last)}
        if all(isinstance(new, _Flatten) for new in swaps.values()):  # no layer to fold or copy
            out.append(model)
            continue
        out.append(_shadow(model, swaps, {}))
    return tuple(out)


def agrees(fast: Callable, plain: Callable, *inputs: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Whether `fast(*inputs)` equals `plain(*inputs)` (tensors, or tuples of them) within `rtol` of
    the largest |value| of each output, without gradients: a folded shadow against its original on
    real inputs. Folding moves float32 outputs by ~1e-6 of their scale; a model that reads a
    Sequential's children outside its forward, or views a channels-last tensor, differs by O(1) or
    fails - then False."""
    try:
        with torch.no_grad():
            got, want = fast(*inputs), plain(*inputs)
    except RuntimeError:
        return False
    got = got if isinstance(got, tuple | list) else (got,)
    want = want if isinstance(want, tuple | list) else (want,)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape or g.dtype != w.dtype:
            return False
        scale = float(w.abs().max()) if w.numel() else 0.0
        if not float((g.double() - w.double()).abs().max() if w.numel() else 0.0) <= rtol * max(scale, 1e-30):
            return False
    return True
