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

from src.base.errors import TrainingFault
from src.data.in_memory import EpochShuffle

log = logging.getLogger(__name__)


def _last_good(trainer: L.Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.last_model_path and Path(cb.last_model_path).is_file():
            return f"the last good checkpoint, {cb.last_model_path}, is kept"
    return "no checkpoint had been written yet"


class FiniteGuard(L.Callback):
    """Raises TrainingFault on a non-finite training loss, or one that diverged (over `diverged`
    times the first finite step's loss: a learning rate far too high can keep the loss finite while
    the weights run off), naming the step and the loss terms (from the module's `last_terms` when
    it keeps them); and on non-finite weights before validation ends, so ModelCheckpoint (which
    Lightning runs after every other callback) never writes a broken checkpoint.

    No host sync per step: each step's test runs on the device and keeps the first bad step with
    its loss terms; every `check_every` steps, before each validation and at each training epoch's
    end the ranks gather their records (one collective, one host read) and every rank raises the
    same error together, naming the rank where it happened: a NaN on one rank stops all of them,
    none is left waiting in the next gradient all-reduce. Up to `check_every` steps may run after
    the bad one; the checks before validation keep them out of every checkpoint."""

    def __init__(self, diverged: float = 1e6, check_every: int = 50) -> None:
        if int(check_every) < 1:
            raise ValueError(f"check_every must be >= 1 (steps between checks), got {check_every}")
        self.diverged, self.check_every = diverged, int(check_every)
        self._first: torch.Tensor | None = None  # |first finite loss| (NaN until there is one)
        self._record: torch.Tensor | None = None  # [bad, step, loss, *terms] of the first bad step
        self._terms: list[str] = []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if self._record is None:
            terms = getattr(pl_module, "last_terms", None) or {}
            self._terms = [k for k in terms if k != "loss"]
            self._first = torch.full_like(value, float("nan"))
            self._record = torch.zeros(3 + len(self._terms), device=value.device)
        self._first = torch.where(
            torch.isnan(self._first) & torch.isfinite(value), value.abs().clamp_min(1e-8), self._first
        )
        bad = ~torch.isfinite(value) | (value.abs() > self.diverged * self._first)
        terms = getattr(pl_module, "last_terms", None) or {}
        now = torch.stack(
            [
                torch.ones_like(value),
                torch.full_like(value, trainer.global_step),
                value,
                *[terms[k].detach().float().to(value.device) for k in self._terms],
            ]
        )
        self._record = torch.where(bad & (self._record[0] == 0), now, self._record)
        if (trainer.global_step + 1) % self.check_every == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """The agreed check (see the class docstring); call it on every rank at the same point."""
        if self._record is None:
            return
        from src.run.distributed import gather_rows

        rows = gather_rows(trainer, torch.cat([self._record, self._first.view(1)]))
        bad = [(row[1], rank, row) for rank, row in enumerate(rows) if row[0]]
        if not bad:
            return
        _, rank, (_, step, value, *rest) = min(bad)  # the first bad step (a NaN spreads in the all-reduce)
        *terms, first = rest
        terms = {"loss": value, **dict(zip(self._terms, terms))}
        where = f"at epoch {trainer.current_epoch}, global step {int(step)}" + (
            f" on rank {rank}" if len(rows) > 1 else ""
        )
        fix = (
            "Lower model.optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or check the data, then "
            "resume with ckpt_path=last"
        )
        if math.isfinite(value):
            what = f"training diverged {where}: loss = {value:.4g}, over {self.diverged:g} times the first step's"
            what += f" {first:.4g}"
        else:
            bad_terms = ", ".join(f"{k} = {v}" for k, v in terms.items() if not math.isfinite(v))
            good = ", ".join(f"{k} = {v:.4g}" for k, v in terms.items() if math.isfinite(v))
            what = f"non-finite training loss {where}: {bad_terms}" + (f" ({good})" if good else "")
        error = TrainingFault(f"{what}; {_last_good(trainer)}. {fix}")
        error.every_rank = True  # every rank raises it at this same check
        raise error

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
    """Lightning's ModelCheckpoint, with last.ckpt the newest state after every epoch, so that a
    kill or a resume never loses one. (Saving at the end of the training epoch, ModelCheckpoint
    writes last.ckpt only when its top-k keeps a new checkpoint: an epoch whose monitored metric
    did not improve would be missing from it.)"""

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
            log.warning(
                "interrupted at epoch %d, global step %d: saved %s; resume with ckpt_path=last",
                trainer.current_epoch,
                trainer.global_step,
                self.path,
            )


def _numpy_state_to_tensor(state: tuple) -> tuple:
    """numpy's RNG state with its uint32 key array as an int64 tensor (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = state
    return kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss


def _numpy_state_from_tensor(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, gauss = state
    return kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss


def own_rng_state(device: torch.device) -> dict:
    """This process's RNG states: torch (CPU), numpy, python, and the CUDA generator of `device`
    alone (None off CUDA)."""
    states = _collect_rng_states(include_cuda=False)
    states["numpy"] = _numpy_state_to_tensor(states["numpy"])
    states["cuda"] = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return states


def set_own_rng_state(states: dict, device: torch.device) -> None:
    """Restore `own_rng_state`'s states; the CUDA one onto `device` (when both are CUDA)."""
    cuda = states.get("cuda")
    plain = {k: v for k, v in states.items() if k != "cuda"}
    plain["numpy"] = _numpy_state_from_tensor(plain["numpy"])
    _set_rng_states(plain)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def model_class_path(module: object) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


class ResumeState(L.Callback):
    """What a resume or a reload needs beyond Lightning's own checkpoint state: every rank's own
    torch / CUDA / numpy / python RNG states, restored when the resumed run starts training (after
    the sanity check) so sampling noise and augmentation continue as in an uninterrupted run, and
    the model's class, so a checkpoint loaded as the wrong kind of model is refused by name
    (src.run.checkpoints). Stored as tensors and plain values: the checkpoint stays loadable with
    torch.load(weights_only=True).

    Each rank keeps the CUDA state of its own device only (`torch.cuda.get_rng_state_all()` would
    tie the checkpoint to the number of visible GPUs), and the ranks' states are gathered into the
    checkpoint rank 0 writes (`rng_states: {"ranks": [...]}`). Resumed on fewer ranks, each takes
    its own; on more, rank r takes rank r mod n's (said once): a different rank count cannot
    continue exactly anyway, since the batches are split differently."""

    def __init__(self) -> None:
        self._restored: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from src.run.distributed import gather_objects

        checkpoint["rng_states"] = {"ranks": gather_objects(trainer, own_rng_state(trainer.strategy.root_device))}
        checkpoint["model_class"] = model_class_path(pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get("rng_states")
        if saved is None:
            return
        ranks = saved["ranks"]
        rank = trainer.global_rank
        if rank == len(ranks):  # the first rank beyond them says it
            log.warning(
                "resuming on more ranks than the checkpoint was saved from (%d): rank r takes the random "
                "state of rank r mod %d",
                len(ranks),
                len(ranks),
            )
        self._restored = ranks[rank % len(ranks)]

    def on_train_start(self, trainer, pl_module) -> None:
        self._skip_trained_batches(trainer)
        if self._restored is None:
            return
        set_own_rng_state(self._restored, trainer.strategy.root_device)
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
            log.warning(
                "resumed in the middle of epoch %d: this loader replays the epoch from its start "
                "(%d batches were done)",
                trainer.current_epoch,
                done,
            )
