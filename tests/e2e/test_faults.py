"""Failure is loud, early and harmless: a non-finite loss or weights stop the run and keep the last
good checkpoint; SIGKILL / SIGTERM / Ctrl-C lose nothing and `ckpt_path=last` continues the same
run to the same weights; W&B failing to start falls back to offline; a failing explanation
callback does not stop training; checkpoints of the wrong kind or shape are refused."""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from src.errors import ConfigError
from src.explain import explain
from src.task import run_task
from src.train import train
from tests.conftest import ROOT, compose_train_cfg
from tests.e2e.test_train_cli import run_cli as train_cli

TINY = ["data.search_system=false", "data.download=false", "data.val_size=40", "++trainer.limit_train_batches=6",
        "++trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "test=false", "data.batch_size=16",
        "explain=none"]  # fmt: skip


class PoisonBatch(L.Callback):
    """Test-only: NaN input images at (epoch, batch) -> a non-finite loss."""

    def __init__(self, name: str, epoch: int = 1, batch: int = 2) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            batch["image"][0, 0, 0, 0] = float("nan")


class PoisonWeights(L.Callback):
    """Test-only: a NaN weight after the last training batch of `epoch` (loss stays finite)."""

    def __init__(self, name: str, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(pl_module.decoder.parameters()).view(-1)[0] = float("nan")


class BrokenRender(L.Callback):
    """Test-only: an explanation callback whose render always fails."""

    def __init__(self, name: str) -> None:
        from src.callbacks.base import ImageCallback

        self.inner = type("Broken", (ImageCallback,), {"render": lambda *a: 1 / 0})(name)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.inner.on_validation_epoch_end(trainer, pl_module)


class HoldAt(L.Callback):
    """Test-only: at (epoch, batch) write `marker` and wait (up to 120 s) to be killed or signalled."""

    def __init__(self, name: str, marker: str, epoch: int = 1, batch: int = 3) -> None:
        self.marker, self.epoch, self.batch = Path(marker), epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
            deadline = time.time() + 120
            while time.time() < deadline and not trainer.received_sigterm:
                time.sleep(0.05)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args: str, env: dict | None = None, wait: bool = True):
    """`python -m src.train` with W&B offline: finished (test_train_cli.run_cli), or started (Popen)."""
    if wait:
        return train_cli(*args, env={"WANDB_MODE": "offline", **(env or {})})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_nan_loss_stops_naming_step_and_terms_and_keeps_the_last_good_checkpoint(fashion_fixture, tmp_path, capsys):
    base = ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", "trainer.max_epochs=3"]
    cfg = compose_train_cfg(tmp_path, [*base, "+explain.poison._target_=tests.e2e.test_faults.PoisonBatch"])
    with pytest.raises(SystemExit) as info:
        run_task(train, cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err
    # epoch 1, batch 2 -> global step 6 + 2 = 8; the NaN pixel makes both terms non-finite
    assert "non-finite training loss at epoch 1, global step 8: loss = nan, recon = nan, kl = nan" in err
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint, {last}, is kept" in err and "Traceback" not in err
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 6)  # epoch 0's, not overwritten
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_non_finite_weights_are_never_checkpointed(fashion_fixture, tmp_path, capsys):
    base = ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", "trainer.max_epochs=3"]
    cfg = compose_train_cfg(tmp_path, [*base, "+explain.poison._target_=tests.e2e.test_faults.PoisonWeights"])
    with pytest.raises(SystemExit):
        run_task(train, cfg)
    err = capsys.readouterr().err
    assert "non-finite weights after epoch 1 (global step 12) in decoder." in err
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_000.ckpt", "last.ckpt"]  # fmt: skip


