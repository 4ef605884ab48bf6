"""Device-correctness without a GPU (tests/device.py): every registered method, the xai entry
points the callbacks use and each model kind's training step run on the fake device with no op
mixing devices and no CPU generator driving a device op, with the same results as on the CPU;
the morphing, path-mask and training loops stay within their host-sync budgets. The harness
itself is shown to catch each kind of fault on planted code."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src import xai
from src.models.classifier import Classifier, build_cnn
from src.models.cvae import CVAE
from src.models.segmentation import SegVAE, UNet
from src.models.vae import VAE
from src.training.run_safety import FiniteGuard
from src.xai import targets
from src.xai.morph.path_mask import PathMaskConfig
from tests.device import FAKE, REAL, OnDevice, Strict, same, to_device


def on_device(fn, *args, **kwargs):
    """fn(*args, **kwargs) with every tensor and module argument on the fake device; returns
    (the result with tensors back on the CPU, the Strict that watched it), after checking it."""
    with Strict() as strict:
        args, kwargs = to_device(args), {k: to_device(v) for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        out = _to_cpu(out)
    strict.check()
    return out, strict


def _to_cpu(obj):
    if isinstance(obj, OnDevice):
        return obj.elem.detach().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{k: _to_cpu(getattr(obj, k)) for k in obj.__dataclass_fields__})
    return obj


def cnn() -> nn.Module:
    torch.manual_seed(0)
    features, head = build_cnn(1, 12, 3, [{"conv": 4, "padding": 1}, {"pool": 2}, {"conv": 6, "padding": 1}], [8])
    return nn.Sequential(features, head).eval()


def small_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(image_size=16, in_channels=1, latent_dim=4, encoder={"channels": [4, 4]}).eval()


FAST = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "mask_perturbation": {"steps": 3},
    "scorecam": {"chunk_size": 2},
}


# -- the harness catches what it must --------------------------------------------------------------


@pytest.mark.skipif(REAL is not None, reason="checks the fake device itself")
def test_the_harness_catches_a_cpu_tensor_a_cpu_generator_and_a_sync_per_step():
    with Strict() as strict:
        x = to_device(torch.rand(3, 4))
        y = x * torch.ones(4)  # planted: a tensor on the default device beside a device tensor
        torch.randn(3, generator=torch.Generator().manual_seed(0), device=x.device)  # planted: CPU generator
        for step in range(5):
            y = y + 1
            if y.sum().item() > 1e9:  # planted: one host sync per step
                break
            strict.step(step + 1, 5)
        y.cpu()
    assert len(strict.mixed) == 1 and "aten.mul.Tensor with CPU tensors (4,)" in strict.mixed[0]
    assert len(strict.cpu_generators) == 1 and "randn" in strict.cpu_generators[0]
    assert strict.syncs_per_step() == 1.0
    assert strict.syncs[-1].startswith("copy to the CPU")
    with pytest.raises(AssertionError, match="mixed devices"):
        strict.check()
    # what CUDA accepts is not a finding: 0-d CPU tensors, copies, factories asked for the device
    with Strict() as clean:
        x = to_device(torch.rand(3, 4))
        (x * torch.tensor(2.0) + torch.zeros(4, device=x.device)).to("cpu")
        torch.rand(3, generator=torch.Generator().manual_seed(0)).to(x.device)
    clean.check()
    assert clean.syncs == [clean.syncs[0]] and clean.syncs[0].startswith("copy to the CPU")


@pytest.mark.skipif(REAL is not None, reason="checks the fake device itself")
def test_results_on_the_fake_device_are_the_cpu_results():
    model, x = cnn(), torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    out, strict = on_device(lambda m, v: m(v).cpu(), model, x)
    assert type(out) is torch.Tensor and torch.equal(out, model(x))
    assert strict.syncs == [strict.syncs[0]] and strict.syncs[0].startswith("copy to the CPU")


# -- xai on the device ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(xai.METHODS))
def test_every_registered_method_runs_on_the_device_as_on_the_cpu(name):
    model, x = cnn(), torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    target = targets.classes(torch.tensor([[0, 2], [1, 0], [2, 1]]))
    cpu = xai.explain(name, model, x, target, **FAST.get(name, {}))
    dev, _ = on_device(lambda m, v: xai.explain(name, m, v, target, **FAST.get(name, {})).maps, model, x)
    same(dev, cpu.maps)


@pytest.mark.parametrize(
    "name",
    [
        "gradcam",
        "gradcampp",
        "hirescam",
        "layercam",
        "xgradcam",
        "scorecam",
        "saliency",
        "smoothgrad",
        "integrated_gradients",
        "occlusion",
        "input_x_gradient",
    ],
)
def test_methods_explain_every_latent_dimension_on_the_device(name):
    vae, x = small_vae(), torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def run(m, v):
        return xai.explain(name, m, v, targets.select(), forward=targets.latent_mean(m), **FAST.get(name, {})).maps

    cpu = run(vae, x)
    dev, _ = on_device(run, vae, x)
    same(dev, cpu)


def test_ground_truth_sweeps_and_scores_on_the_device():
    """(decoder_action is torch.func.jvp under vmap, which does not run on Python tensor
    subclasses: the harness cannot hold it.)"""
    from src.xai.latent.sweeps import attention_mass, latent_sweep
    from src.xai.scores.ground_truth import region_scores

    vae, x = small_vae(), torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[:, 4:9, 3:12] = True

    def run(m, v, r):
        cam = xai.explain("gradcam", m, v, targets.select(), forward=targets.latent_mean(m))
        scores = region_scores(cam.maps[:, 0], r)
        sweep = latent_sweep(m, v, targets.select([0, 2]), offsets=(-1.0, 1.0))
        return cam.maps, scores, sweep.images, attention_mass(cam.maps)

    dev, _ = on_device(run, vae, x, region)
    cpu = run(vae, x, region)
    same(dev[0], cpu[0])
    for key in cpu[1]:
        same(dev[1][key], cpu[1][key], msg=key)
    same(dev[2], cpu[2])
    same(dev[3], cpu[3])


# -- loops and their host syncs ----------------------------------------------------------------------


def _morph_inputs():
    torch.manual_seed(0)
    vae = small_vae()
    clf = Classifier(num_classes=3, image_size=16, in_channels=1, layers=[{"conv": 4}]).eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    return vae, clf, x


def test_semantic_morph_runs_on_the_device_with_at_most_one_sync_per_step():
    from src.xai.morph.semantic import semantic_morph

    vae, clf, x = _morph_inputs()
    with torch.no_grad():
        start, o = vae.encode(x)[0], clf(vae.decode(vae.encode(x)[0])).argsort(1)[:, -2]
        a = clf(vae.decode(start)).argmax(1)
    norms = torch.full((3,), 1.5)
    args = dict(alpha_lk=1.0, lr=0.05, max_steps=30, entropy_tol=0.0)  # no sample stops: every step runs
    cpu = semantic_morph(vae.decode, clf, start, a, o, norms, **args)
    with Strict() as strict:
        dv, dc = to_device(vae), to_device(clf)
        out = semantic_morph(dv.decode, dc, *to_device((start, a, o, norms)), progress=strict.step, **args)
        codes = out.codes.cpu()
    strict.check()
    same(codes, cpu.codes)
    assert strict.syncs_per_step() <= 1, strict.syncs[:12]


def test_path_mask_runs_on_the_device_with_at_most_one_sync_per_step():
    from src.xai.morph.path_mask import path_mask

    _, clf, _ = _morph_inputs()
    path = torch.rand(6, 2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    o = torch.tensor([1, 2])
    for options in (
        {},
        {"num_blends": 2, "tol": 1e-9, "proposal": "gain", "refresh": 4},
        {"num_blends": 2, "tol": 1e-9, "proposal": "uniform"},
    ):
        config = PathMaskConfig(steps=12, **options)
        cpu = path_mask(clf, path, o, config)
        with Strict() as strict:
            out = path_mask(to_device(clf), *to_device((path, o)), config, progress=strict.step)
            mask = out.mask.cpu()
        strict.check()
        same(mask, cpu.mask, msg=str(options))
        assert strict.syncs_per_step() <= 1, (options, strict.syncs[:12])


def test_morph_path_runs_on_the_device():
    from src.xai.morph.pipeline import MorphConfig, morph_path

    vae, clf, x = _morph_inputs()
    args = dict(
        norm_means=torch.full((3,), 1.5),
        morph=MorphConfig(max_steps=6, num_start_samples=3, path_steps=5),
        num_masks=2,
        mask=PathMaskConfig(steps=4, num_blends=2, tol=1e-3),
    )
    cpu = morph_path(clf, x, vae=vae, **args)
    with Strict() as strict:
        out = morph_path(to_device(clf), to_device(x), vae=to_device(vae), **to_device(args))
        images, mask = out.images.cpu(), out.mask.mask.cpu()
    strict.check()
    same(images, cpu.images), same(mask, cpu.mask.mask)


# -- training steps of every model kind ----------------------------------------------------------------


MODELS = {
    "vae": lambda: VAE(
        image_size=8,
        in_channels=1,
        latent_dim=2,
        encoder={"channels": [4]},
        loss={"tc_weight": 0.5, "ad_weight": 0.5, "ad_dims": 2},
    ),
    "cvae": lambda: CVAE(condition_dim=3, image_size=8, in_channels=1, latent_dim=2, encoder={"channels": [4]}),
    "seg_vae": lambda: SegVAE(image_size=8, latent_dim=2, encoder={"channels": [4]}),
    "unet": lambda: UNet(in_channels=3, num_classes=1, encoder_depth=3, image_size=8),
    "classifier": lambda: Classifier(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}]),
}


def _batch(name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    channels = 3 if name in ("seg_vae", "unet") else 1
    batch = {"image": torch.rand(4, channels, 8, 8, generator=g), "label": torch.tensor([0, 1, 2, 1])}
    if name == "cvae":
        batch["attributes"] = torch.randint(0, 2, (4, 3), generator=g).float()
    if name in ("seg_vae", "unet"):
        batch["mask"] = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    return batch


@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_step_of_every_model_kind_runs_on_the_device_as_on_the_cpu(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    twin = MODELS[name]().train()
    twin.load_state_dict(model.state_dict())

    trainer = SimpleNamespace(global_step=0, world_size=1)

    def step(m, batch):
        guard = FiniteGuard(check_every=1000)
        torch.manual_seed(1)  # the same sampling noise on both
        loss = m.training_step(batch, 0)
        guard.on_before_backward(trainer, m, loss)  # its test stays on the device
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}, guard

    cpu_loss, cpu_grads, _ = step(twin, _batch(name))
    with Strict() as strict:
        dev = to_device(model)
        loss, grads, guard = step(dev, to_device(_batch(name)))
        syncs = list(strict.syncs)
        guard.check(trainer)  # finite: no error (its one host read is here, not in the step)
        loss, grads = loss.cpu(), {n: g.cpu() for n, g in grads.items()}
    strict.check()
    same(loss, cpu_loss)
    assert grads.keys() == cpu_grads.keys()
    for n in grads:
        same(grads[n], cpu_grads[n], msg=n)
    assert not syncs, syncs[:8]  # none in the model's own step nor in FiniteGuard's


def test_fake_device_is_not_the_cpu():
    assert FAKE.type != "cpu"


# -- the other xai entry points the callbacks use --------------------------------------------------


def _run_both(run, *args):
    """run(*args) on the CPU and on the device; (cpu result, device result on the CPU)."""
    torch.manual_seed(0)
    cpu = run(*args)
    torch.manual_seed(0)
    dev, _ = on_device(run, *args)
    return cpu, dev


def test_faithfulness_saliency_segmentation_and_feature_visualisation_on_the_device():
    from src.xai import faithfulness
    from src.xai.methods.featviz import (
        activation_maximisation,
        class_objectives,
        deconv_projections,
        nearest_neighbours,
        penultimate,
        top_patches,
    )
    from src.xai.scores.saliency_segmentation import saliency_segmentation

    model, x = cnn(), torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    cls = targets.classes(torch.tensor([0, 2, 1]))

    def run(m, v):
        sal = xai.explain("saliency", m, v, cls).maps[:, 0]
        scores = faithfulness(m, v, sal, cls, 4)
        seg = saliency_segmentation(m, v, cls, segmenter="threshold").masks
        grown = activation_maximisation(
            class_objectives(m), (3, 1, 12, 12), steps=3, jitter=1, scale=0.05, blur_every=2, device=v.device
        )
        crops, values, where = top_patches(m, "0.0.conv", v, channel=1, k=2)
        projected, _ = deconv_projections(m, "0.0.conv", v, 1, where)
        embedding = penultimate(m, v)
        return (
            torch.tensor([scores["aopc"], scores["insertion_auc"]]),
            seg,
            grown,
            crops,
            values,
            projected,
            nearest_neighbours(embedding, embedding, k=2),
        )

    cpu, dev = _run_both(run, model, x)
    for i, (d, c) in enumerate(zip(dev, cpu, strict=True)):
        same(d, c, msg=str(i))


def test_sweeps_part_attention_and_anomaly_scores_on_the_device():
    from src.base.gaussian import kl_per_dimension
    from src.xai.latent.part_attention import part_attention
    from src.xai.latent.sweeps import attribute_sweep
    from src.xai.scores.anomaly import score_anomalies

    vae, x = small_vae(), torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(8))
    parts = torch.zeros(4, 16, 16, dtype=torch.long)  # class maps: 0 top half, 1 bottom half
    parts[:, 8:] = 1
    cvae = CVAE(condition_dim=3, image_size=16, in_channels=1, latent_dim=2, encoder={"channels": [4]}).eval()
    c = (torch.rand(4, 3, generator=torch.Generator().manual_seed(9)) > 0.5).float()

    def run(m, v, p, cm, cc):
        attention = part_attention(m, v, parts=p, part_names=["top", "bottom"], num_dims=2)
        anomalous = torch.tensor([False, True, False, True])
        scores = score_anomalies(
            m, [v[:2], v[2:]], v, anomalous, p == 1, maps=["attention", "deviation", "recon_error"], thresholds=10
        )
        flat = [
            s
            for table in scores.values()
            if isinstance(table, dict)
            for row in table.values()
            if isinstance(row, dict)
            for s in row.values()
            if isinstance(s, float)
        ]
        assert len(flat) >= 6  # pixel and image scores of the three maps
        return (
            kl_per_dimension(*m.encode(v)),
            attribute_sweep(cm, v, targets.select([0, 2]), c=cc, values=(0.0, 1.0)),
            attention.kl,
            torch.tensor(flat),
        )

    cpu, dev = _run_both(run, vae, x, parts, cvae, c)
    for i, (d, c_) in enumerate(zip(dev, cpu, strict=True)):
        same(d, c_, msg=str(i))
