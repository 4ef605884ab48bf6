"""Configurable convolutional encoder / mirrored decoder blocks shared by the models."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from src.base.errors import ConfigError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
NORMS = ("batch", "instance", "group", "none")


def make_activation(name: str, kwargs: dict | None = None, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, f"choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](**(kwargs or {}))


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """Normalisation layer over `channels` features, for conv (dims=2) or dense (dims=1) layers."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "instance" and dims == 2:
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group" and dims == 2:
        return (
            nn.GroupNorm(min(8, channels), channels) if channels % min(8, channels) == 0 else nn.GroupNorm(1, channels)
        )
    if kind in ("none", "instance", "group"):  # no per-instance norm for dense features
        return nn.Identity()
    raise ConfigError("model.norm", kind, f"choose one of {list(NORMS)}")


def require_layer(model: nn.Module, path: str, key: str = "model.cam_layer") -> nn.Module:
    """The submodule at dotted `path`, or a ConfigError naming the key."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ConfigError(key, path, f"no such module ({exc})") from exc


def _per_layer(value: int | Sequence[int], n: int, key: str) -> list[int]:
    values = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(values) != n:
        raise ConfigError(key, list(values), f"give one value or one per encoder layer ({n})")
    return values


@dataclass(frozen=True)
class ConvSpec:
    """Geometry of a conv stack: channels, kernels, strides, paddings, and the sizes they give."""

    channels: list[int]
    kernels: list[int]
    strides: list[int]
    paddings: list[int]
    sizes: list[int]  # spatial size before layer 0, after layer 0, ..., after the last layer

    @classmethod
    def build(cls, image_size: int, channels, kernel_size, stride, padding) -> ConvSpec:
        channels = [int(c) for c in channels]
        if not channels:
            raise ConfigError("model.encoder.channels", channels, "give at least one conv layer")
        n = len(channels)
        kernels = _per_layer(kernel_size, n, "model.encoder.kernel_size")
        strides = _per_layer(stride, n, "model.encoder.stride")
        paddings = _per_layer(padding, n, "model.encoder.padding")
        sizes = [int(image_size)]
        for i, (k, s, p) in enumerate(zip(kernels, strides, paddings)):
            out = (sizes[-1] + 2 * p - k) // s + 1
            if out < 1:
                raise ConfigError(
                    "model.image_size",
                    image_size,
                    f"encoder layer {i} (kernel {k}, stride {s}, padding {p}) shrinks a {sizes[-1]}px map "
                    f"to nothing; use a larger image or fewer/smaller-stride layers",
                )
            sizes.append(out)
        return cls(channels, kernels, strides, paddings, sizes)

    def output_paddings(self) -> list[int]:
        """output_padding per decoder layer so the mirrored transposed convs land exactly on
        the encoder's sizes; ConfigError when no legal value exists."""
        pads = []
        for i in reversed(range(len(self.channels))):
            k, s, p = self.kernels[i], self.strides[i], self.paddings[i]
            reached = (self.sizes[i + 1] - 1) * s - 2 * p + k
            op = self.sizes[i] - reached
            if not 0 <= op < max(s, 1):
                raise ConfigError(
                    "model.image_size",
                    self.sizes[0],
                    f"the mirrored decoder cannot reach {self.sizes[i]}px from {self.sizes[i + 1]}px at "
                    f"layer {i} (kernel {k}, stride {s}, padding {p}); choose an image size the strides "
                    f"divide (encoder sizes would be {self.sizes})",
                )
            pads.append(op)
        return pads


def conv_block(conv: nn.Module, norm: nn.Module, act: nn.Module | None, dropout: float = 0.0) -> nn.Sequential:
    parts: list[tuple[str, nn.Module]] = [("conv", conv), ("norm", norm)]
    if act is not None:
        parts.append(("act", act))
    if dropout:
        parts.append(("drop", nn.Dropout2d(dropout)))
    return nn.Sequential(OrderedDict(parts))


