"""Every experiment composes and runs one debug=fast step, on fixtures in the real formats."""

import json
import math

import pytest

from src.testing.compose import CONF_DIR, compose_train_cfg
from src.testing.formats import write_celeba, write_celebamask_hq, write_cifar10, write_fashion_fixture, write_notmnist
from src.train import train

# the *_path_mask experiments explain trained checkpoints (src.explain), tested in tests/e2e/test_explain.py
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not p.stem.endswith("_path_mask"))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    write_fashion_fixture(base / "idx")
    write_celeba(base / "celeba", n=12)
    write_celebamask_hq(base / "celebamask", list(range(12)), image_size=96, mask_size=48)
    write_notmnist(base / "notmnist", per_letter=3, broken=1)
    write_cifar10(base / "cifar10", per_batch=8)
    return base


def data_overrides(experiment: str, roots) -> list[str]:
    dataset = experiment.split("_")[0]
    return {
        "fashion": [
            f"data.root={roots / 'idx'}",
            "data.search_system=false",
            "data.download=false",
            "data.val_size=40",
        ],
        "mnist": [f"data.root={roots / 'idx'}", "data.download=false", "data.val_size=40"],
        "celeba": [f"data.root={roots / 'celeba'}"],
        "celebamask": [f"data.root={roots / 'celebamask'}", "data.mask_size=48"],
        "notmnist": [f"data.root={roots / 'notmnist'}", "data.val_size=5", "data.test_size=5"],
        "cifar10": [f"data.root={roots / 'cifar10'}", "data.val_size=8"],
        "synthfaces": ["data.count=24", "data.build_workers=1"],
        "digits": [],
        "dsprites": [
            "data.subset=300",
            "explain.disentanglement.num_codes=60",
            "explain.disentanglement.num_votes=4",
            "explain.disentanglement.vote_batch=8",
        ],
    }[dataset] + {
        "synthfaces_anomaly": ["data.count=80", "explain.anomaly.num_test=8", "explain.anomaly.num_normal=8"],
        "fashion_anomaly": ["explain.anomaly.num_test=16", "explain.anomaly.num_normal=8"],
    }.get(experiment, [])


# make test keeps one experiment per model kind and data format family; the rest (whose readers,
# models and callbacks make test covers elsewhere) run in make test-full
# (synthfaces_vae: test_data_configs runs it out of the box; fashion_classifier: digits_classifier and the
# callback tests cover the kind and its callbacks)
FULL_ONLY = {
    "cifar10_classifier",
    "notmnist_classifier",
    "mnist_classifier",
    "celeba_cvae",
    "cifar10_vae",
    "mnist_vae",
    "notmnist_vae",
    "synthfaces_vae",
    "fashion_classifier",
}


@pytest.mark.parametrize(
    "experiment", [pytest.param(e, marks=pytest.mark.slow) if e in FULL_ONLY else e for e in EXPERIMENTS]
)
def test_experiment_runs_one_fast_step(experiment, roots, tmp_path):
    overrides = [
        f"experiment={experiment}",
        "debug=fast",
        "logger=csv",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.batch_size=4",
        "++data.eval_batch_size=4",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    probe = compose_train_cfg(tmp_path / "probe", [f"experiment={experiment}"])
    if "cache_dir" in probe.data:
        overrides.append(f"data.cache_dir={tmp_path / 'cache'}")
    if "attribution" in (probe.get("explain") or {}):  # every method still runs, with fewer iterations
        overrides += [
            "explain.attribution.num_probes=2",
            "explain.attribution.options.mask_perturbation.steps=3",
            "explain.attribution.options.smoothgrad.samples=2",
            "explain.attribution.options.integrated_gradients.steps=4",
            "explain.featviz.maximisation.steps=3",
            "explain.featviz.num_probes=24",
        ]
    cfg = compose_train_cfg(tmp_path / "run", overrides + data_overrides(experiment, roots))
    metrics = train(cfg)
    assert metrics["epochs"] == 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(key.startswith("test/") for key in saved), saved.keys()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # every configured explanation callback ran (a failing one only logs, so look for its output)
    for name in cfg.get("explain") or {}:
        written = list((tmp_path / "run" / "explanations" / name).rglob("*.*"))
        assert written, f"explanation callback '{name}' wrote nothing"
    if "part_attention" in (cfg.get("explain") or {}):
        scores = json.loads((tmp_path / "run" / "part_attention.json").read_text())
        assert len(scores["dimensions"]) == cfg.explain.part_attention.num_dims
        for row in scores["dimensions"]:  # a dimension whose sweep changes nothing has no part
            assert row["acted_part"] is None or 0 < row["part_area"] <= 1, row
            assert not math.isfinite(row["attention_auroc"]) or 0 <= row["attention_auroc"] <= 1, row


def test_multiclass_segmentation_logs_per_class_iou(roots, tmp_path):
    overrides = [
        "experiment=synthfaces_seg_vae",
        "debug=fast",
        "logger=csv",
        "data.target=index",
        "model.num_classes=19",
        "data.count=24",
        "data.build_workers=1",
        "data.batch_size=4",
        f"paths.data_dir={tmp_path / 'data'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    cfg = compose_train_cfg(tmp_path / "run", overrides)
    metrics = train(cfg)
    assert 0 <= metrics["test/miou"] <= 1
    assert "test/iou_hair" in metrics and "test/iou_background" in metrics
