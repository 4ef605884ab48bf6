"""Scale-out: a 2-process CPU DDP run with the explanation callbacks on, a Hydra multirun whose
jobs each run with DDP, and the sweep report built from the run folders."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from src.report import report
from src.testing.compose import ROOT

pytestmark = pytest.mark.ddp

DATA = ["data.search_system=false", "data.download=false", "data.val_size=40"]
FAST = [
    "debug=fast",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=8",
    "trainer.enable_progress_bar=false",
]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# make test-full: the multirun test below covers DDP, rank-0-only logging and the report
@pytest.mark.slow
def test_two_process_ddp_logs_every_image_once(tmp_path, fashion_fixture):
    run = tmp_path / "run"
    proc = cli(
        "experiment=fashion_classifier",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "logger=wandb",
        f"data.root={fashion_fixture}",
        *DATA,
        *FAST,
        f"hydra.run.dir={run}",
        "explain.attribution.num_probes=2",
        "explain.attribution.methods=[saliency,gradcam]",
        "explain.featviz.maximisation.steps=3",
        "explain.featviz.num_probes=24",
        "explain.featviz.every_n_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # rank 0 only
    explained = {
        "gradcam": "maps.png",
        "attribution": "faithfulness.csv",
        "featviz": "filters.png",
        "confusion": "matrix.png",
    }
    for callback, name in explained.items():
        epochs = sorted(p.name for p in (run / "explanations" / callback).iterdir())
        assert epochs == ["epoch_000", "epoch_001"], callback
        for epoch in epochs:
            assert (run / "explanations" / callback / epoch / name).is_file(), (callback, epoch)
    media = offline[0] / "files" / "media" / "images" / "explain"
    for callback, name in (("gradcam", "maps"), ("featviz", "filters"), ("confusion", "matrix")):
        logged = list((media / callback).glob(f"{name}_*.png"))
        assert len(logged) == 2, (callback, sorted(p.name for p in logged))  # once per epoch, 2 epochs
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test/acc"] <= 1 and metrics["epochs"] == 2


# make test-full: test_run_folders runs the README's sweep and its report, test_ddp_stops 2 gloo ranks
@pytest.mark.slow
def test_multirun_with_ddp_jobs_and_its_report(tmp_path, fashion_fixture):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "experiment=fashion_vae",
        "model.latent_dim=4,8",
        "trainer=ddp_cpu",
        "logger=wandb",
        f"data.root={fashion_fixture}",
        *DATA,
        *FAST,
        "explain.gradcam.num_probes=2",
        "explain.latent_sweep.num_probes=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]  # two jobs, not two per rank
    assert not list(tmp_path.glob("**/multiruns"))  # re-launched ranks did not start sweeps of their own
    for job, latent in (("0", 4), ("1", 8)):
        saved = json.loads((sweep / job / "metrics.json").read_text())
        assert saved["epochs"] == 1 and np.isfinite(saved["test/recon"])
        ranking = list(csv.DictReader(open(sweep / job / "explanations" / "gradcam" / "epoch_000" / "ranking.csv")))
        assert len(ranking) == latent  # each job really ran its own latent size
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one W&B run per job, written by rank 0 only
        assert list(runs[0].glob("*.wandb"))

    result = report(sweep)
    out = sweep / "report"
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["job"], r["status"], r["model.latent_dim"]) for r in rows] == [("0", "ok", "4"), ("1", "ok", "8")]
    for r, job in zip(rows, ("0", "1"), strict=True):
        saved = json.loads((sweep / job / "metrics.json").read_text())
        assert float(r["test/recon"]) == pytest.approx(saved["test/recon"], rel=1e-3)
    assert (out / "test_recon_vs_latent_dim.png").is_file()
    panel = np.asarray(Image.open(result["panel"]))
    rows_px = []
    for job in ("0", "1"):
        grid = Image.open(sweep / job / "explanations" / "gradcam" / "epoch_000" / "maps.png").convert("RGB")
        grid = np.asarray(grid)
        rows_px.append(grid[: (grid.shape[0] - 2) // 2 + 2])  # the first of 2 probes (2 px padding)
    margin = panel.shape[1] - max(r.shape[1] for r in rows_px)
    assert panel.shape[0] == sum(r.shape[0] for r in rows_px)
    y = 0
    for r in rows_px:  # each job's first-probe row, pasted right of its label
        assert np.array_equal(panel[y : y + r.shape[0], margin : margin + r.shape[1]], r)
        y += r.shape[0]

    # a failed job (no metrics) and a job that never ran (no folder) are named as such
    (sweep / "1" / "metrics.json").unlink()
    (sweep / "1" / "train.log").write_text("RuntimeError: CUDA out of memory\n")
    shutil.copytree(sweep / "1", sweep / "3")
    (sweep / "multirun.yaml").write_text(
        (sweep / "multirun.yaml").read_text().replace("model.latent_dim=4,8", "model.latent_dim=4,8,16,32")
    )
    result = report(sweep)
    statuses = [(j.num, j.status) for j in result["jobs"]]
    assert statuses == [(0, "ok"), (1, "failed"), (2, "missing"), (3, "failed")]
    assert result["jobs"][2].overrides == {"model.latent_dim": "16"}  # what the missing job was to run
    text = (sweep / "report" / "report.md").read_text()
    assert "job 1 failed: RuntimeError: CUDA out of memory" in text and "job 2 missing" in text


@pytest.mark.slow  # DDP stays in make test through the multirun above; spawn's own path runs in make test-full
def test_ddp_spawn_trains_tests_and_keeps_every_csv_column(tmp_path, fashion_fixture):
    """Spawned workers (no re-run of the command line); `test` after `fit` used to rewrite
    metrics.csv without the columns `fit` had written and fail."""
    run = tmp_path / "run"
    proc = cli(
        "experiment=fashion_vae",
        "trainer=ddp_spawn",
        "logger=csv",
        f"data.root={fashion_fixture}",
        *DATA,
        *FAST,
        "explain.gradcam.num_probes=2",
        "explain.latent_sweep.num_probes=2",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(saved["test/recon"]) and np.isfinite(saved["val/recon"])
    with open(run / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert any(r["train/loss_step"] for r in rows) and any(r["test/recon"] for r in rows)
    assert float(next(r["test/recon"] for r in rows if r["test/recon"])) == pytest.approx(saved["test/recon"])
    for callback, name in (("gradcam", "maps.png"), ("reconstructions", "grid.png")):
        assert (run / "explanations" / callback / "epoch_000" / name).is_file()


# make test-full: an Optuna search is a multirun of ordinary jobs
@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_the_report_reads_them(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "hparams_search=vae_optuna",
        "experiment=digits_vae",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "logger=csv",
        "explain=none",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "model.latent_dim" in best
    result = report(sweep)
    assert [j.status for j in result["jobs"]] == ["ok", "ok"]
    for job in result["jobs"]:
        assert job.overrides["model.latent_dim"] in {"5", "15", "50", "100"}
        assert 0.5 <= float(job.overrides["model.loss.beta"]) <= 8.0
        assert np.isfinite(job.metrics["test/recon"])
