"""A run folder written before the package layout changed (tests/fixtures/pre_layout_run: a
digits VAE trained one debug=fast epoch by commit 4bd2c55) still resumes and explains, typed as a
user would: its checkpoint's stored class path and callback states must mean the same after."""

import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.testing.compose import ROOT
from tests.e2e.test_run_folders import user

FIXTURE = ROOT / "tests" / "fixtures" / "pre_layout_run"


def copied_run(tmp_path: Path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    return run


def test_the_old_checkpoint_resumes_with_its_own_settings(tmp_path):
    run = copied_run(tmp_path)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = user(f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 0 and after["epoch"] == 1
    assert after["model_class"] == before["model_class"]
    assert after["state_dict"].keys() == before["state_dict"].keys()
    assert after["state_dict"]["encoder.blocks.0.conv.weight"].shape == (4, 1, 5, 5)
    assert after["global_step"] > before["global_step"]


def test_the_old_checkpoint_explains(tmp_path):
    run = copied_run(tmp_path)
    overrides = [o for o in OmegaConf.load(run / ".hydra" / "overrides.yaml") if not o.startswith("explain=")]
    done = user("src.explain", *overrides, f"ckpt_path={run}/checkpoints/last.ckpt", "explain=gradcam", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = (tmp_path / "outputs" / "explanations").rglob("metrics.json")
    written = json.loads(metrics.read_text())
    assert "gradcam" in written
    pngs = list((metrics.parent / "explanations" / "gradcam" / "epoch_000").glob("*.png"))
    assert pngs, f"no gradcam panels in {metrics.parent}"
