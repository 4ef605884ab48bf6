"""Every run owns its folder, and the commands a user types work as written: the README's sweep
from a fresh working directory (no hydra.sweep.dir), a typo in a group option is an error that
lists the choices, `ckpt_path=last` resumes the run it says with the run's own settings and
writes nowhere else, and a failed start leaves no folder behind."""

import csv
import hashlib
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.config.resolvers import fresh_dir
from src.testing.compose import ROOT
from tests.conftest import FASHION_SYSTEM_DIR

DATA = [] if FASHION_SYSTEM_DIR.is_dir() else None  # the Debian dataset, as a user has it (else the fixture)
SHORT = [
    "debug=fast",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=16",
    "logger=csv",
    "explain=none",
]


def data_args(fashion_fixture) -> list[str]:
    if DATA is not None:
        return DATA
    return [f"data.root={fashion_fixture}", "data.search_system=false", "data.download=false", "data.val_size=40"]


def user(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m src.train ARGS` (or src.report / src.explain when args start with a module) typed
    in `cwd`, with nothing else on the command line."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    full.pop("WANDB_API_KEY", None)
    module = args[0] if args and args[0].startswith("src.") else "src.train"
    rest = args[1:] if module == args[0] else args
    return subprocess.run(
        [sys.executable, "-m", module, *rest], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def readme_command(pattern: str) -> list[str]:
    """The arguments of the README's command line that matches `pattern`, after `python -m src.train`."""
    for line in (ROOT / "README.md").read_text().splitlines():
        code = line.split("#", 1)[0].strip()
        if re.search(pattern, code):
            words = shlex.split(code)
            return words[words.index("src.train") + 1 :]
    raise AssertionError(f"no README line matches {pattern!r}")


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_readme_sweep_runs_as_written_and_its_report_builds(tmp_path, fashion_fixture):
    args = readme_command(r"-m src\.train -m model\.latent_dim=")
    assert args == ["-m", "model.latent_dim=5,15,50,100"]
    proc = user(*args, *SHORT, *data_args(fashion_fixture), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns" / "fashion_vae").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", sweep.name)
    for job, latent in enumerate((5, 15, 50, 100)):
        folder = sweep / str(job)
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["hyper_parameters"]["latent_dim"] == latent
        assert json.loads((folder / "metrics.json").read_text())["epochs"] == 1
    assert not (tmp_path / "outputs" / "runs").exists()  # the jobs wrote into the sweep only
    report = user("src.report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "report" / "report.csv")))
    assert [(r["job"], r["status"], r["model.latent_dim"]) for r in rows] == [
        ("0", "ok", "5"),
        ("1", "ok", "15"),
        ("2", "ok", "50"),
        ("3", "ok", "100"),
    ]


def _make_folder(args) -> str:
    return fresh_dir(*args)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    with multiprocessing.get_context("fork").Pool(8) as pool:
        folders = pool.map(_make_folder, [(str(tmp_path / "runs"), "2026-12-07_12-00-00")] * 8)
    names = sorted(Path(f).name for f in folders)
    assert names == ["2026-12-07_12-00-00", *(f"2026-12-07_12-00-00_{n}" for n in range(1, 8))]
    assert all(Path(f).is_dir() for f in folders)


@pytest.mark.parametrize(
    "override,listed",
    [
        ("experiment=fashion_vea", "fashion_vae"),
        pytest.param("debug=fats", "fast", marks=pytest.mark.slow),
        pytest.param("hparams_search=optuna", "vae_optuna", marks=pytest.mark.slow),
        pytest.param("model.latnt_dim=3", "Key 'latnt_dim' is not in struct", marks=pytest.mark.slow),
    ],
)
def test_a_typo_is_an_error_that_lists_the_choices_and_writes_nothing(override, listed, tmp_path):
    proc = user(override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert listed in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    proc = user("model.latent_dim=0", cwd=tmp_path)
    assert proc.returncode == 2 and "config key 'model.latent_dim' = 0" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()


def test_ckpt_path_last_resumes_the_newest_run_with_its_own_settings_and_writes_nowhere_else(tmp_path, fashion_fixture):
    data = data_args(fashion_fixture)
    first = user("experiment=fashion_vae", "model.latent_dim=10", *SHORT, *data, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "outputs" / "runs" / "fashion_vae"
    (run,) = runs.iterdir()
    config = (run / ".hydra" / "config.yaml").read_text()

    # the run's own settings (latent_dim 10) without retyping them; only the epochs change
    resumed = user("experiment=fashion_vae", "ckpt_path=last", "trainer.max_epochs=2", *SHORT, *data, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt_path=last: resuming {run}, the newest run of task fashion_vae" in resumed.stdout
    assert list(runs.iterdir()) == [run]  # no folder of its own
    assert (run / ".hydra" / "config.yaml").read_text() == config  # the run's saved configuration stays
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["latent_dim"] == 10 and saved["epoch"] == 1 and saved["global_step"] == 4
    epochs = [r["epoch"] for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("val/loss")]
    assert epochs == ["0", "1"]  # the first session's rows are kept
    assert "resuming run" in (run / "train.log").read_text()

    before = digests(run)
    changed = user("experiment=fashion_vae", "ckpt_path=last", "model.latent_dim=20", *SHORT, *data, cwd=tmp_path)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "model.latent_dim: 10 in the run, 20 asked" in changed.stderr and "Traceback" not in changed.stderr
    assert digests(run) == before  # nothing written into the run by the refused resume
    assert list(runs.iterdir()) == [run]


@pytest.mark.slow  # make test: the refusal above
def test_a_resume_never_writes_into_a_folder_it_was_not_pointed_at(tmp_path, fashion_fixture):
    data = data_args(fashion_fixture)
    first = user("experiment=fashion_vae", "model.latent_dim=10", *SHORT, *data, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs" / "fashion_vae").iterdir()
    before = digests(run)
    empty = tmp_path / "elsewhere"
    named = user("experiment=fashion_vae", "ckpt_path=last", f"hydra.run.dir={empty}", *SHORT, *data, cwd=tmp_path)
    assert named.returncode == 2 and f"{empty}/checkpoints/last.ckpt does not exist" in named.stderr, named.stderr
    other = tmp_path / "other"
    foreign = user(
        "experiment=fashion_vae",
        f"ckpt_path={run}/checkpoints/last.ckpt",
        f"hydra.run.dir={other}",
        *SHORT,
        *data,
        cwd=tmp_path,
    )
    assert foreign.returncode == 2, foreign.stderr[-3000:]
    assert "model.latent_dim: 10 in the checkpoint, 100 asked" in foreign.stderr
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    broken = user("experiment=fashion_vae", f"ckpt_path={garbage}", *SHORT, *data, cwd=tmp_path)
    assert (
        broken.returncode == 2 and f"config key 'ckpt_path' = '{garbage}': not a readable checkpoint" in broken.stderr
    )
    assert digests(run) == before
    assert not (other / "csv").exists() and not (other / "checkpoints").exists()
    assert [p.name for p in (tmp_path / "outputs" / "runs" / "fashion_vae").iterdir()] == [run.name]


def test_src_explain_writes_a_folder_of_its_own_kind(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.testing.compose import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "explain_checkpoint",
            ["experiment=fashion_path_mask", f"paths.log_dir={tmp_path}"],
            return_hydra_config=True,
        )
        cfg.hydra.runtime.cwd = str(tmp_path)
        folder = Path(cfg.hydra.run.dir)
    assert folder.parent == tmp_path / "explanations" / "fashion_path_mask" and folder.is_dir()
    assert cfg.hydra.output_subdir == ".hydra"
