"""Checkpoints: written atomically on any file system, checked before a resume, and loaded as
trained models with errors that name the key at fault; always read with weights_only=True."""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path
from typing import TypeVar

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from src.base.errors import ConfigError, TrainingFault

log = logging.getLogger(__name__)
M = TypeVar("M", bound=L.LightningModule)


def hydra_class(path: str) -> type:
    """The class at dotted `path`; `object` when it cannot be imported (never a subclass of a model)."""
    from hydra.utils import get_class

    try:
        return get_class(path)
    except Exception:
        return object


def load_module(path: str | Path | None, cls: type[M], key: str, purpose: str = "") -> M:
    """`cls.load_from_checkpoint(path)` on the CPU, in eval mode, read with weights_only=True. A
    missing or unreadable file, or one saved from another kind of model, is a ConfigError naming
    `key` (the config key that gave the path) and what to pass instead."""
    what = f"{purpose}: " if purpose else ""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(
            key,
            path,
            f"{what}pass the .ckpt of a trained {cls.__name__} (a training run writes them under <run>/checkpoints/)",
        )
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), f"{what}no such checkpoint file; pass a .ckpt from <run>/checkpoints/")
    data = path.read_bytes()  # read once: checked here, then loaded by Lightning
    try:
        # tensors and plain values only: a checkpoint cannot run code when it is read
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = f"{what}not a readable checkpoint, or one holding more than tensors and plain values"
        raise ConfigError(key, str(path), f"{hint} ({type(exc).__name__}: {str(exc)[:200]})") from exc
    saved = checkpoint.get("model_class")
    if saved is not None and not issubclass(hydra_class(saved), cls):
        raise ConfigError(
            key,
            str(path),
            f"{what}this is a {saved.rsplit('.', 1)[-1]} checkpoint, not a "
            f"{cls.__name__}; pass a {cls.__name__} checkpoint or the experiment "
            f"that trained it",
        )
    try:
        return cls.load_from_checkpoint(io.BytesIO(data), map_location="cpu", weights_only=True).eval()
    except Exception as exc:
        raise ConfigError(
            key, str(path), f"{what}could not load it as a {cls.__name__} checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


# the temporary file a checkpoint is written to, in the checkpoint's own folder
PARTIAL = ".{name}.partial-{pid}"


def _write_error(path: Path, exc: OSError) -> TrainingFault:
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.ENOSPC: "the disk is full: free space there",
        errno.EDQUOT: "the disk quota is used up: free space there",
        errno.EROFS: "the file system is read-only: point paths.log_dir (or hydra.run.dir) at a writable folder",
        errno.EACCES: "no permission to write there: point paths.log_dir (or hydra.run.dir) at a writable folder",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
    }.get(exc.errno, "check the folder")
    return TrainingFault(
        f"{path}: could not write the checkpoint ({cause}); {hint}. The checkpoints written "
        "before are intact: resume with ckpt_path=last"
    )


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network file systems): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_whole(path: Path, data: memoryview) -> None:
    """`data` into a new file at `path`, flushed and fsynced (an OSError names what failed)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written whole or not at all, on any file system: into a temporary file in
    the checkpoint's own folder (PARTIAL), flushed and fsynced, then `os.replace`d over the target,
    and the folder fsynced. (Lightning's own writer goes through a temporary file in $TMPDIR; where
    that is another file system, the move is a copy that first empties the target.) A failed
    write removes its temporary file and raises TrainingFault naming the path and the cause; a
    kill -9 mid-write leaves the previous checkpoint as it was and a PARTIAL file that the next
    start removes (remove_partial_writes). Remote URLs (s3://...) go to Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(PARTIAL.format(name=path.name, pid=os.getpid()))
        buffer = io.BytesIO()  # serialised first: torch's zip writer turns a failed write into a RuntimeError
        torch.save(checkpoint, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_whole(partial, buffer.getbuffer())
            os.replace(partial, path)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _write_error(path, exc) from exc
            raise
        _fsync_folder(path.parent)


def remove_partial_writes(folder: str | Path | None) -> list[Path]:
    """Remove the temporary files of checkpoint writes that a kill cut short (AtomicCheckpointIO)
    from `folder`; on the first process of a run only (global rank 0), before it writes any.
    Returns what it removed."""
    if folder is None or os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0":
        return []
    removed = sorted(Path(folder).glob(PARTIAL.format(name="*", pid="*")))
    for path in removed:
        path.unlink(missing_ok=True)
        log.warning(
            "removed %s, a checkpoint write that was cut short (the checkpoint it was to replace is intact)", path
        )
    return removed


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The checkpoint at `path` read with weights_only=True (tensors and plain values only: a file
    cannot run code when it is read). An unreadable file is a ConfigError naming `key`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = "not a readable checkpoint (truncated, or not written by torch.save), or one holding more than "
        raise ConfigError(
            key, str(path), f"{hint}tensors and plain values ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def check_resumable(path: str | Path, cfg) -> int:
    """The checkpoint to resume from must be a readable checkpoint of the configured model class
    with the configured hyperparameters: else a ConfigError naming each key that differs, e.g.
    `model.latent_dim: 10 in the checkpoint, 20 asked`. Checked before anything is written.
    Returns the global step it was saved at."""
    from omegaconf import OmegaConf

    from src.config.resume import flatten

    saved = read_checkpoint(path)
    target = str(cfg.model._target_)
    model_class = saved.get("model_class")
    if model_class is not None and not issubclass(hydra_class(target), hydra_class(model_class)):
        raise ConfigError(
            "ckpt_path",
            str(path),
            f"this is a {model_class.rsplit('.', 1)[-1]} checkpoint and the "
            f"config builds a {target.rsplit('.', 1)[-1]}; resume with the "
            "config that trained it",
        )
    trained = flatten(saved.get("hyper_parameters") or {})
    asked = flatten(OmegaConf.to_container(cfg.model, resolve=True))
    differ = sorted(k for k in trained.keys() & asked.keys() if trained[k] != asked[k])
    if differ:
        shown = "; ".join(f"model.{k}: {trained[k]!r} in the checkpoint, {asked[k]!r} asked" for k in differ[:6])
        raise ConfigError(
            "ckpt_path",
            str(path),
            f"the checkpoint was trained with other settings: {shown}; resume with the settings that trained it",
        )
    return int(saved.get("global_step", 0))
