"""Out-of-range settings and malformed data stop with one message naming the key or path."""

import pickle
from pathlib import Path

import pytest
import torch

from src.base.errors import ConfigError, DataError, TrainingFault
from src.training.run_safety import FiniteGuard


@pytest.mark.parametrize(
    "key,value", [("beta", -1.0), ("kl_warmup_steps", -5), ("tc_weight", -0.1), ("recon_weight", 0.0)]
)
def test_out_of_range_vae_loss_weights_are_refused(key, value):
    from src.models.vae import VAE

    with pytest.raises(ConfigError, match=rf"model.loss.{key}' = {value}: must be"):
        VAE(loss={key: value})


class Stub:
    current_epoch, global_step, checkpoint_callbacks = 0, 7, []


def test_a_diverging_loss_stops_although_it_stays_finite():
    guard = FiniteGuard(diverged=1e6, check_every=1000)
    guard.on_before_backward(Stub(), None, torch.tensor(2.0))
    guard.on_before_backward(Stub(), None, torch.tensor(2.0e6))  # 1e6 x: still allowed
    guard.check(Stub())
    guard.on_before_backward(Stub(), None, torch.tensor(2.5e6))  # recorded on the device, no raise yet
    guard.on_before_backward(Stub(), None, torch.tensor(float("nan")))  # the first bad step is kept
    want = r"training diverged at epoch 0, global step 7: loss = 2.5e\+06, over 1e\+06 times the first step's 2;"
    with pytest.raises(TrainingFault, match=want):
        guard.check(Stub())


def test_a_classifier_with_a_runaway_learning_rate_stops_with_a_message(train_cfg):
    from src.train import train

    cfg = train_cfg("model=classifier", "model.optimizer.lr=1e6", "trainer.max_epochs=3", "explain=none", "test=false")
    with pytest.raises(TrainingFault, match=r"training (diverged|.*non-finite).*Lower model.optimizer.lr"):
        train(cfg)


def test_batch_norm_with_batches_of_one_is_refused_before_training(train_cfg, tmp_path):
    from src.train import train

    with pytest.raises(ConfigError, match=r"data.batch_size' = 1: this model has batch norm layers"):
        train(train_cfg("data.batch_size=1", "explain=none"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_cifar_pickle_that_is_not_a_batch_names_the_file(tmp_path):
    from src.data.cifar10 import read_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=rf"{path}: not a CIFAR-10 python batch \(it holds a list"):
        read_batch(path)


def test_faces_without_part_masks_are_counted_or_refused(tmp_path, caplog):
    import shutil

    from src.data.celebamask_hq import MASK_DIR, check_masks
    from src.testing.formats import write_celebamask_hq

    write_celebamask_hq(tmp_path, [0, 1, 2, 3])
    for part in (tmp_path / MASK_DIR / "0").glob("00002_*.png"):
        part.unlink()
    with caplog.at_level("WARNING"):
        assert check_masks(tmp_path, [0, 1, 2, 3]) == 1
    assert "1 of 4 images have no part mask and train as all background (e.g. 2)" in caplog.text
    shutil.rmtree(tmp_path / MASK_DIR)
    with pytest.raises(DataError, match=r"CelebAMask-HQ-mask-anno: no part mask for any of the 4 images"):
        check_masks(tmp_path, [0, 1, 2, 3])


def test_deterministic_on_cuda_refuses_the_explanations_without_a_deterministic_kernel_before_training(train_cfg):
    from src.train import train

    cfg = train_cfg(
        "experiment=fashion_classifier",
        "trainer.accelerator=gpu",
        "trainer.deterministic=true",
        "explain=attribution",
        "explain.attribution.methods=[saliency,mask_perturbation]",
    )
    want = (
        r"config key 'trainer.deterministic' = True: on CUDA these explanations have no deterministic kernel: "
        r"explain.attribution.methods \(mask_perturbation\): the backward of its masks' bilinear upsampling. "
        r"Remove them, or set trainer.deterministic=false"
    )
    with pytest.raises(ConfigError, match=want):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))
