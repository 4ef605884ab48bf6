import csv
import json
from types import SimpleNamespace

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


def test_animation_is_a_looping_gif_and_reaches_sinks_that_show_video(tmp_path):
    seen = []

    class VideoSink:
        def log_images(self, *a, **k): ...

        def log_table(self, *a, **k): ...

        def log_animation(self, callback, name, path, epoch, step, caption=None):
            seen.append((callback, name, path.name, step, caption))

    sinks = SinkSet(DiskSink(tmp_path), [VideoSink()])
    frames = [np.full((6, 8, 3), v, np.uint8) for v in (0, 120, 250)]
    path = sinks.log_animation("latent_sweep", "dim_03", frames, epoch=2, step=7, fps=5, caption="z_3")
    assert path == tmp_path / "explanations" / "latent_sweep" / "epoch_002" / "dim_03.gif"
    gif = Image.open(path)
    assert gif.n_frames == 3 and gif.info["loop"] == 0 and gif.info["duration"] == 200
    read = []
    for i in range(3):
        gif.seek(i)
        read.append(np.asarray(gif.convert("RGB"))[0, 0, 0])
    assert read == [0, 120, 250]
    assert seen == [("latent_sweep", "dim_03", "dim_03.gif", 7, "z_3")]
    with pytest.raises(ValueError, match="one shape"):
        sinks.log_animation("cb", "x", [frames[0], np.zeros((5, 5, 3), np.uint8)], 0, 0)


def test_wandb_sink_uploads_the_disk_pngs_instead_of_encoding_again(tmp_path):
    from src.sinks.wandb_sink import WandbSink

    calls = []

    class Logger:  # Lightning's WandbLogger.log_image signature
        def log_image(self, key, images, step=None, **kwargs):
            calls.append((key, images, step, kwargs))

    sinks = SinkSet(DiskSink(tmp_path), [WandbSink(Logger())])
    grids = [np.random.default_rng(i).integers(0, 255, (9, 11, 3), dtype=np.uint8) for i in range(2)]
    sinks.log_images("latent_sweep", "sweep", grids, epoch=1, step=5, captions=["a", "b"])
    ((key, images, step, kwargs),) = calls
    folder = tmp_path / "explanations" / "latent_sweep" / "epoch_001"
    assert (key, step, kwargs) == ("explain/latent_sweep/sweep", 5, {"caption": ["a", "b"]})
    assert images == [str(folder / "sweep_00.png"), str(folder / "sweep_01.png")]
    for path, grid in zip(images, grids):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_gif_frames_keep_their_colours_within_palette_error(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (2, 40, 60, 3)), axis=2).astype(np.uint8)  # gradients, many colours
    path = SinkSet(DiskSink(tmp_path)).log_animation("cb", "sweep", list(smooth), epoch=0, step=0)
    gif = Image.open(path)
    for i, frame in enumerate(smooth):
        gif.seek(i)
        error = np.abs(np.asarray(gif.convert("RGB")).astype(int) - frame.astype(int))
        assert error.mean() < 3.5 and error.max() < 20


def test_summary_json_in_the_epoch_folder_or_at_the_run_root(tmp_path):
    sinks = SinkSet(DiskSink(tmp_path))
    data = {"error_rate": 0.25, "probes": 8, "offsets": [-2.0, 2.0], "dimensions": [{"dim": 3, "part": "eyes"}]}
    path = sinks.log_summary("morph_path", "summary", data, epoch=2, step=9)
    assert path == tmp_path / "explanations" / "morph_path" / "epoch_002" / "summary.json"
    assert path.read_text() == json.dumps(data, indent=2)
    # run level: one file at the run root, the latest call's
    first = sinks.log_summary("part_attention", "part_attention", {"epoch": 0}, epoch=0, step=5, run_level=True)
    again = sinks.log_summary("part_attention", "part_attention", {"epoch": 1}, epoch=1, step=9, run_level=True)
    assert first == again == tmp_path / "part_attention.json"
    assert json.loads(again.read_text()) == {"epoch": 1}
    assert not (tmp_path / "explanations" / "part_attention").exists()


def test_summary_numbers_reach_the_sinks_that_show_them(tmp_path):
    from src.sinks.tensorboard_sink import TensorBoardSink
    from src.sinks.wandb_sink import WandbSink

    scalars, metrics = [], []
    wandb_logger = SimpleNamespace(log_metrics=lambda values, step: metrics.append((values, step)))
    board = SimpleNamespace(add_scalar=lambda tag, value, global_step: scalars.append((tag, value, global_step)))

    class ImagesOnly:  # a sink without log_summary is skipped
        def log_images(self, *a, **k): ...

        def log_table(self, *a, **k): ...

    sinks = SinkSet(
        DiskSink(tmp_path), [WandbSink(wandb_logger), ImagesOnly(), TensorBoardSink(SimpleNamespace(experiment=board))]
    )
    data = {"error_rate": 0.25, "probes": 8, "converged": True, "scale": "aggregate", "offsets": [-2.0, 2.0]}
    sinks.log_summary("morph_path", "summary", data, epoch=3, step=40)
    assert metrics == [({"morph_path/error_rate": 0.25, "morph_path/probes": 8}, 40)]  # a point of a curve
    assert scalars == [("morph_path/error_rate", 0.25, 40), ("morph_path/probes", 8, 40)]
    assert json.loads((tmp_path / "explanations/morph_path/epoch_003/summary.json").read_text()) == data


def test_summary_numbers_in_an_offline_wandb_run(tmp_path, monkeypatch):
    from src.sinks.wandb_sink import WandbSink, make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = make_wandb_logger("offline", save_dir=str(tmp_path), project="test")
    try:
        sinks = SinkSet(DiskSink(tmp_path), [WandbSink(logger)])
        sinks.log_summary("part_attention", "part_attention", {"epoch": 0, "mean": 0.5}, 0, 3, run_level=True)
        sinks.log_summary("part_attention", "part_attention", {"epoch": 1, "mean": 0.75}, 1, 7, run_level=True)
        summary = logger.experiment.summary
        assert (summary["part_attention/epoch"], summary["part_attention/mean"]) == (1, 0.75)
    finally:
        logger.experiment.finish()
    (history,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")  # what `wandb sync` uploads
    assert b"part_attention/mean" in history.read_bytes()
