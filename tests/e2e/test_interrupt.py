"""Long explanations show their progress and stop within 5 s on SIGINT / SIGTERM / SIGUSR1: real
signals sent to `python -m src.explain` while it morphs or learns a path mask, and to training while
an explanation renders at the end of a validation epoch (last.ckpt is saved). Exit status 130 for
SIGINT, 143 for SIGTERM and SIGUSR1, one line on stderr, and the files written before are intact."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from src.testing.compose import ROOT, compose_train_cfg
from src.train import train
from tests.conftest import signals_as_in_a_terminal

DATA = ["data.search_system=false", "data.download=false", "data.val_size=40"]
TINY = [
    *DATA,
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "test=false",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "logger=csv",
]
NEVER_ENDS = "10000000"  # steps: the work runs until it is stopped
MESSAGE = "latent-lens: stopped by {name} (exit {code}); files written before it are kept"
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 143}


class Run:
    """A subprocess whose stdout and stderr are read as they come."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
        env.pop("WANDB_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            preexec_fn=signals_as_in_a_terminal,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [
            threading.Thread(target=self._read, args=(s, k), daemon=True)
            for s, k in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        self.arrived: dict[str, float] = {}  # line -> time.monotonic() it arrived
        for t in self.threads:
            t.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            self.arrived.setdefault(line.rstrip("\n"), time.monotonic())
            lines.append(line)

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in "".join(self.out) + "".join(self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"{text!r} never came (exit {self.proc.poll()}):\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def stop(self, signum: int) -> float:
        """Send `signum`; the seconds until the process is gone."""
        start = self.signalled = time.monotonic()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running 60 s after {signum!r}:\n{self.text()[-4000:]}")
        seconds = time.monotonic() - start
        for t in self.threads:
            t.join(timeout=10)
        return seconds


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_stopped(run: Run, seconds: float, signum: int, exit_within: float = 5) -> None:
    code = CODES[signum]
    message = MESSAGE.format(name=signal.Signals(signum).name, code=code)
    assert run.proc.returncode == code, run.text()[-4000:]
    err = "".join(run.err)
    assert err.rstrip("\n").splitlines()[-1] == message, err
    assert "Traceback" not in err
    stopped = run.arrived[message] - run.signalled
    print(f"{signum!r}: stopped after {stopped:.2f} s, exited after {seconds:.2f} s")
    assert stopped < 5 and seconds < exit_within, f"{stopped:.1f} s from {signum!r} to stop, {seconds:.1f} s to exit"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, fashion_fixture):
    base = tmp_path_factory.mktemp("interrupt")
    data = [f"data.root={fashion_fixture}", *TINY, "explain=none"]
    train(compose_train_cfg(base / "clf", ["experiment=fashion_classifier", *data]))
    train(compose_train_cfg(base / "vae", ["experiment=fashion_vae", *data]))
    return base / "clf" / "checkpoints" / "last.ckpt", base / "vae" / "checkpoints" / "last.ckpt"


PHASES = {  # morph_path's phase -> overrides that make it the one that never ends
    "semantic morph": ["explain.morph_path.morph.entropy_tol=0", f"explain.morph_path.morph.max_steps={NEVER_ENDS}"],
    "path mask": ["explain.morph_path.morph.max_steps=2", f"explain.morph_path.mask.steps={NEVER_ENDS}"],
}


SLOW = pytest.mark.slow  # the other signal of each phase: make test-full


@pytest.mark.parametrize(
    "phase,signum",
    [
        ("semantic morph", signal.SIGINT),
        pytest.param("semantic morph", signal.SIGTERM, marks=SLOW),
        pytest.param("path mask", signal.SIGTERM, marks=SLOW),
        ("path mask", signal.SIGUSR1),
    ],
)
def test_explain_shows_progress_and_stops_on_a_signal(phase, signum, checkpoints, fashion_fixture, tmp_path):
    clf, vae = checkpoints
    run_dir = tmp_path / "run"
    # gradcam renders first (its files must survive), then morph_path runs until stopped
    run = Run(
        [
            "-m",
            "src.explain",
            "experiment=fashion_path_mask",
            f"classifier_ckpt={clf}",
            f"vae_ckpt={vae}",
            "logger=csv",
            f"data.root={fashion_fixture}",
            *DATA,
            f"hydra.run.dir={run_dir}",
            "explain=[gradcam,morph_path]",
            "explain.gradcam.num_probes=2",
            "explain.morph_path.num_probes=2",
            "explain.morph_path.morph.num_start_samples=2",
            "explain.morph_path.morph.path_steps=4",
            "explain.morph_path.num_strip=2",
            "explain.morph_path.num_norm_images=50",
            "explain.morph_path.num_masks=1",
            *PHASES[phase],
        ]
    )
    run.wait_for(f"morph_path: {phase}: 1/{NEVER_ENDS} (0%)")  # the first step's count, in the log
    gradcam = run_dir / "explanations" / "gradcam" / "epoch_000"
    before = snapshot(gradcam)
    seconds = run.stop(signum)
    assert_stopped(run, seconds, signum)
    assert snapshot(gradcam) == before and {"maps.png", "ranking.csv"} <= set(before)
    Image.open(gradcam / "maps.png").verify()
    log = (run_dir / "explain.log").read_text()
    assert f"morph_path: {phase}: 1/{NEVER_ENDS}" in log and "(interrupted)" in log
    assert not (run_dir / "metrics.json").exists()  # the explanation did not finish


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=SLOW)])
def test_training_stopped_while_an_explanation_renders_saves_the_epoch_and_resumes_exactly(
    signum, fashion_fixture, tmp_path
):
    """The render stops at its next step, keeping its files; the epoch ends normally (epoch_000.ckpt
    and last.ckpt are saved), the run exits 143 / 130, and the resumed run (explanations off: a
    resume may change them) ends with the weights of a run that was never stopped."""
    from tests.e2e.test_faults import assert_same_run, weights_and_state

    run_dir = tmp_path / "run"
    data = [f"data.root={fashion_fixture}", *(a for a in TINY if not a.startswith("trainer.max_epochs"))]
    args = [
        "experiment=fashion_classifier",
        "trainer.max_epochs=1",
        *data,
        f"hydra.run.dir={run_dir}",
        "explain=featviz",
        "explain.featviz.num_probes=20",
        f"explain.featviz.maximisation.steps={NEVER_ENDS}",
    ]
    run = Run(["-m", "src.train", *args])
    run.wait_for(f"featviz: class maximisation: 1/{NEVER_ENDS}")  # epoch 0's validation has ended: rendering
    featviz = run_dir / "explanations" / "featviz" / "epoch_000"
    before = snapshot(featviz)
    seconds = run.stop(signum)
    assert_stopped(run, seconds, signum)
    assert f"interrupted at epoch 0, global step 2: {run_dir / 'checkpoints' / 'last.ckpt'} holds it" in run.text()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and saved["state_dict"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert snapshot(featviz) == before and "filters.png" in before

    more = [f"hydra.run.dir={run_dir}", "explain=none", "trainer.max_epochs=2"]
    straight = Run(
        ["-m", "src.train", "experiment=fashion_classifier", *data, *more[1:], f"hydra.run.dir={tmp_path / 'straight'}"]
    )
    resumed = Run(["-m", "src.train", "experiment=fashion_classifier", *data, *more, "ckpt_path=last"])
    for proc in (straight, resumed):
        assert proc.proc.wait(timeout=300) == 0, proc.text()[-3000:]
    assert_same_run(
        weights_and_state(run_dir / "checkpoints" / "last.ckpt"),
        weights_and_state(tmp_path / "straight" / "checkpoints" / "last.ckpt"),
    )
