"""Config groups compose without an experiment: every model group with every data group either
builds (the callbacks of its model kind, a task name from data and model) or is refused with a
ConfigError naming the keys at fault; one debug=fast step per model group trains for real."""

import json

import hydra
import pytest
import torch

from src.base.errors import ConfigError
from src.config.checks import check_model_fits_data
from src.testing.compose import CONF_DIR, compose_train_cfg
from src.train import instantiate_callbacks, train

DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
LABELLED = {"cifar10", "digits", "fashion_mnist", "mnist", "notmnist"}
MASKED = {"celebamask_hq", "synthfaces"}
SHORT = {"fashion_mnist": "fashion", "celebamask_hq": "celebamask"}

CALLBACKS = {
    "vae": {"gradcam", "latent_sweep", "reconstructions", "samples"},
    "cvae": {"gradcam", "latent_sweep", "reconstructions", "samples", "attributes"},
    "classifier": {"gradcam", "attribution", "featviz", "confusion"},
    "seg_vae": {"seg_gradcam", "segmentation"},
    "unet": {"seg_gradcam", "segmentation"},
}
# (model, data) pairs that cannot train as composed, and the key the refusal must name
REFUSED = (
    {("classifier", d): "model.task" for d in ("celeba", "celebamask_hq", "synthfaces")}
    | {(m, d): "config key 'model'" for m in ("seg_vae", "unet") for d in set(DATA) - MASKED}
    | {("classifier", "dsprites"): "model.num_classes=3"}  # 3 shapes, the model group's default is 10
)


def test_the_grid_covers_every_group():
    assert set(MODELS) == set(CALLBACKS) and {"digits", "synthfaces", "fashion_mnist"} <= set(DATA)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_model_and_data_groups_compose_or_are_refused_by_key(model, data, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"model={model}", f"data={data}"])
    assert cfg.task_name == f"{SHORT.get(data, data)}_{model}"
    assert list(cfg.tags) == [data, model]
    assert set(cfg.explain) == CALLBACKS[model]
    if (model, data) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[model, data]):
            check_model_fits_data(cfg)
        return
    check_model_fits_data(cfg)
    net = hydra.utils.instantiate(cfg.model, _convert_="all")
    x = torch.rand(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    if model == "cvae":
        fields = hydra.utils.get_class(cfg.data._target_).batch_fields
        assert cfg.model.condition == ("attributes" if "attributes" in fields else "label")
        mu, _ = net.encode(x, torch.zeros(2, cfg.model.condition_dim))
    elif model == "vae":
        mu, _ = net.encode(x)
    else:
        mu = net(x)
    assert torch.isfinite(mu).all()
    assert {cb.name for cb in instantiate_callbacks(cfg.explain)} == CALLBACKS[model]


def test_cvae_condition_follows_the_data(tmp_path):
    cfg = compose_train_cfg(tmp_path, ["model=cvae", "data=digits"])
    assert (cfg.model.condition, cfg.model.condition_dim) == ("label", 10)
    cfg = compose_train_cfg(tmp_path, ["model=cvae", "data=synthfaces"])
    assert (cfg.model.condition, cfg.model.condition_dim) == ("attributes", 12)  # all of synthfaces' attributes
    cfg = compose_train_cfg(tmp_path, ["model=cvae", "data=celeba", "data.attributes=[Smiling,Male]"])
    assert (cfg.model.condition, cfg.model.condition_dim) == ("attributes", 2)


@pytest.mark.parametrize(
    "overrides,keys",
    [
        (["model=cvae", "data=digits", "model.condition=attributes"], ["model.condition", "model.condition=label"]),
        (["model=seg_vae", "data=digits"], ["'model'", "data=synthfaces"]),
        (["model=unet", "data=celeba"], ["'model'", "data=celebamask_hq"]),
        (["model=classifier", "data=synthfaces"], ["model.task", "model.task=multilabel model.num_classes=12"]),
        (["model=classifier", "data=digits", "model.task=multilabel"], ["model.task", "multiclass"]),
        (["model=classifier", "data=digits", "model.num_classes=5"], ["model.num_classes", "model.num_classes=10"]),
        (["model=seg_vae", "data=synthfaces", "data.target=index"], ["model.num_classes", "model.num_classes=19"]),
    ],
)
def test_a_combination_that_cannot_train_names_its_keys_and_the_fix(overrides, keys, tmp_path):
    cfg = compose_train_cfg(tmp_path, overrides)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    for key in keys:
        assert key in str(error.value)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built


def test_an_experiment_overlays_the_groups(tmp_path):
    cfg = compose_train_cfg(tmp_path, ["experiment=synthfaces_cvae"])
    assert cfg.task_name == "synthfaces_cvae" and cfg.model.condition_dim == 12 and cfg.model.latent_dim == 16
    assert cfg.explain.attributes.attributes[0] == "Smiling"
    assert compose_train_cfg(tmp_path).task_name == "fashion_vae"  # the default job, no experiment


FAST = [
    "debug=fast",
    "logger=csv",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=8",
    "++data.eval_batch_size=8",
]
SMALL = {
    "digits": [],
    "synthfaces": ["data.count=40", "data.build_workers=1"],
}
STEP = [
    (
        "classifier",
        "digits",
        [
            "explain.attribution.num_probes=2",
            "explain.attribution.methods=[saliency,gradcam]",
            "explain.featviz.maximisation.steps=3",
            "explain.featviz.num_probes=24",
        ],
    ),
    ("cvae", "synthfaces", ["explain.gradcam.num_probes=2", "explain.latent_sweep.num_probes=2"]),
    ("seg_vae", "synthfaces", []),
    ("unet", "synthfaces", ["model.encoder_depth=3"]),
]


@pytest.mark.parametrize("model,data,extra", STEP, ids=[f"{m}-{d}" for m, d, _ in STEP])
def test_model_and_data_groups_train_one_step_with_their_callbacks(model, data, extra, tmp_path):
    run = tmp_path / "run"
    shared = [f"paths.data_dir={tmp_path.parent / 'shared_data'}"]
    cfg = compose_train_cfg(run, [f"model={model}", f"data={data}", *FAST, *SMALL[data], *shared, *extra])
    if "cache_dir" in cfg.data:
        cfg.data.cache_dir = str(tmp_path / "cache")
    metrics = train(cfg)
    assert metrics["epochs"] == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert any(k.startswith("test/") for k in json.loads((run / "metrics.json").read_text()))
    for name in CALLBACKS[model]:
        assert list((run / "explanations" / name).rglob("*.png")), f"callback {name} wrote no image"
