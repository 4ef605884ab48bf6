"""A stop signal to any one rank of a DDP run stops every rank at the same batch boundary, with
last.ckpt written once and whole, also while rank 0 renders the explanations; a NaN loss on one
rank stops every rank with one message; an error in rank 0's render stops the other ranks: 2
gloo ranks on the CPU (trainer=ddp_cpu), real signals, and a one-minute DDP timeout so that a
hang fails fast."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from src.testing.compose import ROOT
from tests.conftest import signals_as_in_a_terminal
from tests.e2e.test_faults import TINY

pytestmark = pytest.mark.ddp


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def ddp_args(fashion_fixture, run) -> list[str]:
    """A tiny 2-rank gloo run of the FashionMNIST VAE (6 steps an epoch) with a 1-minute DDP timeout."""
    return [
        "experiment=fashion_vae",
        "trainer=ddp_cpu",
        "trainer.strategy.timeout.minutes=1",
        f"data.root={fashion_fixture}",
        *TINY,
        "data.batch_size=8",
        "logger=csv",
        "trainer.max_epochs=3",
        "++trainer.num_sanity_val_steps=0",
        f"hydra.run.dir={run}",
    ]


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        preexec_fn=signals_as_in_a_terminal,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(markers: list[Path], proc: subprocess.Popen) -> None:
    """Until every marker file exists (the run got there), up to 300 s; the run's output if not."""
    deadline = time.time() + 300
    while not all(m.exists() for m in markers) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert all(m.exists() for m in markers), proc.communicate(timeout=30)[0][-4000:]


def kill_all(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()


class SlowRender(L.Callback):
    """Test-only: on global rank 0, a render of up to 120 one-second steps that writes `marker`
    when it starts and stops between steps on a stop signal (like every long render); with
    `fail`, a render that raises instead (raise_errors: the error leaves the callback)."""

    def __init__(self, name: str, marker: str, fail: bool = False) -> None:
        from src.callbacks.base import ImageCallback
        from src.run.progress import progress

        def render(callback, trainer, pl_module, probes):
            Path(marker).write_text(str(time.time()))
            if fail:
                raise ZeroDivisionError("planted render error")
            with progress(name, trainer) as steps:
                for i in range(120):
                    steps(i, 120)
                    time.sleep(1.0)

        self.inner = type("Slow", (ImageCallback,), {"render": render})(name, raise_errors=fail)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.inner.on_validation_epoch_end(trainer, pl_module)


class SlowSave(L.Callback):
    """Test-only: global rank 0 takes 3 s over the first checkpoint it saves, writing `marker` as
    it starts (the other ranks wait inside the save's collectives meanwhile)."""

    def __init__(self, name: str, marker: str) -> None:
        self.marker = Path(marker)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
            time.sleep(3.0)


def gone(pids: list[int], timeout: float) -> dict[int, float]:
    """Wait until every pid has exited (or `timeout` s); the time each went, from now."""
    start, left = time.monotonic(), set(pids)
    went = {}
    while left and time.monotonic() - start < timeout:
        for pid in list(left):
            if not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                went[pid] = time.monotonic() - start
                left.discard(pid)
        time.sleep(0.05)
    return went


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "signum,code",
    [
        (signal.SIGTERM, 143),
        pytest.param(signal.SIGUSR1, 143, marks=SLOW),
        pytest.param(signal.SIGINT, 130, marks=SLOW),
    ],
    ids=["SIGTERM", "SIGUSR1", "SIGINT"],
)
def test_a_signal_to_rank_1_while_rank_0_renders_stops_every_rank_within_seconds(
    signum, code, fashion_fixture, tmp_path
):
    run, marker = tmp_path / "run", tmp_path / "rendering"
    slow = ["+explain.slow._target_=tests.e2e.test_ddp_stops.SlowRender", f"+explain.slow.marker={marker}"]
    proc = launch([*ddp_args(fashion_fixture, run), *slow])
    try:
        wait_for([marker], proc)
        time.sleep(1.0)  # rank 1 is past its validation, waiting for rank 0's render
        ranks = [proc.pid, *children(proc.pid)]
        os.kill(ranks[1], signum)
        went = gone(ranks, 60)
        out = proc.communicate(timeout=30)[0]
    finally:
        kill_all(proc)
    name = signal.Signals(signum).name
    print(f"{name} to rank 1 while rank 0 renders: exits after " + ", ".join(f"{t:.1f} s" for t in went.values()))
    assert len(went) == 2 and max(went.values()) < 30, out[-4000:]
    assert proc.returncode == code and "Timed out" not in out, out[-4000:]
    assert "interrupted at epoch 1, global step 6" in out  # epoch 0's render stopped, epoch 0 checkpointed
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (run / "checkpoints" / "epoch_000.ckpt").is_file()


