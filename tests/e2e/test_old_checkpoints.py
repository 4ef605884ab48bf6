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


def test_a_saved_config_naming_moved_classes_loads_them_at_their_new_place(tmp_path):
    """A synthfaces run written before the move names the datamodule, the DDP strategy and the
    part-attention callback at their old paths in .hydra/config.yaml."""
    import hydra

    from src.config.resume import MOVED_TARGETS, load_run_config

    run = copied_run(tmp_path)
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    saved.data._target_ = "src.data.synthfaces.SynthFacesDataModule"
    saved.trainer.strategy = {"_target_": "src.distributed.DDPStrategy"}
    saved.explain = {"part_attention": {"_target_": "src.callbacks.gradcam.PartAttention"}}
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    cfg = load_run_config(run)
    targets = [cfg.data._target_, cfg.trainer.strategy._target_, cfg.explain.part_attention._target_]
    assert targets == list(MOVED_TARGETS.values())
    for target in targets:
        hydra.utils.get_class(target)
    assert cfg.model._target_ == "src.models.vae.VAE"  # the rest as saved
