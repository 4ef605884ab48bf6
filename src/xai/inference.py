"""Faster inference copies of a model's layers while an explanation only evaluates it (and
differentiates with respect to its input): eval-mode batch norm folded into the convolution or
linear layer before it, 4-d convolutions in channels-last memory format.

`folded(*modules)` swaps the layers in place for the duration of a `with` block and puts the
originals back on exit (also on an exception): the function each model computes is the same up to
float rounding, the models' own parameters, buffers and hooks are never touched, and nothing has
to copy a whole LightningModule (with its trainer, metrics and data). Semantic morphing spends its
time in many small forward and backward passes of the decoder and classifier, where a batch-norm
backward and memory-format conversions cost as much as the convolutions
(`bench/morph_speed.py`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

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
    if m.running_mean is None or _hooked(m) or type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return False
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if m.num_features != width:
        return False
    if isinstance(layer, nn.modules.conv._ConvTransposeNd) and layer.groups != 1:
        return False  # torch's fusion scales a transposed weight's second dimension, out_channels / groups wide
    if isinstance(layer, nn.Linear):  # BatchNorm1d on [N, F] only; conv: the norm of the conv's own dimensionality
        return isinstance(m, nn.BatchNorm1d)
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[layer.weight.dim() - 2] is type(m)


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
            new.weight.data = new.weight.data.contiguous(memory_format=torch.channels_last)
    return new


def _plan(root: nn.Module, channels_last: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, child name, replacement) for every swap: inside an nn.Sequential (whose forward runs
    its children in order, so a batch norm right after a layer reads only that layer's output) a
    layer and the batch norm after it become the folded layer and an identity; elsewhere a layer
    becomes its channels-last copy (when `channels_last`)."""
    swaps = []
    for parent in root.modules():
        names = [n for n, m in parent._modules.items() if m is not None]
        i = 0
        while i < len(names):
            layer = parent._modules[names[i]]
            nxt = parent._modules[names[i + 1]] if i + 1 < len(names) else None
            if _swappable(layer):
                if isinstance(parent, nn.Sequential) and nxt is not None and _foldable_norm(nxt, layer):
                    swaps += [(parent, names[i], _fast_copy(layer, nxt, channels_last)),
                              (parent, names[i + 1], nn.Identity())]  # fmt: skip
                    i += 2
                    continue
                if channels_last and isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                    swaps.append((parent, names[i], _fast_copy(layer, None, channels_last)))
            i += 1
    return swaps


@contextlib.contextmanager
def folded(*models, channels_last: bool = True) -> Iterator[None]:
    """Within the block, every nn.Module among `models` (anything else is ignored, e.g. a plain
    function or a bound method) computes with frozen copies of its eval-mode layers: batch norm
    folded into the conv / linear layer it follows in an nn.Sequential, 2-d convolutions in
    channels-last format. Layers in training mode, with hooks, parametrisations or a subclassed
    forward are left as they are. The same function up to float rounding; gradients reach the
    inputs but not the models' parameters. The original layers are restored on exit."""
    roots = {id(m): m for m in models if isinstance(m, nn.Module)}
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        with torch.inference_mode(False):  # the copies must be usable by autograd
            for root in roots.values():
                for parent, name, new in _plan(root, channels_last):
                    done.append((parent, name, parent._modules[name]))
                    parent._modules[name] = new
        yield
    finally:
        for parent, name, old in reversed(done):
            parent._modules[name] = old