def test_a_failing_explanation_callback_is_logged_and_training_goes_on(fashion_fixture, tmp_path, caplog):
    broken = "+explain.broken._target_=tests.e2e.test_faults.BrokenRender"
    cfg = compose_train_cfg(tmp_path, ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv",
                                       "trainer.max_epochs=2", broken])  # fmt: skip
    with caplog.at_level(logging.ERROR):
        metrics = train(cfg)
    assert metrics["epochs"] == 2 and (tmp_path / "metrics.json").is_file()
    failures = [r for r in caplog.records if "explanation callback 'broken' failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "explanation callback 'broken' failed at epoch 0; training continues",
        "explanation callback 'broken' failed at epoch 1; training continues"]  # fmt: skip
    assert "ZeroDivisionError" in failures[0].exc_text


def weights_and_state(ckpt: Path) -> dict:
    saved = torch.load(ckpt, weights_only=True)
    return {"epoch": saved["epoch"], "global_step": saved["global_step"], "state_dict": saved["state_dict"],
            "optimizer": saved["optimizer_states"][0]["state"]}  # fmt: skip


def assert_same_run(a: dict, b: dict) -> None:
    """Bitwise: the same deterministic CPU program on the same batches in two processes, so the
    same kernels in the same order (a replayed or skipped batch moves weights by whole Adam steps)."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for slot in a["optimizer"]:
        for name, value in a["optimizer"][slot].items():
            torch.testing.assert_close(value, b["optimizer"][slot][name], rtol=0, atol=0)


@pytest.mark.parametrize("how", [pytest.param("sigkill", marks=pytest.mark.slow), "sigterm",
                                 pytest.param("sigint", marks=pytest.mark.slow)])  # fmt: skip
def test_killed_run_resumes_to_the_same_weights_and_wandb_run(how, fashion_fixture, tmp_path):
    common = ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=wandb", "trainer.max_epochs=3",
              "++trainer.num_sanity_val_steps=0"]  # fmt: skip
    straight = run_cli(*common, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]
    run_dir, marker = tmp_path / "run", tmp_path / "held"
    proc = run_cli(*common, f"hydra.run.dir={run_dir}", "+explain.hold._target_=tests.e2e.test_faults.HoldAt",
                   f"+explain.hold.marker={marker}", wait=False)  # fmt: skip
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "9"  # epoch 1, batch 3: mid-epoch
    run_id = (run_dir / "wandb_id").read_text().strip()
    proc.send_signal({"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[how])
    out = proc.communicate(timeout=300)[0]
    state = weights_and_state(run_dir / "checkpoints" / "last.ckpt")
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
        assert state["global_step"] == 6  # the epoch-0 checkpoint: nothing newer could be written
    else:
        # Ctrl-C interrupts the held batch; SIGTERM lets it finish (Lightning stops after the batch)
        step = 9 if how == "sigint" else 10
        assert f"interrupted at epoch 1, global step {step}" in out, out[-3000:]
        assert state["global_step"] == step  # saved at the interrupt, mid-epoch
    resumed = run_cli(*common, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert_same_run(weights_and_state(run_dir / "checkpoints" / "last.ckpt"),
                    weights_and_state(tmp_path / "straight" / "checkpoints" / "last.ckpt"))  # fmt: skip
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs)  # one W&B run, two sessions


def test_ckpt_path_last_finds_the_newest_run_of_the_task(fashion_fixture, tmp_path):
    logs = tmp_path / "logs"
    common = ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", f"paths.log_dir={logs}"]
    train(compose_train_cfg(logs / "runs" / "fashion_vae" / "first", [*common, "trainer.max_epochs=1"]))
    cfg = compose_train_cfg(tmp_path / "new", [*common, "trainer.max_epochs=2", "ckpt_path=last"])
    metrics = train(cfg)
    assert cfg.paths.output_dir == str(logs / "runs" / "fashion_vae" / "first")
    assert metrics["epochs"] == 2 and weights_and_state(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")[
        "global_step"] == 12  # fmt: skip
    with pytest.raises(ConfigError, match=r"ckpt_path.*no last.ckpt in .* nor in any run under"):
        train(compose_train_cfg(tmp_path / "x", [*common, "task_name=never_run", "ckpt_path=last"]))


def test_wandb_failing_to_start_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import wandb

    from src.sinks.wandb_sink import make_wandb_logger

    real_init, calls = wandb.init, []

    def init(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("could not reach api.wandb.ai")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level(logging.WARNING):
        logger = make_wandb_logger(mode="online", project="latent-lens-test", save_dir=str(tmp_path), name="t")
        run = logger.experiment
    try:
        assert (
            calls[0] == "online"
            and calls[1] in ("offline", "dryrun")
            and run.id == (tmp_path / "wandb_id").read_text().strip()
        )
        assert any("W&B failed to start online (CommError: could not reach api.wandb.ai); logging offline"
                   in r.getMessage() for r in caplog.records)  # fmt: skip
        assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # wandb writes "dryrun" for offline
    finally:
        wandb.finish()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_fixture):
    base = tmp_path_factory.mktemp("trained")
    data = [f"data.root={fashion_fixture}", *TINY, "logger=csv", "trainer.max_epochs=1"]
    train(compose_train_cfg(base / "clf", ["experiment=fashion_classifier", *data]))
    train(compose_train_cfg(base / "vae", ["experiment=fashion_vae", *data]))
    return base / "clf" / "checkpoints" / "last.ckpt", base / "vae" / "checkpoints" / "last.ckpt"


def test_explain_refuses_a_checkpoint_of_another_model_kind(trained, fashion_fixture, tmp_path):
    clf, _ = trained
    cfg = compose_train_cfg(tmp_path, ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY[:3],
                                       "explain=gradcam", f"ckpt_path={clf}", "logger=none"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"ckpt_path.*this is a Classifier checkpoint, not a VAE"):
        explain(cfg)


def test_explain_refuses_a_checkpoint_trained_on_another_image_shape(trained, fashion_fixture, tmp_path):
    _, vae = trained
    cfg = compose_train_cfg(tmp_path, ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY[:3],
                                       "explain=gradcam", f"ckpt_path={vae}", "logger=none",
                                       "data.image_size=32"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.image_size' = 32: the checkpoint .* was trained on image_size 28"):
        explain(cfg)


class Payload:
    """Anything that is not a tensor or a plain value."""


def test_checkpoints_are_read_with_weights_only(trained, tmp_path):
    from src.checkpoints import load_module
    from src.models.vae import VAE

    _, vae = trained
    assert isinstance(load_module(vae, VAE, "ckpt_path"), VAE)  # ours hold tensors and plain values only
    saved = torch.load(vae, weights_only=True)
    saved["extra"] = Payload()
    torch.save(saved, tmp_path / "unsafe.ckpt")
    with pytest.raises(ConfigError, match=r"ckpt_path.*unsafe.ckpt.*more than tensors and plain values"):
        load_module(tmp_path / "unsafe.ckpt", VAE, "ckpt_path")


@pytest.mark.parametrize("override,message", [
    # slow: the CLI's exit 2 stays in make test through test_train_cli / test_explain's missing-file runs
    pytest.param("model.latent_dim=0", "config key 'model.latent_dim' = 0: must be a positive integer",
                 marks=pytest.mark.slow),
    pytest.param("data.image_size=2", "config key 'model.image_size' = 2", marks=pytest.mark.slow),
    pytest.param("model.encoder.stride=[2]", "model.encoder.stride", marks=pytest.mark.slow),
])  # fmt: skip
def test_bad_config_exits_2_with_one_message_before_training(override, message, fashion_fixture, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", override,
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR=1" in proc.stderr
    assert not (run_dir / "checkpoints").exists()
    full = run_cli("experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", override,
                   f"hydra.run.dir={tmp_path / 'full'}", env={"HYDRA_FULL_ERROR": "1"})  # fmt: skip
    assert full.returncode != 0 and "Traceback" in full.stderr
