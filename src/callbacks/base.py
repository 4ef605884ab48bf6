"""Base for callbacks that render images at the end of validation epochs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.base.errors import ConfigError
from src.data.in_memory import seeded_rows
from src.run import interrupt
from src.sinks import SinkSet, sinks_for_trainer
from src.training.fast_paths import eager

log = logging.getLogger(__name__)


_NOT_OURS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "NCCL", "Timed out", "Connection reset", "Connection closed")


def not_ours(exc: BaseException) -> bool:
    """An error a render must not swallow: out of memory, the device or a collective failing (torch
    raises some of these as a plain RuntimeError, recognised by its message). Training cannot
    rightly go on after them."""
    import torch.distributed as dist

    if isinstance(exc, torch.OutOfMemoryError | torch.AcceleratorError | dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _NOT_OURS)


class ImageCallback(L.Callback):
    """Runs `render` every `every_n_epochs` validation epochs (and on the last epoch), on global
    rank 0 only, in eval mode, with the global RNG state saved and restored, so training is the
    same with and without the callback; uncompiled and outside autocast (`eager`), so maps do not
    depend on the fast paths. Probes: a fixed, seeded subset of the validation set. Long renders
    report their steps and stop between them on a stop signal (src.run.progress, src.run.interrupt): the
    render ends there, keeping the panels already written, and no further render starts; the
    epoch ends normally (its checkpoints are saved) and the run stops after it. A render that
    fails is logged and training goes on (`raise_errors`: it stops), except for out-of-memory,
    device and collective errors (`not_ours`), which always stop the run."""

    def __init__(
        self,
        name: str,
        every_n_epochs: int = 1,
        num_probes: int = 16,
        seed: int = 0,
        save_tensors: bool = False,
        raise_errors: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"{name}: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.name = name
        self.every_n_epochs = every_n_epochs
        self.num_probes = num_probes
        self.seed = seed
        self.save_tensors = save_tensors
        self.raise_errors = raise_errors
        self._probes: dict[str, torch.Tensor] | None = None
        self._sinks: SinkSet | None = None

    def probes(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        """The same `num_probes` validation samples every epoch (CPU tensors)."""
        if self._probes is None:
            self._probes = seeded_rows(trainer.datamodule.val_set, self.num_probes, self.seed)
        return self._probes

    def sinks(self, trainer: L.Trainer) -> SinkSet:
        if self._sinks is None:
            self._sinks = sinks_for_trainer(trainer)
        return self._sinks

    def log_grid(
        self,
        trainer: L.Trainer,
        name: str,
        grid: np.ndarray,
        caption: str,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One image `name` (uint8 HxWxC) with its caption at the trainer's epoch and step; with
        `save_tensors`, also `tensors` (what it was drawn from, if given) as `<name>.pt`."""
        sinks = self.sinks(trainer)
        sinks.log_images(self.name, name, [grid], trainer.current_epoch, trainer.global_step, captions=[caption])
        if self.save_tensors and tensors is not None:
            sinks.save_tensors(self.name, name, tensors, trainer.current_epoch)

    def due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self.due(trainer):
            return
        if interrupt.received() is not None:
            return
        device = pl_module.device
        probes = {k: v.to(device) for k, v in self.probes(trainer).items()}
        was_training = pl_module.training
        pl_module.eval()
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=fork_devices), eager(pl_module):
                torch.manual_seed(self.seed)
                self.render(trainer, pl_module, probes)
        except (KeyboardInterrupt, SIGTERMException):
            if interrupt.received() is None:
                raise
            log.warning(
                "%s: stopped at epoch %d; the panels written before are kept, and the run stops once the "
                "epoch's checkpoint is saved",
                self.name,
                trainer.current_epoch,
            )
        except Exception as exc:
            if self.raise_errors or not_ours(exc):
                raise
            log.exception(
                "explanation callback '%s' failed at epoch %d; training continues", self.name, trainer.current_epoch
            )
        finally:
            pl_module.train(was_training)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def nondeterministic_on_cuda(self) -> dict[str, str]:
        """What this callback would run that has no deterministic CUDA kernel: {config key to
        change: why}; refused before training under trainer.deterministic=true on a GPU."""
        return {}


def as_config(cls: type, values, key: str):
    """`values` (a mapping from the config, or already a `cls`; None: the defaults) as the typed
    config dataclass `cls`. A key `cls` does not have, or a value it refuses, is a ConfigError
    naming `key` and what to use."""
    if isinstance(values, cls):
        return values
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(key, values, f"give a mapping of {cls.__name__}'s keys")
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", values[unknown[0]], f"no such key; choose from {', '.join(names)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, values, str(exc)) from None


def method_spec(value, key: str, known) -> tuple[str, dict]:
    """The config shape of one method with options: a name in `known`, or {method: name,
    options: {...}}. Returns (name, options); an unknown name or key is a ConfigError naming
    `key`. `known`: the names it may be (src.xai.METHODS, or a registry of its own)."""
    if isinstance(value, str):
        if value not in known:
            raise ConfigError(key, value, f"choose from {sorted(known)}")
        return value, {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "give a method's name or {method: name, options: {...}}")
    spec = dict(value)
    extra = sorted(set(spec) - {"method", "options"})
    if extra:
        raise ConfigError(f"{key}.{extra[0]}", spec[extra[0]], "a method takes {method: name, options: {...}}")
    name = spec.get("method")
    if name not in known:
        raise ConfigError(f"{key}.method", name, f"choose from {sorted(known)}")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{key}.options", options, "give the method's keyword options as a mapping")
    return str(name), dict(options)


def method_specs(value, key: str, known, options: Mapping | None = None) -> dict[str, tuple[str, dict]]:
    """The config shapes of several methods: label -> a name or {method: name (default: the
    label), options: {...}} (see `method_spec`), or a list of names with their `options` by name
    (so that an override can pick a subset, `methods=[a,b]`, and set an option,
    `options.a.steps=3`; the options of a method not picked wait unused). Returns label ->
    (name, options)."""
    options = dict(options or {})
    parent = key.rsplit(".", 1)[0]
    if isinstance(value, Mapping):
        if options:
            raise ConfigError(f"{parent}.options", options, f"give the options inside {key}")
        specs = {}
        for label, spec in value.items():
            if spec is None or isinstance(spec, Mapping):
                spec = {"method": label, **dict(spec or {})}
            specs[str(label)] = method_spec(spec, f"{key}.{label}", known)
        return specs
    if isinstance(value, str) or not all(isinstance(name, str) for name in value):
        raise ConfigError(key, value, "give a list of names or label: {method: name, options: {...}}")
    unknown = sorted(set(value) - set(known)) or sorted(set(options) - set(known))
    if unknown:
        where = key if unknown[0] in value else f"{parent}.options.{unknown[0]}"
        raise ConfigError(where, unknown[0], f"choose from {sorted(known)}")
    if len(set(value)) != len(value):
        raise ConfigError(key, list(value), "each method once")
    return {name: (name, dict(options.get(name) or {})) for name in value}
