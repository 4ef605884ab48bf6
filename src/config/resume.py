"""A resume's configuration (the run's saved overrides, with what may change) and a finished
run's composed config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from src.base.errors import ConfigError, DataError
from src.config.resolvers import multirun_job

# class paths a run folder's saved config may name that have moved since (the package layout of
# this release): load_run_config reads them at their new place
MOVED_TARGETS = {
    "src.data.synthfaces.SynthFacesDataModule": "src.data.synthfaces.datamodule.SynthFacesDataModule",
    "src.distributed.DDPStrategy": "src.run.distributed.DDPStrategy",
    "src.callbacks.gradcam.PartAttention": "src.callbacks.gradcam.PartAttentionCallback",
}


def _moved_targets(node) -> None:
    """Every `_target_` under `node` that names a moved class, rewritten in place."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if isinstance(target, str) and target in MOVED_TARGETS:
            node._target_ = MOVED_TARGETS[target]
        for key in node:
            if not OmegaConf.is_interpolation(node, key):
                _moved_targets(node[key])
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            if not OmegaConf.is_interpolation(node, index):
                _moved_targets(node[index])


def load_run_config(run_dir: str | Path, root_dir: str | Path | None = None) -> DictConfig:
    """A finished run's composed config (<run_dir>/.hydra/config.yaml), readable outside Hydra:
    the `${hydra:...}` paths become `root_dir` (default: the working directory) and `run_dir`, so
    `hydra.utils.instantiate(cfg.data)` rebuilds the run's datamodule; a class that has moved since
    the run is read at its new place (MOVED_TARGETS). A missing file is a DataError naming it."""
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the folder of a finished training run")
    cfg = OmegaConf.load(path)
    _moved_targets(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(Path(root_dir or Path.cwd()).resolve())
        cfg.paths.output_dir = str(run_dir.resolve())
    return cfg


# what a resume may change (the rest is the run's saved configuration): how long and how it
# trains, where it logs, which explanations it renders, where the data lies
RESUME_MAY_CHANGE = (
    "ckpt_path",
    "trainer",
    "logger",
    "explain",
    "fast",
    "test",
    "paths",
    "run_name",
    "tags",
    "optimized_metric",
    "data.num_workers",
    "data.root",
    "data.cache_dir",
    "data.download",
    "data.search_system",
    "checkpoint.dirpath",
)


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def flatten(value, prefix: str = "") -> dict[str, object]:
    """A nested dict (or config node, its interpolations as written) as {dotted key: leaf value};
    an empty dict is a leaf of its own, tuples become lists."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}


def _may_replace(key: str, asked: str) -> bool:
    """Whether an asked override of `asked` replaces a saved one of `key` (a group replaces its keys')."""
    return key == asked or key.startswith(asked + ".")


def _override_key(text: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([text])
    return override.key_or_group


def _compose(overrides: list[str], hc) -> DictConfig:
    """conf/train.yaml composed with `overrides` inside this running Hydra app, with the `${...}`
    that read Hydra's runtime (task name, tags, paths) resolved as this job sees them."""
    from hydra import compose

    cfg = compose(config_name=hc.job.config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = hc.runtime.cwd
        cfg.hydra.runtime.output_dir = hc.runtime.output_dir
        cfg.task_name = str(cfg.task_name)
        cfg.tags = OmegaConf.to_container(cfg.tags, resolve=True)
        cfg.paths = OmegaConf.to_container(cfg.paths, resolve=True)
        del cfg.hydra
    return cfg


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config a resume runs with: the run's saved one (its .hydra/overrides.yaml composed
    again) with the command line's overrides of what may change (RESUME_MAY_CHANGE: epochs,
    trainer, loggers, explanation callbacks, data locations). Any other override that changes a
    value is a ConfigError naming each key with the run's and the asked value. `cfg` as it is
    for a new run, a multirun job, or a run folder without a saved configuration."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("ckpt_path") in (None, "") or not HydraConfig.initialized() or multirun_job() is not None:
        return cfg
    saved_file = Path(cfg.paths.output_dir) / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        return cfg
    hc = HydraConfig.get()
    saved = [str(o) for o in OmegaConf.load(saved_file)]
    asked = [str(o) for o in hc.overrides.task]
    asked_keys = {_override_key(o) for o in asked}  # a group (explain=none) also replaces its keys' overrides
    replaced = {o for o in saved if any(_may_replace(_override_key(o), k) for k in asked_keys)}
    merged = [o for o in saved if o not in replaced] + asked
    resumed = _compose(merged, hc)
    before, after = flatten(_compose(saved, hc)), flatten(resumed)
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k, "<unset>") != after.get(k, "<unset>") and not _may_change(k)
    )
    if changed:
        shown = "; ".join(
            f"{k}: {before.get(k, '<unset>')!r} in the run, {after.get(k, '<unset>')!r} asked" for k in changed[:6]
        )
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ConfigError(
            "ckpt_path",
            cfg.ckpt_path,
            f"a resume goes on with the run's own settings ({saved_file}); "
            f"these overrides change them: {shown}{more}. Drop them, or "
            "start a new run without ckpt_path",
        )
    return resumed
