"""What every render guarantees: it says once what it cannot do and never swallows what is not its
own (a method the architecture does not support is left out with one warning naming the config
key; out of memory, device and collective errors leave the callback whatever `raise_errors`
says), and it computes in full float32 (TF32 off inside, the user's setting restored after)."""

import contextlib
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from src.callbacks.attribution import AttributionComparison
from src.callbacks.base import ImageCallback
from src.models.classifier import Classifier


class Recorder:
    def __init__(self) -> None:
        self.images, self.tables = [], []

    def log_images(self, callback, name, images, epoch, step, captions=None) -> None:
        self.images.append((name, epoch))

    def log_table(self, callback, name, columns, rows, epoch, step) -> None:
        self.tables.append((name, epoch, rows))


def trainer(epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=epoch,
        global_step=epoch,
        max_epochs=5,
        sanity_checking=False,
        is_global_zero=True,
        progress_bar_callback=None,
    )


def test_a_method_the_model_cannot_run_is_said_once_with_its_config_key_and_left_out(caplog):
    torch.manual_seed(0)
    model = Classifier(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}]).eval()
    model.net.features.append(nn.Identity())  # LRP cannot hook a layer that returns its input
    callback = AttributionComparison(methods=["saliency", "lrp"], segmentation=None, steps=2)
    callback._sinks = sinks = Recorder()
    x = {"image": torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))}
    with caplog.at_level(logging.WARNING):
        for epoch in (0, 1):
            callback.render(trainer(epoch), model, x)
    said = [r.getMessage() for r in caplog.records if "lrp" in r.getMessage()]
    assert len(said) == 1, said
    assert "attribution: lrp cannot explain this model, left out from now on: LRP: remove nn.Identity" in said[0]
    assert said[0].endswith("Remove it from explain.attribution.methods")
    assert [[row[0] for row in rows] for _, _, rows in sinks.tables] == [["saliency", "random"]] * 2


class Fails(ImageCallback):
    def __init__(self, error: BaseException) -> None:
        super().__init__("fails")
        self.error = error

    def probes(self, trainer):
        return {"image": torch.zeros(1, 1, 8, 8)}

    def render(self, trainer, pl_module, probes):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        dist.DistBackendError("NCCL error"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("[gloo] Timed out waiting 60000ms for recv operation to complete"),
    ],
    ids=["oom", "collective", "cuda", "gloo-timeout"],
)
def test_out_of_memory_device_and_collective_errors_leave_the_render(error):
    model = Classifier(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}])
    with pytest.raises(type(error)):
        Fails(error).on_validation_epoch_end(trainer(), model)
    assert model.training  # put back as it was


def test_a_render_bug_is_logged_and_training_goes_on(caplog):
    model = Classifier(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}])
    with caplog.at_level(logging.ERROR):
        Fails(ZeroDivisionError("a bug in the render")).on_validation_epoch_end(trainer(), model)
    assert "explanation callback 'fails' failed at epoch 0; training continues" in caplog.text


class Records(ImageCallback):
    def probes(self, trainer):
        return {"image": torch.zeros(1, 1, 8, 8)}

    def render(self, trainer, pl_module, probes):
        self.seen = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


@pytest.mark.parametrize("raises", [False, True])
def test_a_render_runs_without_tf32_and_puts_the_users_setting_back(raises):
    from src.training.fast_paths import set_tf32

    model = Classifier(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}])
    callback = Records("records", raise_errors=True)
    if raises:  # also when the render fails
        callback.render = lambda *a: (Records.render(callback, *a), 1 / 0)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)  # fast.tf32: training in TF32
        with pytest.raises(ZeroDivisionError) if raises else contextlib.nullcontext():
            callback.on_validation_epoch_end(trainer(), model)
        assert callback.seen == (False, False)  # full float32 inside the render
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fast_tf32_sets_training_precision():
    from omegaconf import OmegaConf

    from src.train import fast_paths

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for on in (True, False):
            assert fast_paths(OmegaConf.create({"tf32": on})) == []  # no other fast path asked for
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (on, on)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