@pytest.mark.slow
def test_sigterm_to_rank_1_while_rank_0_checkpoints_stops_every_rank_with_last_ckpt_whole(fashion_fixture, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saving"
    slow = ["+explain.slow._target_=tests.e2e.test_ddp_stops.SlowSave", f"+explain.slow.marker={marker}"]
    proc = launch([*ddp_args(fashion_fixture, run), *slow])
    try:
        wait_for([marker], proc)
        ranks = [proc.pid, *children(proc.pid)]
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 is inside the save, waiting for rank 0
        went = gone(ranks, 60)
        out = proc.communicate(timeout=30)[0]
    finally:
        kill_all(proc)
    print("SIGTERM to rank 1 while rank 0 checkpoints: exits after " + ", ".join(f"{t:.1f} s" for t in went.values()))
    assert len(went) == 2 and max(went.values()) < 30 and proc.returncode == 143, out[-4000:]
    assert "interrupted at epoch 1, global step 6" in out and "Timed out" not in out
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and len(saved["rng_states"]["ranks"]) == 2
    assert torch.load(run / "checkpoints" / "epoch_000.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_an_error_in_rank_0s_render_stops_the_other_rank_with_a_message(fashion_fixture, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "rendering"
    broken = [
        "+explain.slow._target_=tests.e2e.test_ddp_stops.SlowRender",
        f"+explain.slow.marker={marker}",
        "+explain.slow.fail=true",
    ]
    proc = launch([*ddp_args(fashion_fixture, run), *broken])
    try:
        wait_for([marker], proc)
        ranks = [proc.pid, *children(proc.pid)]
        went = gone(ranks, 60)
        out = proc.communicate(timeout=30)[0]
    finally:
        kill_all(proc)
    print("error in rank 0's render: exits after " + ", ".join(f"{t:.1f} s" for t in went.values()))
    assert len(went) == 2 and max(went.values()) < 30, out[-4000:]
    assert "ZeroDivisionError: planted render error" in out and "Timed out" not in out
    assert "global rank 0 failed (ZeroDivisionError: planted render error); rank 1 stops too" in out, out[-4000:]


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_with_one_message(fashion_fixture, tmp_path):
    run = tmp_path / "run"
    poison = ["+explain.poison._target_=tests.e2e.test_faults.PoisonBatch", "+explain.poison.rank=1"]
    proc = launch([*ddp_args(fashion_fixture, run), *poison])
    try:
        out = proc.communicate(timeout=240)[0]
    finally:
        kill_all(proc)
    # epoch 1, batch 2 of rank 1 -> global step 6 + 2 = 8; every rank stops at epoch 1's validation
    want = "non-finite training loss at epoch 1, global step 8 on rank 1: loss = nan, recon = nan, kl = nan"
    assert proc.returncode == 2, out[-4000:]
    assert out.count(want) == 1 and "Timed out" not in out and "Connection reset" not in out, out[-4000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 6)  # epoch 0's, not overwritten
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


@pytest.mark.parametrize(
    "target",
    # make test keeps one 2-rank signal test: SIGTERM to rank 1 while rank 0 renders (above)
    [pytest.param(t, marks=pytest.mark.slow) for t in ("rank 1", "rank 0", "every rank")],
)
def test_sigterm_to_one_rank_stops_every_rank_with_last_ckpt_whole(target, fashion_fixture, tmp_path):
    run, marker, release = tmp_path / "run", tmp_path / "held", tmp_path / "release"
    hold = [
        "+explain.hold._target_=tests.e2e.test_faults.HoldAt",
        f"+explain.hold.marker={marker}",
        f"+explain.hold.release={release}",
    ]
    proc = launch([*ddp_args(fashion_fixture, run), *hold])
    try:
        held = [tmp_path / "held.0", tmp_path / "held.1"]
        wait_for(held, proc)
        ranks = {"rank 0": [proc.pid], "rank 1": children(proc.pid)}
        assert len(ranks["rank 1"]) == 1  # the re-launched rank 1
        step = int(held[0].read_text())
        signalled = ranks["rank 0"] + ranks["rank 1"] if target == "every rank" else ranks[target]
        start = time.monotonic()
        for pid in signalled:
            os.kill(pid, signal.SIGTERM)
        release.write_text("")  # a rank that got no signal goes on to the next batch boundary
        out = proc.communicate(timeout=60)[0]
        seconds = time.monotonic() - start
    finally:
        kill_all(proc)
    print(f"{target}: every rank gone {seconds:.1f} s after SIGTERM")
    assert proc.returncode == 143, out[-4000:]
    assert seconds < 30 and "Timed out" not in out
    assert f"interrupted at epoch 1, global step {step + 1}" in out
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == step + 1 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert len(saved["rng_states"]["ranks"]) == 2  # each rank's own random state
    assert not list((run / "checkpoints").glob(".*partial*"))
