"""data=NAME options compose, instantiate and fail clearly when their files are not at hand."""

import hydra
import pytest
from hydra.utils import get_class

from src.run.task import run_task
from src.testing.compose import CONF_DIR, compose_train_cfg
from src.train import train

DATASETS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))


def test_all_datasets_have_configs():
    assert set(DATASETS) >= {
        "celeba",
        "celebamask_hq",
        "mnist",
        "notmnist",
        "cifar10",
        "digits",
        "fashion_mnist",
        "synthfaces",
    }


@pytest.mark.parametrize("name", DATASETS)
def test_data_option_composes_with_a_root(name, tmp_path):
    cfg = compose_train_cfg(
        tmp_path, [f"data={name}", f"data.root={tmp_path}"] if name not in ("digits", "dsprites") else [f"data={name}"]
    )
    cls = get_class(cfg.data._target_)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, cls)
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.in_channels == cfg.data.channels


@pytest.mark.parametrize(
    "experiment,message",
    [
        ("celeba_vae", "CelebA cannot be downloaded here; pass data.root=DIR"),
        ("notmnist_vae", "notMNIST cannot be downloaded here; pass data.root=DIR"),
        ("cifar10_vae", "CIFAR-10 cannot be downloaded here; pass data.root=DIR"),
        ("mnist_vae", "MNIST not found"),
    ],
)
def test_experiments_without_data_root_say_so(experiment, message, tmp_path, capsys):
    cfg = compose_train_cfg(tmp_path, [f"experiment={experiment}", "debug=fast", "logger=none"])
    with pytest.raises(SystemExit) as info:
        run_task(train, cfg)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_synthfaces_vae_runs_out_of_the_box(tmp_path):
    cfg = compose_train_cfg(
        tmp_path / "run",
        ["experiment=synthfaces_vae", "debug=fast", "logger=csv", "data.count=80", "data.build_workers=1"],
    )
    metrics = train(cfg)
    assert metrics["val/loss"] > 0 and metrics["test/loss"] > 0
    generated = list((tmp_path / "run" / "data").glob("synthfaces-v*-64px-80-seed0"))
    assert len(generated) == 1 and (generated[0] / "synthfaces.json").is_file()
    assert (tmp_path / "run" / "explanations" / "reconstructions" / "epoch_000" / "grid.png").is_file()


def test_digits_vae_runs(tmp_path):
    metrics = train(compose_train_cfg(tmp_path, ["experiment=digits_vae", "debug=fast", "logger=none"]))
    assert metrics["test/loss"] > 0
