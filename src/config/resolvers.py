"""The OmegaConf resolvers the config tree uses, registered on import: task and job names, run
folders (created exclusively), the W&B group of a sweep, the GPU switches and the loader workers."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from src.base.errors import DataError
from src.config.checks import condition_dim, cvae_condition


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


def loader_workers(on_gpu: bool, devices: object = 1) -> int:
    """`fast.num_workers`: 0 on the CPU (the batches come from arrays in memory: a worker would
    only add a copy, and the step competes for the same cores); on a GPU, the cores this process
    may use shared among the ranks of this node (`devices`: a count, a list, or -1 / "auto": every
    visible GPU), one kept for the rank itself, at most 8 each."""
    if not on_gpu:
        return 0
    import torch

    if isinstance(devices, int) and devices > 0:
        ranks = devices
    elif isinstance(devices, list | tuple) or (isinstance(devices, str) and "," in devices):
        ranks = len(devices if not isinstance(devices, str) else [d for d in devices.split(",") if d.strip()])
    else:
        ranks = max(1, torch.cuda.device_count())
    return max(1, min(8, len(os.sched_getaffinity(0)) // max(1, ranks) - 1))


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


def _runtime(root):
    """Hydra's runtime node (chosen group options, working directory): from the config's own
    `hydra` node where it has one (a multirun's master config, whose sweep folder is named before
    any job's HydraConfig exists), else from HydraConfig (a job's config has no `hydra` node)."""
    if root is not None and "hydra" in root:
        return root.hydra.runtime
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime


def hydra_runtime(key: str, *, _root_=None):
    """`${hydra_runtime:choices.data}`, `${hydra_runtime:cwd}`: like `${hydra:runtime.<key>}`, also
    where HydraConfig is not set yet (the sweep folder's name)."""
    return OmegaConf.select(_runtime(_root_), key, throw_on_missing=True)


def default_task_name(*, _root_=None) -> str:
    """The task name of a run composed from groups without an experiment: <data>_<model>, with
    the data's short name, the naming every experiment follows (fashion_vae, digits_classifier)."""
    choices = _runtime(_root_).choices
    data, model = str(choices["data"]), str(choices["model"])
    return f"{SHORT_DATA_NAMES.get(data, data)}_{model}"


def _slurm_job() -> str | None:
    """`slurm-<job id>[_<array task>]` when this process is one of several tasks of a SLURM job
    (srun starts every rank itself), else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job is None or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}" + (f"_{task}" if task is not None else "")


# the folders this process created for its run, outermost first (src.run.task removes them again after a
# failed start)
CREATED_DIRS: list[Path] = []


def fresh_dir(parent: str, stamp: str) -> str:
    """A run or sweep folder of its own: <parent>/<stamp>, or <stamp>_1, _2, ... when a run that
    started in the same second took it, created here with an exclusive mkdir, so two runs never
    share a folder. The ranks of one multi-task SLURM job share <parent>/slurm-<job id>, and a
    requeued job finds its folder again. Resolved once per config (cached; a multirun's jobs
    reuse the master config's value)."""
    parent_dir = Path(parent)
    slurm = _slurm_job()
    if slurm is not None:
        return str(parent_dir / slurm)
    missing = [d for d in (parent_dir, *parent_dir.parents) if not d.exists()]
    parent_dir.mkdir(parents=True, exist_ok=True)
    CREATED_DIRS.extend(reversed(missing))
    for n in range(10_000):
        candidate = parent_dir / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        CREATED_DIRS.append(candidate)
        return str(candidate)
    raise DataError(f"{parent_dir}: 10,000 run folders named {stamp}*; clean up old runs")


def run_dir(parent: str, stamp: str, ckpt_path=None) -> str:
    """`hydra.run.dir` when the command line names none: the folder of the run being resumed, so
    a resume goes on in its own folder and leaves no other behind (`ckpt_path=last`: the newest
    run under `parent` with a checkpoints/last.ckpt; `ckpt_path=<run>/checkpoints/<file>`: <run>),
    else a fresh folder (`fresh_dir`). Where `last` finds no run, a fresh folder too: src.train
    then stops with a message and removes it."""
    if ckpt_path not in (None, ""):
        if str(ckpt_path) == "last":
            found = sorted(Path(parent).glob("*/checkpoints/last.ckpt"), key=os.path.getmtime)
            if found:
                RESUMED_NEWEST.append(found[-1].parent.parent)
                return str(found[-1].parent.parent)
        elif Path(ckpt_path).is_file() and Path(ckpt_path).resolve().parent.name == "checkpoints":
            return str(Path(ckpt_path).resolve().parent.parent)
    return fresh_dir(parent, stamp)


# the run `ckpt_path=last` picked as the newest of its task (src.train says which)
RESUMED_NEWEST: list[Path] = []


def resume_subdir(ckpt_path) -> str | None:
    """`hydra.output_subdir`: `.hydra` for a new run, None for a resume (ckpt_path set), which
    keeps the run's own saved configuration."""
    return ".hydra" if ckpt_path in (None, "") else None


OmegaConf.register_new_resolver("task_name", default_task_name, replace=True)
OmegaConf.register_new_resolver("hydra_runtime", hydra_runtime, replace=True)
OmegaConf.register_new_resolver("fresh_dir", fresh_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("run_dir", run_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("resume_subdir", resume_subdir, replace=True)
OmegaConf.register_new_resolver("cvae_condition", cvae_condition, replace=True)
OmegaConf.register_new_resolver("condition_dim", condition_dim, replace=True)
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("job_name", job_name, replace=True)
OmegaConf.register_new_resolver("is_gpu", is_gpu, replace=True)
OmegaConf.register_new_resolver("loader_workers", loader_workers, replace=True)
