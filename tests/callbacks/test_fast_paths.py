"""GPU fast paths (channels_last, torch.compile, bf16-mixed) as switches, and explanations that
give the same maps with them on as with them off."""

import pytest
import torch

from src.callbacks.fast_paths import FastPaths, eager
from src.errors import ConfigError
from src.explain import explain
from src.models.classifier import Classifier
from src.train import train
from tests.conftest import compose_train_cfg

DATA = ["data.search_system=false", "data.download=false", "data.val_size=40", "debug=fast", "logger=csv"]
FAST_ON = ["fast.channels_last=true", "+fast.compile={backend:aot_eager}", "trainer.precision=bf16-mixed"]


def compiled(module):
    return [name for name, m in module.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


def test_setup_compiles_each_network_and_eager_undoes_it_for_the_block():
    model = Classifier(num_classes=3, image_size=28, in_channels=1, layers=[{"conv": 8}, {"conv": 8}])
    FastPaths(channels_last=True, compile={"backend": "eager"}).setup(None, model, "fit")
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    assert children and compiled(model) == children
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 8 input channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with eager(model):
            assert compiled(model) == []
            assert not torch.is_autocast_enabled("cpu")
            assert model(torch.rand(2, 1, 28, 28)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    assert compiled(model) == children


def test_batches_go_channels_last_and_other_fields_stay():
    batch = {"image": torch.rand(4, 3, 8, 8), "mask": torch.zeros(4, 8, 8, dtype=torch.long), "attrs": torch.rand(4, 5)}
    FastPaths(channels_last=True).on_train_batch_start(None, None, batch, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and not batch["image"].is_contiguous()
    assert batch["mask"].is_contiguous() and batch["attrs"].is_contiguous()


def test_compile_option_must_be_a_switch_or_options():
    with pytest.raises(ConfigError, match="fast.compile"):
        FastPaths(compile="yes")


@pytest.mark.parametrize("trainer,on", [("cpu", False), ("gpu", True), ("ddp", True)])
def test_fast_paths_are_on_by_default_on_a_gpu_only(trainer, on, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"trainer={trainer}"])
    assert cfg.fast.channels_last is on and cfg.fast.pin_memory is on and cfg.data.pin_memory is on
    assert cfg.data.persistent_workers is on and cfg.fast.compile is False
    assert cfg.trainer.precision == ("bf16-mixed" if on else "32-true")


@pytest.mark.parametrize(
    "experiment,explain_group,saved,extra",
    [("fashion_classifier", "[gradcam,attribution]", ["gradcam", "attribution"],
      ["explain.attribution.num_probes=3", "explain.attribution.options.mask_perturbation.steps=30"]),
     ("fashion_vae", "default", ["gradcam"], [])],
)  # fmt: skip
def test_maps_are_the_same_with_fast_paths_on_as_off(
    experiment, explain_group, saved, extra, fashion_fixture, tmp_path
):
    """Train with channels_last + torch.compile + bf16-mixed, saving the last epoch's maps; then
    render the same checkpoint with every fast path off (src.explain): same maps."""
    data = [f"data.root={fashion_fixture}", *DATA, f"explain={explain_group}", *extra]
    tensors = [f"explain.{name}.save_tensors=true" for name in saved]
    train(compose_train_cfg(tmp_path / "fast", [f"experiment={experiment}", *data, *tensors, *FAST_ON, "test=false"]))
    ckpt = tmp_path / "fast" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    explain(compose_train_cfg(tmp_path / "eager", [f"experiment={experiment}", *data, *tensors, f"ckpt_path={ckpt}"]))
    for name in saved:
        fast = torch.load(tmp_path / "fast" / "explanations" / name / "epoch_000" / "maps.pt", weights_only=True)
        plain = torch.load(tmp_path / "eager" / "explanations" / name / "epoch_000" / "maps.pt", weights_only=True)
        assert fast.keys() == plain.keys()
        for key in fast:
            assert fast[key].dtype == plain[key].dtype
            torch.testing.assert_close(fast[key], plain[key], rtol=1e-3, atol=1e-4 * float(plain[key].abs().max()))
