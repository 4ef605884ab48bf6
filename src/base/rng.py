"""Seeded randomness that leaves the global generators alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: the same draws on any device (move them afterwards)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def uniform_noise(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) noise of `like`'s shape, dtype and device, drawn on the CPU from `seed`."""
    return torch.rand(like.shape, generator=generator(seed)).to(like.device, like.dtype)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block under the global RNG seeded with `seed` (for library code that draws from
    it, such as Captum's NoiseTunnel); the RNG state outside is left as it was."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
