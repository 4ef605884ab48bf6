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

from src.base.errors import ConfigError
from src.explain import explain
from src.run.task import run_task
from src.testing.compose import ROOT, compose_train_cfg
from src.train import train
from tests.conftest import signals_as_in_a_terminal
from tests.e2e.test_train_cli import run_cli as train_cli

TINY = [
    "data.search_system=false",
    "data.download=false",
    "data.val_size=40",
    "++trainer.limit_train_batches=6",
    "++trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "test=false",
    "data.batch_size=16",
    "explain=none",
]


class PoisonBatch(L.Callback):
    """Test-only: NaN input images at (epoch, batch) -> a non-finite loss (on global `rank` only,
    when given)."""

    def __init__(self, name: str, epoch: int = 1, batch: int = 2, rank: int | None = None) -> None:
        self.epoch, self.batch, self.rank = epoch, batch, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
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


def hold(marker: Path, text: str, release: Path | None = None) -> None:
    """Write `marker` (unless it exists) and wait, up to 120 s, for a stop signal to this process
    (or for `release` to exist)."""
    from src.run import interrupt

    marker.write_text(text)
    deadline = time.time() + 120
    while time.time() < deadline and interrupt.received() is None and not (release and release.exists()):
        time.sleep(0.05)


class HoldAt(L.Callback):
    """Test-only: at (epoch, batch) of global rank `rank`, write `marker` and wait (up to 120 s) to
    be killed or signalled: at the batch's start, or (`where=forward`) inside the forward pass,
    after the decoder ran (this step's sampling noise is drawn)."""

    def __init__(
        self, name: str, marker: str, epoch: int = 1, batch: int = 3, where: str = "start", release: str | None = None
    ) -> None:
        self.marker, self.epoch, self.batch, self.where = Path(marker), epoch, batch, where
        self.release = Path(release) if release else None
        self._handle = None

    def _due(self, trainer, batch_idx) -> bool:
        if trainer.world_size > 1:  # one marker per rank: <marker>.<global rank>
            self.marker = self.marker.with_name(f"{self.marker.name.split('.')[0]}.{trainer.global_rank}")
        return trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.marker.exists()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._due(trainer, batch_idx):
            return
        if self.where == "start":
            hold(self.marker, str(trainer.global_step), self.release)
            return
        step = trainer.global_step

        def inside_forward(module, args, output):
            self._handle.remove()
            hold(self.marker, str(step), self.release)

        self._handle = pl_module.decoder.register_forward_hook(inside_forward)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args: str, env: dict | None = None, wait: bool = True, log: Path | None = None):
    """`python -m src.train` with W&B offline: finished (test_train_cli.run_cli), or started (Popen;
    its output to `log`, else a pipe)."""
    if wait:
        return train_cli(*args, env={"WANDB_MODE": "offline", **(env or {})})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    env.pop("WANDB_API_KEY", None)
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115  (the child writes it)
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        preexec_fn=signals_as_in_a_terminal,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
        "epoch_000.ckpt",
        "last.ckpt",
    ]


def test_a_failing_explanation_callback_is_logged_and_training_goes_on(fashion_fixture, tmp_path, caplog):
    broken = "+explain.broken._target_=tests.e2e.test_faults.BrokenRender"
    cfg = compose_train_cfg(
        tmp_path,
        ["experiment=fashion_vae", f"data.root={fashion_fixture}", *TINY, "logger=csv", "trainer.max_epochs=2", broken],
    )
    with caplog.at_level(logging.ERROR):
        metrics = train(cfg)
    assert metrics["epochs"] == 2 and (tmp_path / "metrics.json").is_file()
    failures = [r for r in caplog.records if "explanation callback 'broken' failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "explanation callback 'broken' failed at epoch 0; training continues",
        "explanation callback 'broken' failed at epoch 1; training continues",
    ]
    assert "ZeroDivisionError" in failures[0].exc_text


def weights_and_state(ckpt: Path) -> dict:
    saved = torch.load(ckpt, weights_only=True)
    return {
        "epoch": saved["epoch"],
        "global_step": saved["global_step"],
        "state_dict": saved["state_dict"],
        "optimizer": saved["optimizer_states"][0]["state"],
    }


