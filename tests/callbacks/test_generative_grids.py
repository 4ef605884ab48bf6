import numpy as np
import torch
from PIL import Image

from src.train import train


def _weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def test_callbacks_write_grids_and_do_not_change_training(train_cfg, tmp_path):
    cfg_with = train_cfg("test=false", "trainer.max_epochs=2")
    run_with = tmp_path / "run"
    train(cfg_with)
    weights_with = _weights(run_with)
    recon = np.asarray(Image.open(run_with / "explanations/reconstructions/epoch_000/grid.png"))
    samples = np.asarray(Image.open(run_with / "explanations/samples/epoch_000/grid.png"))
    (run_with).rename(tmp_path / "run_with")

    cfg_without = train_cfg("test=false", "trainer.max_epochs=2", "explain=none")
    train(cfg_without)
    weights_without = _weights(tmp_path / "run")
    assert not (tmp_path / "run" / "explanations").exists()

    # same weights with and without the callbacks (they use their own RNG and eval mode)
    assert weights_with.keys() == weights_without.keys()
    for key in weights_with:
        assert torch.equal(weights_with[key], weights_without[key]), key

    # 16 probes, 8 per row, inputs over reconstructions -> 4 rows of 28px tiles with 2px padding
    assert recon.shape == (4 * 30 + 2, 8 * 30 + 2)
    assert samples.shape == (8 * 30 + 2, 8 * 30 + 2)
    # the first row holds the probe images themselves
    from src.callbacks.generative_grids import ReconstructionGrid
    from src.data.mnist_like import FashionMNISTDataModule

    dm = FashionMNISTDataModule(
        root=cfg_with.data.root,
        search_system=False,
        download=False,
        val_size=cfg_with.data.val_size,
        seed=cfg_with.seed,
    )
    dm.setup("fit")

    class _Trainer:
        datamodule = dm

    probes = ReconstructionGrid(seed=cfg_with.seed).probes(_Trainer())
    first = (probes["image"][0, 0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(recon[2:30, 2:30], first)
