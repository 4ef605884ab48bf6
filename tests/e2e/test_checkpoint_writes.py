"""Checkpoints are written whole or not at all on any file system, and a disk that fills up or a
folder that is read-only stops the run with one message naming the path and the cause, keeping
every checkpoint written before: kill -9 in the middle of a write with $TMPDIR on another file
system, and real full / read-only file systems (tmpfs mounts in a private mount namespace)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from src.base.errors import TrainingFault
from src.run.checkpoints import AtomicCheckpointIO, remove_partial_writes
from src.testing.compose import ROOT
from tests.e2e.test_faults import TINY, run_cli

COMMON = ["experiment=fashion_vae", *TINY, "logger=csv", "++trainer.num_sanity_val_steps=0"]


class StallWrite(L.Callback):
    """Test-only: the `count`-th write of `file` writes half its bytes, writes `marker` and waits
    (up to 120 s) to be killed."""

    def __init__(self, name: str, marker: str, file: str = "last.ckpt", count: int = 2) -> None:
        self.marker, self.file, self.count = Path(marker), file, count

    def setup(self, trainer, pl_module, stage) -> None:
        import src.run.checkpoints

        real_write, seen = src.run.checkpoints.write_whole, []

        def write_whole(path, data):
            if not path.name.startswith(f".{self.file}.partial-"):
                return real_write(path, data)
            seen.append(1)
            if len(seen) < self.count:
                return real_write(path, data)
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
            self.marker.write_text(str(len(data)))
            time.sleep(120)

        src.run.checkpoints.write_whole = write_whole


def test_kill_9_in_the_middle_of_a_write_keeps_the_previous_checkpoint(fashion_fixture, tmp_path):
    tmpdir = Path("/dev/shm") / f"latent-lens-{os.getpid()}"
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the run folder")
    tmpdir.mkdir(exist_ok=True)
    try:
        run, marker = tmp_path / "run", tmp_path / "stalled"
        proc = run_cli(
            *COMMON,
            f"data.root={fashion_fixture}",
            "trainer.max_epochs=2",
            f"hydra.run.dir={run}",
            "+explain.stall._target_=tests.e2e.test_checkpoint_writes.StallWrite",
            f"+explain.stall.marker={marker}",
            wait=False,
            env={"TMPDIR": str(tmpdir)},
        )
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=60)[0][-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        checkpoints = run / "checkpoints"
        (partial,) = checkpoints.glob(".last.ckpt.partial-*")
        assert partial.stat().st_size == int(marker.read_text()) // 2  # cut off mid-write
        saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
        assert saved["global_step"] == 6  # epoch 0's last.ckpt, whole
        assert torch.load(checkpoints / "epoch_001.ckpt", weights_only=True)["global_step"] == 12  # written before
        # the next start removes the remains before it writes (src.train calls this; the resume itself is
        # test_faults' business)
        assert remove_partial_writes(checkpoints) == [partial] and not partial.exists()
        assert not list(checkpoints.glob(".*")) and torch.load(checkpoints / "last.ckpt", weights_only=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def in_mount_namespace(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`script` (sh) in a private mount namespace, where it may mount tmpfs file systems."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("no private mount namespaces here (unshare -rm)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# make test: the write error's message and clean-up in-process (below); these mount real file systems
@pytest.mark.slow
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_a_full_or_read_only_disk_stops_with_the_path_and_keeps_the_checkpoints(disk, fashion_fixture, tmp_path):
    """Epoch 0 trains in an ordinary folder; the run is copied onto a tmpfs (sized for 2.5 of its
    checkpoints, or mounted read-only) and resumed there: at epoch 1's end a third checkpoint
    does not fit / nothing can be written."""
    run = tmp_path / "run"
    first = run_cli(*COMMON, f"data.root={fashion_fixture}", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    size = (run / "checkpoints" / "last.ckpt").stat().st_size
    mnt, out = tmp_path / "mnt", tmp_path / "after"
    mnt.mkdir()
    args = " ".join(
        [*COMMON, f"data.root={fashion_fixture}", "trainer.max_epochs=3", f"hydra.run.dir={mnt}", "ckpt_path=last"]
    )
    remount = f"mount -o remount,ro {mnt} &&" if disk == "read-only" else ""
    script = (
        f"mount -t tmpfs -o size={int(2.5 * size) // 1024}k tmpfs {mnt} && cp -a {run}/. {mnt}/ && {remount} "
        f"{sys.executable} -m src.train {args}; echo $? > {tmp_path}/rc; cp -a {mnt}/. {out}/"
    )
    proc = in_mount_namespace(script)
    rc = int((tmp_path / "rc").read_text())
    err = proc.stderr
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    if disk == "full":
        assert f"{mnt}/checkpoints/epoch_001.ckpt: could not write the checkpoint (No space left on device)" in err
        assert "the disk is full" in err
    else:
        assert f"{mnt}" in err and "Read-only file system" in err, err[-3000:]
    assert not list((out / "checkpoints").glob(".*partial*"))
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]


def test_a_failed_write_removes_its_temporary_file_and_names_path_and_cause(tmp_path, monkeypatch):
    import errno

    def full(path, data):
        path.write_bytes(bytes(data[:100]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(3)}, target)
    before = target.read_bytes()
    monkeypatch.setattr("src.run.checkpoints.write_whole", full)
    with pytest.raises(TrainingFault, match=rf"{target}: could not write the checkpoint \(No space left on device\)"):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(3)}, target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
