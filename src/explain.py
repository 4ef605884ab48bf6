"""Run explanation callbacks on a trained checkpoint, without training:
python -m src.explain experiment=NAME ckpt_path=CKPT [explain=...] [key=value ...]

The model class comes from the config's `model._target_`, its weights and hyperparameters from
the checkpoint; the configured `explain` callbacks render once (as at the end of a validation
epoch, into `<run>/explanations/<callback>/epoch_000/`), and `<run>/metrics.json` lists per
callback the summary it reports and the files it wrote. The run folder is its own kind,
outputs/explanations/<task>/<time> (conf/explain_checkpoint.yaml), apart from training runs.
Long explanations show their progress (a bar on a terminal, the step count in the log); Ctrl-C
stops them within a step with exit status 130, SIGTERM or SIGUSR1 with 143 (src.run.interrupt),
keeping what was written before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

import src.config.resolvers  # noqa: F401  (registers the config resolvers)
from src.base.errors import ConfigError
from src.run import interrupt
from src.run.checkpoints import load_module
from src.run.runtime import prepare_process
from src.run.task import command, job_started, run_task
from src.train import instantiate_callbacks, instantiate_loggers, refuse_nondeterministic

log = logging.getLogger(__name__)


def check_data_shape(model, cfg: DictConfig) -> None:
    """The checkpoint's image size and channels must be the data's (else every map is nonsense or
    the first forward fails deep inside a conv)."""
    hp = model.hparams
    for model_key, data_key in (("image_size", "image_size"), ("in_channels", "channels")):
        trained, given = hp.get(model_key), cfg.data.get(data_key)
        if trained is not None and given is not None and int(trained) != int(given):
            raise ConfigError(
                f"data.{data_key}",
                given,
                f"the checkpoint {cfg.ckpt_path} was trained on "
                f"{model_key} {trained}; use the experiment it was trained "
                f"with (or data.{data_key}={trained})",
            )


def explain(cfg: DictConfig) -> dict[str, dict]:
    """Load `ckpt_path` as `model._target_`, run the `explain` callbacks once on it; returns each
    callback's summary (those that report one)."""
    L.seed_everything(cfg.seed, workers=True)
    callbacks = instantiate_callbacks(cfg.get("explain"))
    if not callbacks:
        raise ConfigError("explain", None, "no explanation callbacks configured; pick one, e.g. explain=gradcam")
    for callback in callbacks:
        callback.raise_errors = True  # nothing to protect here: a failure is the answer
    refuse_nondeterministic(cfg, callbacks)
    model_cls = hydra.utils.get_class(cfg.model._target_)
    model = load_module(cfg.get("ckpt_path"), model_cls, "ckpt_path", "src.explain needs the model to explain")
    check_data_shape(model, cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, limit_val_batches=1, max_epochs=1
    )
    trainer.validate(model, datamodule=datamodule, verbose=False)
    interrupt.raise_if_stopped(trainer)  # a render stopped by a signal: exit 130 / 143, no summary
    summaries = {cb.name: cb.last_summary for cb in callbacks if getattr(cb, "last_summary", None) is not None}
    if trainer.is_global_zero:
        report = {
            cb.name: {"summary": summaries.get(cb.name), "files": written(output_dir, cb.name)} for cb in callbacks
        }
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        for name, summary in summaries.items():
            log.info("%s: %s", name, json.dumps(summary))
    return summaries


def written(output_dir: Path, callback: str) -> list[str]:
    """The files a callback wrote under <run>/explanations/<callback>/, relative to the run."""
    folder = output_dir / "explanations" / callback
    return sorted(str(p.relative_to(output_dir)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain_checkpoint")
def main(cfg: DictConfig) -> None:
    job_started()
    prepare_process(cfg)
    with interrupt.installed():
        run_task(explain, cfg)


if __name__ == "__main__":
    command(main)
