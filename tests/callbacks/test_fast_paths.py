"""GPU fast paths (channels_last, torch.compile, bf16-mixed) as switches, and explanations that
give the same maps with them on as with them off."""

import copy
import os

import hydra
import pytest
import torch

from src.base.errors import ConfigError
from src.explain import explain
from src.models.classifier import Classifier
from src.testing.compose import compose_train_cfg
from src.testing.tolerance import KINKS, assert_close_scaled, map_budget
from src.train import train
from src.training.fast_paths import FastPaths, eager
from src.xai import explain as xai_explain
from src.xai import targets
from src.xai.methods.gradcam import gradcam

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
    assert cfg.fast.tf32 is on and cfg.trainer.benchmark is on  # TF32 and cuDNN autotuning while training
    ranks = {"cpu": 1, "gpu": 1, "ddp": cfg.trainer.devices}[trainer]
    cores = len(os.sched_getaffinity(0))
    want = max(1, min(8, cores // (ranks if isinstance(ranks, int) and ranks > 0 else 1) - 1)) if on else 0
    if trainer != "ddp" or isinstance(ranks, int):
        assert cfg.data.num_workers == cfg.fast.num_workers == want


@pytest.mark.parametrize(
    "devices,cores,want",
    [(1, 16, 8), (2, 16, 7), (8, 16, 1), (4, 64, 8), ([0, 1], 16, 7), ("0,1,2,3", 16, 3), (1, 2, 1)],
)
def test_loader_workers_share_the_nodes_cores_among_its_ranks(devices, cores, want, monkeypatch):
    from src.config.resolvers import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert loader_workers(True, devices) == want and loader_workers(False, devices) == 0


def assert_same_map(
    key: str, fast: torch.Tensor, plain: torch.Tensor, model: torch.nn.Module, options: dict, x: torch.Tensor
) -> None:
    """One saved tensor of a render with a fast path on (`fast`) against the plain render's."""
    assert fast.dtype == plain.dtype, key
    if key in ("image", "classes") or not plain.is_floating_point():
        assert torch.equal(fast, plain), key  # the same probes, the same top classes
        return
    terms, scale = map_budget(key, model, options, x)
    assert_close_scaled(fast, plain, terms=terms, scale=scale, outliers=KINKS, msg=key)


def assert_same_maps(fast: dict, plain: dict, model: torch.nn.Module, options: dict | None = None) -> None:
    """Same keys; inputs and class indices exact; every float map within its rounding budget."""
    assert fast.keys() == plain.keys()
    for key in fast:
        assert_same_map(key, fast[key], plain[key], model, options or {}, plain["image"])


@pytest.mark.parametrize(
    "experiment,explain_group,saved,extra",
    [
        pytest.param(
            "fashion_classifier",
            "[gradcam,attribution]",
            ["gradcam", "attribution"],
            ["explain.attribution.num_probes=3", "explain.attribution.options.mask_perturbation.steps=30"],
            marks=pytest.mark.slow,
        ),  # all 13 methods compiled: ~1 min quiet; the map check runs below
        ("fashion_vae", "default", ["gradcam"], []),
    ],
)
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
    cfg = compose_train_cfg(tmp_path / "eager", [f"experiment={experiment}", *data, *tensors, f"ckpt_path={ckpt}"])
    explain(cfg)
    model = hydra.utils.get_class(cfg.model._target_).load_from_checkpoint(ckpt, map_location="cpu").eval()
    options = cfg.explain.get("attribution", {}).get("options", {})
    for name in saved:
        fast = torch.load(tmp_path / "fast" / "explanations" / name / "epoch_000" / "maps.pt", weights_only=True)
        plain = torch.load(tmp_path / "eager" / "explanations" / name / "epoch_000" / "maps.pt", weights_only=True)
        assert_same_maps(fast, plain, model, options)


CHEAP = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "mask_perturbation": {"steps": 3},
    "occlusion": {"patch": 8, "stride": 8},
}
METHODS = (
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    "lrp",
    "gradcam",
    "mask_perturbation",
    "excitation_backprop",
)


def render(model: torch.nn.Module, x: torch.Tensor, top: torch.Tensor, methods=METHODS) -> dict[str, torch.Tensor]:
    """The maps the gradcam and attribution callbacks save (a cheap setting, the predicted class)."""
    maps = {"image": x, "classes": top, "raw": gradcam(model, x, targets.per_sample(top)).raw}
    for method in methods:
        result = xai_explain(method, model, x, targets.classes(top[:, 0]), **CHEAP.get(method, {}))
        maps[f"{method}_top1"] = result.maps[:, 0]
    return {key: value.float() if value.is_floating_point() else value for key, value in maps.items()}


def test_the_map_comparison_rejects_a_fast_path_that_changes_the_maps():
    """assert_same_map passes a real fast path (channels_last weights) and fails, map by map, on
    renders under bf16 autocast or with one conv's weights off by 1e-3 (relative)."""
    model = Classifier(
        num_classes=4,
        image_size=16,
        in_channels=1,
        layers=[{"conv": 8, "padding": 1}, {"conv": 8, "stride": 2}],
        dense=[16],
    ).eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        top = model(x).topk(2, dim=1).indices
    plain = render(model, x, top)
    assert_same_maps(render(copy.deepcopy(model).to(memory_format=torch.channels_last), x, top), plain, model, CHEAP)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = render(model, x, top)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():  # each weight of one conv 1e-3 (relative) up or down
        w = perturbed.net.features[1].conv.weight
        w.mul_(1 + 1e-3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(4)).sign())
    for key in plain.keys() - {"image", "classes"}:
        with pytest.raises(AssertionError, match=key):
            assert_same_map(key, bf16[key], plain[key], model, CHEAP, x)
    # the gradient maps move by ~1e-3 of their scale; occlusion's differences of logits and the
    # mask's sign-like Adam steps move by about their float32 budget or less: left to bf16 above
    perturbed = render(perturbed, x, top, [m for m in METHODS if m not in ("occlusion", "mask_perturbation")])
    for key in perturbed.keys() - {"image", "classes"}:
        with pytest.raises(AssertionError, match=key):
            assert_same_map(key, perturbed[key], plain[key], model, CHEAP, x)


def test_compile_refuses_the_attention_disentanglement_loss():
    """The AD loss differentiates a layer inside the encoder, which torch.compile hides."""
    from src.models.vae import VAE

    model = VAE(image_size=16, in_channels=1, latent_dim=4, encoder={"channels": [8, 8]}, loss={"ad_weight": 1.0})
    with pytest.raises(ConfigError) as err:
        FastPaths(compile=True).setup(None, model, "fit")
    assert err.value.key == "fast.compile" and "model.loss.ad_weight" in str(err.value)
