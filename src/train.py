"""Train a model with its explanation callbacks: python -m src.train [experiment=NAME] [key=value ...]."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import src.config.resolvers  # noqa: F401  (registers the config resolvers)
from src.base.errors import ConfigError
from src.config.checks import check_model_fits_data
from src.config.resolvers import is_gpu
from src.config.resume import resumed_config
from src.run import interrupt
from src.run.checkpoints import AtomicCheckpointIO, check_resumable, remove_partial_writes
from src.run.distributed import (
    RenderGate,
    ddp_relaunch_this_job_only,
    one_ddp_job,
    stop_agreed,
    stops_agree_across_ranks,
)
from src.run.runtime import check_writable, prepare_process
from src.run.task import command, job_started, run_task
from src.sinks.csv_logger import CSVLogger
from src.training.fast_paths import FastPaths, set_tf32
from src.training.run_safety import Checkpoints, FiniteGuard, InterruptCheckpoint, ResumeState

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """One callback per entry of the `explain` group; the entry's key is its name."""
    callbacks = []
    for name, conf in (cfg or {}).items():
        if conf is not None and "_target_" in conf:
            callbacks.append(hydra.utils.instantiate(conf, name=name, _convert_="all"))
    return callbacks


def fast_paths(cfg: DictConfig | None) -> list[Callback]:
    """The FastPaths callback when `fast.channels_last` or `fast.compile` is on; TF32 for training
    as `fast.tf32` says (renders turn it off for themselves)."""
    cfg = cfg or {}
    set_tf32(bool(cfg.get("tf32", False)))
    channels_last, compile_ = cfg.get("channels_last", False), cfg.get("compile", False)
    if not channels_last and not compile_:
        return []
    if isinstance(compile_, DictConfig):
        compile_ = OmegaConf.to_container(compile_, resolve=True)
    return [FastPaths(channels_last=channels_last, compile=compile_)]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return [
        hydra.utils.instantiate(conf, _convert_="all")
        for conf in (cfg or {}).values()
        if conf is not None and "_target_" in conf
    ]


def resolve_resume(cfg: DictConfig) -> tuple[str | None, int]:
    """The checkpoint to resume from (None: a new run) and the global step it was saved at,
    checked against the config before anything is written.

    `ckpt_path=last`: this run folder's checkpoints/last.ckpt (the command line's run folder picks
    the folder: `hydra.run.dir=<run>`, else the newest run of the task, src.config.resolvers.run_dir); a
    file: that file. The run goes on in `paths.output_dir`. A missing, unreadable or mismatched
    checkpoint (another model class, other hyperparameters) is a ConfigError naming what differs."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None, 0
    output_dir = Path(cfg.paths.output_dir)
    if str(ckpt) == "last":
        path = output_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            runs = Path(cfg.paths.log_dir) / "runs" / str(cfg.task_name)
            where = (
                f"no run of task {cfg.task_name} under {runs} has one"
                if output_dir in src.config.resolvers.CREATED_DIRS
                else f"{path} does not exist"
            )
            raise ConfigError(
                "ckpt_path",
                "last",
                f"nothing to resume: {where}; pass the run folder "
                "(hydra.run.dir=<run>) or a file (ckpt_path=<run>/checkpoints/"
                "last.ckpt)",
            )
        if output_dir in src.config.resolvers.RESUMED_NEWEST:
            log.info("ckpt_path=last: resuming %s, the newest run of task %s", output_dir, cfg.task_name)
    else:
        path = Path(ckpt)
        if not path.is_file():
            raise ConfigError(
                "ckpt_path", str(ckpt), "no such checkpoint file; pass <run>/checkpoints/<name>.ckpt or ckpt_path=last"
            )
    path = path.resolve()
    step = check_resumable(path, cfg)
    log.info("resuming run %s from %s", output_dir, path)
    return str(path), step


def check_batch_norm_batches(model: L.LightningModule, cfg: DictConfig) -> None:
    """Batch norm needs two or more samples per training batch (else the first step fails deep in
    torch with "Expected more than 1 value per channel")."""
    from torch import nn

    size = cfg.data.get("batch_size")
    if (
        size is not None
        and int(size) < 2
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ):
        raise ConfigError(
            "data.batch_size",
            size,
            "this model has batch norm layers, which need at least 2 samples per batch; use data.batch_size=2 or more",
        )


def refuse_nondeterministic(cfg: DictConfig, callbacks: list[Callback]) -> None:
    """Under trainer.deterministic=true on CUDA, torch raises in the middle of a run at the first
    op without a deterministic CUDA kernel; an explanation that has one is refused before
    training, naming it. (On the CPU these ops are deterministic.)"""
    if cfg.trainer.get("deterministic") is not True or not is_gpu(str(cfg.trainer.get("accelerator", "auto"))):
        return
    found = {
        key: why
        for cb in callbacks
        if hasattr(cb, "nondeterministic_on_cuda")
        for key, why in cb.nondeterministic_on_cuda().items()
    }
    if found:
        listed = "; ".join(f"{key}: {why}" for key, why in found.items())
        raise ConfigError(
            "trainer.deterministic",
            True,
            f"on CUDA these explanations have no deterministic "
            f"kernel: {listed}. Remove them, or set trainer.deterministic=false (or 'warn')",
        )


def stopped_at_the_end(trainer: L.Trainer, checkpoint: ModelCheckpoint) -> None:
    """A stop signal that came when no batch was left (during the last epoch's explanations, or
    the test): every rank raises it, after the epoch's checkpoints were written."""
    if stop_agreed(trainer):
        if trainer.is_global_zero:
            epoch = min(trainer.current_epoch, (trainer.max_epochs or 1) - 1)  # the epoch that ended
            log.warning(
                "interrupted at epoch %d, global step %d: %s holds it; resume with ckpt_path=last",
                epoch,
                trainer.global_step,
                checkpoint.last_model_path,
            )
        interrupt.raise_if_stopped(trainer)
        raise SIGTERMException  # a rank that got no signal itself


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured model; returns the final metrics. Nothing is
    written before the config and the checkpoint to resume from (if any) are checked."""
    check_model_fits_data(cfg)
    check_writable(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path, resumed_step = resolve_resume(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    check_batch_norm_batches(model, cfg)
    checkpoint = Checkpoints(**OmegaConf.to_container(cfg.checkpoint, resolve=True))
    remove_partial_writes(checkpoint.dirpath)
    safety = [FiniteGuard(), InterruptCheckpoint(checkpoint.dirpath), ResumeState()]
    explain = [*instantiate_callbacks(cfg.get("explain")), RenderGate()]  # the gate after the renders
    callbacks = [checkpoint, *safety, *fast_paths(cfg.get("fast")), *explain]
    refuse_nondeterministic(cfg, explain)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    stops_agree_across_ranks(trainer)
    for logger in loggers:
        if ckpt_path is not None and isinstance(logger, CSVLogger):
            logger.keep_history_before(resumed_step)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    with interrupt.between_batches():
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    stopped_at_the_end(trainer, checkpoint)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test"):
        ckpt = "best" if checkpoint.best_model_path else None
        for result in trainer.test(model, datamodule=datamodule, ckpt_path=ckpt):
            metrics.update({k: float(v) for k, v in result.items()})
        stopped_at_the_end(trainer, checkpoint)
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)} | {
        "best_checkpoint": checkpoint.best_model_path,
        "epochs": trainer.current_epoch,
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    job_started()
    prepare_process(cfg)
    ddp_relaunch_this_job_only()
    with interrupt.installed(), one_ddp_job():
        metrics = run_task(lambda: train(resumed_config(cfg)))
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    command(main)