def assert_same_run(a: dict, b: dict) -> None:
    """Bitwise: the same deterministic CPU program on the same batches in two processes, so the
    same kernels in the same order (a replayed or skipped batch moves weights by whole Adam steps)."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for slot in a["optimizer"]:
        for name, value in a["optimizer"][slot].items():
            torch.testing.assert_close(value, b["optimizer"][slot][name], rtol=0, atol=0)


SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigusr1": signal.SIGUSR1}


def hold_until(proc, marker: Path) -> str:
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)  # the marker is written, the process holds
    assert marker.exists(), proc.communicate(timeout=60)[0][-3000:]
    return marker.read_text()


@pytest.mark.parametrize(
    "how,where,logger",
    [
        pytest.param("sigkill", "start", "wandb", marks=pytest.mark.slow),
        ("sigint", "forward", "csv"),
        pytest.param("sigterm", "forward", "wandb", marks=pytest.mark.slow),
        pytest.param("sigusr1", "start", "csv", marks=pytest.mark.slow),
    ],
)
def test_stopped_runs_resume_to_the_same_weights_history_and_wandb_run(how, where, logger, fashion_fixture, tmp_path):
    """Stop in epoch 0 (at batch 2's start, SIGTERM), resume and stop again in epoch 1 (`how`,
    `where`: at batch 3's start or inside its forward pass, after the noise is drawn), resume to
    the end: the weights and optimizer state equal an uninterrupted run's bit for bit, last.ckpt is
    the newest state at every stop (never a last-v1.ckpt beside it), metrics.csv keeps every
    epoch's row once, and the W&B run is one run with three sessions."""
    common = [
        "experiment=fashion_vae",
        f"data.root={fashion_fixture}",
        *TINY,
        f"logger={logger}",
        "trainer.max_epochs=2",
        "++trainer.num_sanity_val_steps=0",
        "++trainer.log_every_n_steps=1",
    ]
    straight = run_cli(*common, f"hydra.run.dir={tmp_path / 'straight'}", wait=False, log=tmp_path / "straight.log")
    run_dir, first, second = tmp_path / "run", tmp_path / "held0", tmp_path / "held1"
    hold_at = "+explain.hold._target_=tests.e2e.test_faults.HoldAt"
    hold_first = [hold_at, f"+explain.hold.marker={first}", "+explain.hold.epoch=0", "+explain.hold.batch=2"]
    proc = run_cli(*common, f"hydra.run.dir={run_dir}", *hold_first, wait=False)
    assert hold_until(proc, first) == "2"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and "interrupted at epoch 0, global step 3" in out, out[-3000:]
    run_id = (run_dir / "wandb_id").read_text().strip() if logger == "wandb" else None
    proc = run_cli(
        *common,
        "ckpt_path=last",
        f"hydra.run.dir={run_dir}",
        hold_at,
        f"+explain.hold.marker={second}",
        "+explain.hold.epoch=1",
        "+explain.hold.batch=3",
        f"+explain.hold.where={where}",
        wait=False,
    )
    assert hold_until(proc, second) == "9"  # epoch 1, batch 3: mid-epoch
    proc.send_signal(SIGNALS[how])
    out = proc.communicate(timeout=120)[0]
    state = weights_and_state(run_dir / "checkpoints" / "last.ckpt")
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
        assert state["global_step"] == 6  # the epoch-0 checkpoint: nothing newer could be written
    else:
        # whatever the signal and wherever it lands, the batch finishes and the run stops after it
        assert proc.returncode == (130 if how == "sigint" else 143), out[-3000:]
        assert "interrupted at epoch 1, global step 10" in out, out[-3000:]
        assert state["global_step"] == 10  # saved at the stop, mid-epoch
    resumed = run_cli(*common, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    assert_same_run(
        weights_and_state(run_dir / "checkpoints" / "last.ckpt"),
        weights_and_state(tmp_path / "straight" / "checkpoints" / "last.ckpt"),
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()
    )
    epochs = [row["epoch"] for row in csv_rows(run_dir) if row.get("val/loss")]
    assert epochs == [row["epoch"] for row in csv_rows(tmp_path / "straight") if row.get("val/loss")] == ["0", "1"]
    if logger != "wandb":
        return
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and all(name.endswith(f"-{run_id}") for name in runs)  # one W&B run, three sessions


def csv_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


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
        assert any(
            "W&B failed to start online (CommError: could not reach api.wandb.ai); logging offline" in r.getMessage()
            for r in caplog.records
        )
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
    cfg = compose_train_cfg(
        tmp_path,
        [
            "experiment=fashion_vae",
            f"data.root={fashion_fixture}",
            *TINY[:3],
            "explain=gradcam",
            f"ckpt_path={clf}",
            "logger=none",
        ],
    )
    with pytest.raises(ConfigError, match=r"ckpt_path.*this is a Classifier checkpoint, not a VAE"):
        explain(cfg)


def test_explain_refuses_a_checkpoint_trained_on_another_image_shape(trained, fashion_fixture, tmp_path):
    _, vae = trained
    cfg = compose_train_cfg(
        tmp_path,
        [
            "experiment=fashion_vae",
            f"data.root={fashion_fixture}",
            *TINY[:3],
            "explain=gradcam",
            f"ckpt_path={vae}",
            "logger=none",
            "data.image_size=32",
        ],
    )
    with pytest.raises(ConfigError, match=r"data.image_size' = 32: the checkpoint .* was trained on image_size 28"):
        explain(cfg)


class Payload:
    """Anything that is not a tensor or a plain value."""


def test_checkpoints_are_read_with_weights_only(trained, tmp_path):
    from src.models.vae import VAE
    from src.run.checkpoints import load_module

    _, vae = trained
    assert isinstance(load_module(vae, VAE, "ckpt_path"), VAE)  # ours hold tensors and plain values only
    saved = torch.load(vae, weights_only=True)
    saved["extra"] = Payload()
    torch.save(saved, tmp_path / "unsafe.ckpt")
    with pytest.raises(ConfigError, match=r"ckpt_path.*unsafe.ckpt.*more than tensors and plain values"):
        load_module(tmp_path / "unsafe.ckpt", VAE, "ckpt_path")


@pytest.mark.parametrize(
    "override,message",
    [
        # slow: the CLI's exit 2 stays in make test through test_train_cli / test_explain's missing-file runs
        pytest.param(
            "model.latent_dim=0",
            "config key 'model.latent_dim' = 0: must be a positive integer",
            marks=pytest.mark.slow,
        ),
        pytest.param("data.image_size=2", "config key 'model.image_size' = 2", marks=pytest.mark.slow),
        pytest.param("model.encoder.stride=[2]", "model.encoder.stride", marks=pytest.mark.slow),
    ],
)
def test_bad_config_exits_2_with_one_message_before_training(override, message, fashion_fixture, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "experiment=fashion_vae",
        f"data.root={fashion_fixture}",
        *TINY,
        "logger=csv",
        override,
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR=1" in proc.stderr
    assert not (run_dir / "checkpoints").exists()
    full = run_cli(
        "experiment=fashion_vae",
        f"data.root={fashion_fixture}",
        *TINY,
        "logger=csv",
        override,
        f"hydra.run.dir={tmp_path / 'full'}",
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_last_ckpt_is_the_newest_epoch_also_when_the_monitored_metric_did_not_improve(fashion_fixture, tmp_path):
    # monitor the epoch, mode min: only epoch 0 is ever "best"; last.ckpt must still follow every epoch
    cfg = compose_train_cfg(
        tmp_path,
        [
            "experiment=fashion_classifier",
            f"data.root={fashion_fixture}",
            *TINY,
            "logger=csv",
            "trainer.max_epochs=2",
            "checkpoint.monitor=epoch",
            "checkpoint.mode=min",
        ],
    )
    train(cfg)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert weights_and_state(checkpoints / "last.ckpt")["global_step"] == 12