def dense_block(n_in: int, n_out: int, norm: str, act: nn.Module, dropout: float, bias: bool) -> nn.Sequential:
    parts = [("linear", nn.Linear(n_in, n_out, bias=bias)), ("norm", make_norm(norm, n_out, dims=1)), ("act", act)]
    if dropout:
        parts.append(("drop", nn.Dropout(dropout)))
    return nn.Sequential(OrderedDict(parts))


class ConvEncoder(nn.Module):
    """Conv blocks -> flatten -> optional dense blocks; `out_features` is the flattened size.

    Blocks are `blocks.<i>.conv/norm/act`, so Grad-CAM can name e.g. `encoder.blocks.3.conv`.
    """

    def __init__(
        self,
        spec: ConvSpec,
        in_channels: int,
        hidden: Sequence[int] = (),
        norm: str = "batch",
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        blocks = []
        c_in = in_channels
        for c, k, s, p in zip(spec.channels, spec.kernels, spec.strides, spec.paddings):
            conv = nn.Conv2d(c_in, c, k, s, p, bias=bias)
            blocks.append(conv_block(conv, make_norm(norm, c), make_activation(activation, activation_kwargs)))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()
        features = spec.channels[-1] * spec.sizes[-1] ** 2
        dense = []
        for h in hidden:
            dense.append(
                dense_block(features, int(h), norm, make_activation(activation, activation_kwargs), dropout, bias)
            )
            features = int(h)
        self.dense = nn.Sequential(*dense)
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.flatten(self.blocks(x)))


class ConvDecoder(nn.Module):
    """Dense projection to the encoder's last feature map, then transposed convs mirroring the
    encoder back to `out_channels` x image size. Returns pre-activation outputs (logits)."""

    def __init__(
        self,
        spec: ConvSpec,
        in_features: int,
        out_channels: int,
        hidden: Sequence[int] = (),
        project_norm_act: bool = False,
        final_norm: bool = False,
        norm: str = "batch",
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        block_condition: int = 0,
    ) -> None:
        """`block_condition` > 0: forward(z, c) also hands the c vector ([B, block_condition]) to
        every transposed conv as constant planes concatenated to its input (a conditional decoder
        that cannot lose c in its first layer)."""
        super().__init__()
        self.block_condition = int(block_condition)
        act = lambda: make_activation(activation, activation_kwargs)  # noqa: E731
        dense, features = [], in_features
        for h in hidden:
            dense.append(dense_block(features, int(h), norm, act(), dropout, bias))
            features = int(h)
        c0, s0 = spec.channels[-1], spec.sizes[-1]
        if project_norm_act:
            dense.append(dense_block(features, c0 * s0 * s0, norm, act(), dropout, bias))
        else:
            dense.append(nn.Sequential(OrderedDict(linear=nn.Linear(features, c0 * s0 * s0))))
        self.dense = nn.Sequential(*dense)
        self.unflatten = nn.Unflatten(1, (c0, s0, s0))
        outs = list(reversed(spec.channels))[1:] + [out_channels]
        ins = list(reversed(spec.channels))
        idx = list(reversed(range(len(spec.channels))))
        blocks = []
        for j, (c_in, c_out, i, op) in enumerate(zip(ins, outs, idx, spec.output_paddings())):
            last = j == len(outs) - 1
            conv = nn.ConvTranspose2d(
                c_in + self.block_condition,
                c_out,
                spec.kernels[i],
                spec.strides[i],
                spec.paddings[i],
                output_padding=op,
                bias=bias,
            )
            if last:
                blocks.append(conv_block(conv, make_norm(norm if final_norm else "none", c_out), None))
            else:
                blocks.append(conv_block(conv, make_norm(norm, c_out), act()))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.unflatten(self.dense(z))
        if not self.block_condition:
            return self.blocks(h)
        if c is None or c.shape[-1] != self.block_condition:
            raise ValueError(f"this decoder needs c of shape [B, {self.block_condition}] at every block")
        for block in self.blocks:
            planes = c[:, :, None, None].to(h.dtype).expand(-1, -1, h.shape[-2], h.shape[-1])
            h = block(torch.cat([h, planes], dim=1))
        return h
