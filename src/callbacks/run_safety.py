"""Callbacks that keep a run's files safe: stop on a non-finite loss or weights before anything
broken is checkpointed, save a resumable checkpoint on Ctrl-C / SIGTERM, and carry the RNG state
through checkpoints so a resumed run continues exactly as an uninterrupted one."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.data.in_memory import EpochShuffle
from src.errors import TrainingFault

log = logging.getLogger(__name__)


def _last_good(trainer: L.Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.last_model_path and Path(cb.last_model_path).is_file():
            return f"the last good checkpoint, {cb.last_model_path}, is kept"
    return "no checkpoint had been written yet"


class FiniteGuard(L.Callback):
    """Raises TrainingFault on a non-finite training loss, or one that diverged (over `diverged`
    times the first step's loss: a learning rate far too high can keep the loss finite while the
    weights run off), naming the step and the loss terms (from the module's `last_terms` when it
    keeps them); and on non-finite weights before validation ends, so ModelCheckpoint (which
    Lightning runs after every other callback) never writes a broken checkpoint. One host sync
    per step (the loss value)."""

    def __init__(self, diverged: float = 1e6) -> None:
        self.diverged = diverged
        self._first: float | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if self._first is None and math.isfinite(value):
            self._first = max(abs(value), 1e-8)
        if math.isfinite(value) and abs(value) <= self.diverged * self._first:
            return
        terms = {k: float(v) for k, v in (getattr(pl_module, "last_terms", None) or {"loss": loss}).items()}
        where = f"at epoch {trainer.current_epoch}, global step {trainer.global_step}"
        fix = (
            "Lower model.optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or check the data, then "
            "resume with ckpt_path=last"
        )
        if math.isfinite(value):
            raise TrainingFault(
                f"training diverged {where}: loss = {value:.4g}, over {self.diverged:g} times the "
                f"first step's {self._first:.4g}; {_last_good(trainer)}. {fix}"
            )
        bad = ", ".join(f"{k} = {v}" for k, v in terms.items() if not math.isfinite(v))
        good = ", ".join(f"{k} = {v:.4g}" for k, v in terms.items() if math.isfinite(v))
        raise TrainingFault(
            f"non-finite training loss {where}: {bad or f'loss = {value}'}"
            + (f" ({good})" if good else "")
            + f"; {_last_good(trainer)}. {fix}"
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        broken = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise TrainingFault(
                f"non-finite weights after epoch {trainer.current_epoch} (global step {trainer.global_step}) in "
                f"{', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}; not checkpointed: {_last_good(trainer)}"
            )


class Checkpoints(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with last.ckpt the newest state after every epoch: where it
    saves at the end of the training epoch, Lightning 2.6 writes last.ckpt only when the top-k
    kept a new checkpoint, so an epoch whose monitored metric did not improve was missing from
    last.ckpt (a kill then, or a resume from it, lost the epoch)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if (
            self.save_last
            and self._should_save_on_train_epoch_end(trainer)
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C (KeyboardInterrupt) or SIGTERM, save the run as it is to `<dirpath>/last.ckpt`
    (resume with ckpt_path=last). Other exceptions save nothing: their state may be broken."""

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException) or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning("interrupted at epoch %d, global step %d: saved %s; resume with ckpt_path=last",
                        trainer.current_epoch, trainer.global_step, self.path)  # fmt: skip


def _numpy_state_to_tensor(state: tuple) -> tuple:
    """numpy's RNG state with its uint32 key array as an int64 tensor (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = state
    return kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss


def _numpy_state_from_tensor(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, gauss = state
    return kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss


def model_class_path(module: object) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


class ResumeState(L.Callback):
    """What a resume or a reload needs beyond Lightning's own checkpoint state: the torch / numpy /
    python RNG states, restored when the resumed run starts training (after the sanity check) so
    sampling noise and augmentation continue as in an uninterrupted run, and the model's class, so
    a checkpoint loaded as the wrong kind of model is refused by name (src.checkpoints). Stored as
    tensors and plain values: the checkpoint stays loadable with torch.load(weights_only=True)."""

    def __init__(self) -> None:
        self._restored: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = _collect_rng_states()
        states["numpy"] = _numpy_state_to_tensor(states["numpy"])
        checkpoint["rng_states"] = states
        checkpoint["model_class"] = model_class_path(pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._restored = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module) -> None:
        self._skip_trained_batches(trainer)
        if self._restored is None:
            return
        states = dict(self._restored)
        states["numpy"] = _numpy_state_from_tensor(states["numpy"])
        _set_rng_states(states)
        self._restored = None

    @staticmethod
    def _skip_trained_batches(trainer: L.Trainer) -> None:
        """Resumed mid-epoch: Lightning restores the batch counter but the loader would start the
        epoch again; skip the batches already trained on, so the rest of the epoch is what an
        uninterrupted run sees."""
        epoch_loop = trainer.fit_loop.epoch_loop
        done = epoch_loop.batch_progress.current.completed if epoch_loop.restarting else 0
        loader = trainer.train_dataloader
        if not done or loader is None:
            return
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, EpochShuffle):
            sampler.skip = done * loader.batch_size
        else:
            log.warning("resumed in the middle of epoch %d: this loader replays the epoch from its start "
                        "(%d batches were done)", trainer.current_epoch, done)  # fmt: skip
