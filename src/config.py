"""OmegaConf resolvers the config tree uses (registered on import), and a finished run's config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from src.errors import DataError


def multirun_job():
    """Hydra's runtime config when this process is a job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


def sweep_group(task_name: str) -> str:
    """W&B group: the task name; in a multirun, the task name and the sweep's folder name, so all
    jobs of one sweep share a group and two sweeps of one task do not."""
    hc = multirun_job()
    return task_name if hc is None else f"{task_name}-{Path(hc.sweep.dir).name}"


def job_name(task_name: str) -> str:
    """Run name: the task name; in a multirun, also the job number and its overrides."""
    hc = multirun_job()
    if hc is None:
        return task_name
    overrides = hc.job.override_dirname
    return f"{task_name}-{hc.job.num}" + (f"-{overrides}" if overrides else "")


def is_gpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` trains on a GPU (`auto`: when CUDA is available)."""
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return False


# data group -> the short name task names use (fashion_vae, celebamask_unet, ...)
SHORT_DATA_NAMES = {"fashion_mnist": "fashion", "celebamask_hq": "celebamask"}


def default_task_name(data: str, model: str) -> str:
    """The task name of a run composed from groups without an experiment: <data>_<model>, with
    the data's short name, the naming every experiment follows (fashion_vae, digits_classifier)."""
    return f"{SHORT_DATA_NAMES.get(str(data), str(data))}_{model}"


def _cvae_condition(data_target: str) -> str:
    from src.compat import cvae_condition

    return cvae_condition(data_target)


def _condition_dim(data_target: str, condition: str, attributes=None) -> int:
    from src.compat import condition_dim

    return condition_dim(data_target, condition, attributes)


OmegaConf.register_new_resolver("task_name", default_task_name, replace=True)
OmegaConf.register_new_resolver("cvae_condition", _cvae_condition, replace=True)
OmegaConf.register_new_resolver("condition_dim", _condition_dim, replace=True)
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("job_name", job_name, replace=True)
OmegaConf.register_new_resolver("is_gpu", is_gpu, replace=True)


def load_run_config(run_dir: str | Path, root_dir: str | Path | None = None) -> DictConfig:
    """A finished run's composed config (<run_dir>/.hydra/config.yaml), readable outside Hydra:
    the `${hydra:...}` paths become `root_dir` (default: the working directory) and `run_dir`, so
    `hydra.utils.instantiate(cfg.data)` rebuilds the run's datamodule. A missing file is a
    DataError naming it."""
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the folder of a finished training run")
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.paths.root_dir = str(Path(root_dir or Path.cwd()).resolve())
        cfg.paths.output_dir = str(run_dir.resolve())
    return cfg
