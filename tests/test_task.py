import sys

import pytest

from src.base.errors import ConfigError, DataError
from src.run.task import find_project_error, run_task
from src.train import train


def test_project_error_found_through_wrapping():
    try:
        try:
            raise ConfigError("model.latent_dim", 0, "must be positive")
        except ConfigError as inner:
            raise RuntimeError("Error in call to target 'src.models.vae.VAE'") from inner
    except RuntimeError as outer:
        assert isinstance(find_project_error(outer), ConfigError)
    assert find_project_error(ValueError("x")) is None


def test_failed_run_exits_2_and_closes_wandb(train_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = train_cfg("logger=wandb", f"data.root={tmp_path / 'missing'}")
    with pytest.raises(SystemExit) as info:
        run_task(train, cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "latent-lens error: FashionMNIST not found" in err and "HYDRA_FULL_ERROR=1" in err
    wandb = sys.modules["wandb"]
    assert wandb.run is None  # finished, not left open
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_full_error_reraises(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def fail():
        raise DataError("boom")

    with pytest.raises(DataError, match="boom"):
        run_task(fail)
