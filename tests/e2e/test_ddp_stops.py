"""A stop signal to any one rank of a DDP run stops every rank at the same batch boundary, with
last.ckpt written once and whole, and a NaN loss on one rank stops every rank with one message:
2 gloo ranks on the CPU (trainer=ddp_cpu), real signals, and a one-minute DDP timeout so that a
hang fails fast."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
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
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def kill_all(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()


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
    ["rank 1", pytest.param("rank 0", marks=pytest.mark.slow), pytest.param("every rank", marks=pytest.mark.slow)],
)
def test_sigterm_to_one_rank_stops_every_rank_with_last_ckpt_whole(target, fashion_fixture, tmp_path):
    run, marker, release = tmp_path / "run", tmp_path / "held", tmp_path / "release"
    hold = ["+explain.hold._target_=tests.e2e.test_faults.HoldAt", f"+explain.hold.marker={marker}",
            f"+explain.hold.release={release}"]  # fmt: skip
    proc = launch([*ddp_args(fashion_fixture, run), *hold])
    try:
        held = [tmp_path / "held.0", tmp_path / "held.1"]
        deadline = time.time() + 300
        while not all(m.exists() for m in held) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert all(m.exists() for m in held), proc.communicate(timeout=30)[0][-4000:]
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
    assert not list((run / "checkpoints").glob(".*partial*"))
