"""GPU fast paths as switches: channels_last memory format and torch.compile of the networks.

(bf16 mixed precision is Lightning's `trainer.precision`; pinned memory and persistent workers
are the datamodule's; `fast.*` in conf/train.yaml turns all of them on when training on a GPU.)
Explanations never see these: `eager()` runs the callbacks' renders on the uncompiled modules,
outside autocast, so a map is the same with the fast paths on or off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import nn

from src.base.errors import ConfigError

log = logging.getLogger(__name__)


class FastPaths(L.Callback):
    """Puts the model (and every 4-D floating batch tensor) in channels_last memory format and
    compiles each of the model's top-level networks in place (`nn.Module.compile`, so parameter
    names, checkpoints and hooks stay as they are)."""

    def __init__(self, channels_last: bool = False, compile: bool | dict[str, Any] = False) -> None:
        if not isinstance(compile, bool | dict):
            raise ConfigError(
                "fast.compile", compile, "use true, false or torch.compile options such as {mode: max-autotune}"
            )
        self.channels_last = bool(channels_last)
        self.compile_options = ({} if compile is True else dict(compile)) if compile else None
        self._compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile_options is not None and not self._compiled:
            if float(getattr(getattr(pl_module, "loss_cfg", None), "ad_weight", 0) or 0) > 0:
                raise ConfigError(
                    "fast.compile",
                    True,
                    "the attention-disentanglement loss (model.loss.ad_weight > 0) "
                    "differentiates a layer inside the encoder, which a compiled encoder hides: set "
                    "fast.compile=false for this run",
                )
            names = []
            for name, child in pl_module.named_children():
                if any(True for _ in child.parameters()):
                    child.compile(**self.compile_options)
                    names.append(name)
            self._compiled = True
            log.info("torch.compile %s: %s", self.compile_options or "(defaults)", ", ".join(names))

    def _convert(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, dict):
            for key, value in batch.items():
                if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
                    batch[key] = value.contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._convert(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._convert(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._convert(batch)


def set_tf32(on: bool) -> None:
    """TF32 for float32 CUDA matmuls and cuDNN convolutions (`fast.tf32` while training): about
    1e-3 relative precision at a multiple of the speed on Ampere and later GPUs. Through torch's
    older switches, which Lightning's own precision check reads (mixing in the newer
    `fp32_precision` API makes that check raise)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(on)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """TF32 off inside the block (torch runs cuDNN convolutions in TF32 unless told otherwise),
    the caller's setting restored after: a render computes in float32, so its maps and the
    tolerances derived for them hold on a GPU as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def eager(module: nn.Module) -> Iterator[nn.Module]:
    """Run `module` uncompiled and in full precision (no autocast, no TF32: `full_precision`)
    inside the block: explanation code registers hooks, takes batched and forward-mode gradients
    (torch.func) and must give the same maps whatever the training fast paths are."""
    stashed = [(m, m._compiled_call_impl) for m in module.modules() if getattr(m, "_compiled_call_impl", None)]
    for m, _ in stashed:
        m._compiled_call_impl = None
    device_type = next((p.device.type for p in module.parameters()), "cpu")
    try:
        with torch.autocast(device_type=device_type, enabled=False), full_precision():
            yield module
    finally:
        for m, compiled in stashed:
            m._compiled_call_impl = compiled
