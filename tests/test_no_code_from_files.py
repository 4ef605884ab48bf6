"""No checkpoint can run code when it is read: every load in src/, scripts/ and bench/ goes
through weights_only=True (or the project's checked loader), and a crafted checkpoint whose
unpickling would create a file is refused by every script that takes a checkpoint."""

import builtins
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.base.errors import ConfigError
from src.testing.compose import ROOT


class Planted:
    """Unpickling this opens (creates) `path`: code run by reading a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def test_every_load_reads_tensors_and_plain_values_only():
    unsafe = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("scripts/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            calls = re.findall(r"(torch\.load\(|\.load_from_checkpoint\()(.*)", line)
            if any("weights_only=True" not in rest for _, rest in calls) or "weights_only=False" in line:
                unsafe.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    # the checked loader itself: it reads the bytes with torch.load(weights_only=True) first
    assert unsafe == [], "\n".join(unsafe)


SCRIPTS = {  # script -> its command line, CKPT standing for the crafted checkpoint, RUN for a run folder holding it
    "scripts/attribution_results.py": ["CKPT"],
    "scripts/cvae_attribute_control.py": ["CKPT", "CKPT"],
    "scripts/latent_ground_truth.py": ["CKPT"],
    "scripts/localization_results.py": ["CKPT"],
    "scripts/saliency_segmentation_results.py": ["CKPT"],
    "scripts/part_attention.py": ["CKPT"],
    "scripts/anomaly_results.py": ["RUN"],
    "scripts/disentanglement_results.py": ["RUN"],
    "bench/morph_speed.py": ["CKPT", "CKPT"],
    "bench/path_mask_fast.py": ["CKPT", "CKPT"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_crafted_checkpoint_runs_no_code_in_any_script(script, tmp_path, monkeypatch):
    planted = tmp_path / "planted-by-the-checkpoint"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"paths": {}}), run / ".hydra" / "config.yaml")
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": Planted(planted)}, ckpt)
    argv = [str({"CKPT": ckpt, "RUN": run}.get(a, a)) for a in SCRIPTS[script]]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.syspath_prepend(str(ROOT / Path(script).parent))
    with pytest.raises(ConfigError, match="more than tensors and plain values"), torch.enable_grad():
        runpy.run_path(str(ROOT / script), run_name="__main__")  # (a script may switch gradients off)
    assert not planted.exists()
    torch.load(ckpt, weights_only=False)  # the same file, read unsafely, does run the code
    assert planted.exists()
