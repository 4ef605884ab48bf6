import csv

import numpy as np
import pytest
import torch
from PIL import Image

from src.sinks import SinkSet
from src.sinks.disk import DiskSink
from src.sinks.wandb_sink import resolve_wandb_mode, wandb_api_key_configured


def test_disk_sink_writes_png_csv_and_tensors(tmp_path):
    sinks = SinkSet(DiskSink(tmp_path))
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    grey = np.random.default_rng(1).integers(0, 255, (4, 6, 1), dtype=np.uint8)
    sinks.log_images("gradcam", "overlay", [rgb], epoch=3, step=10)
    sinks.log_images("gradcam", "maps", [grey, grey], epoch=3, step=10)
    folder = tmp_path / "explanations" / "gradcam" / "epoch_003"
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "overlay.png")), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "maps_01.png")), grey[..., 0])
    sinks.log_table("gradcam", "ranking", ["dim", "kl"], [[0, 1.5], [3, 0.2]], epoch=3, step=10)
    with open(folder / "ranking.csv") as fh:
        assert list(csv.reader(fh)) == [["dim", "kl"], ["0", "1.5"], ["3", "0.2"]]
    path = sinks.save_tensors("gradcam", "raw", {"maps": torch.ones(2, 3)}, epoch=3)
    assert torch.equal(torch.load(path, weights_only=True)["maps"], torch.ones(2, 3))


def test_sink_rejects_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8 HxWxC"):
        SinkSet(DiskSink(tmp_path)).log_images("cb", "x", [np.zeros((4, 4, 3), np.float32)], 0, 0)


def test_wandb_mode_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_api_key_configured()
    assert resolve_wandb_mode("auto") == "offline"  # no key: never a login prompt
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_api_key_configured()
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"  # the environment wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
