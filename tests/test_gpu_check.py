"""`make gpu-check`'s chain runs end to end on the CPU (`--device cpu`, small sizes): every check
starts, passes and lands in the one table (slow: a few minutes; `make test-full` runs it)."""

import json
import subprocess
import sys

import pytest

from src.testing.compose import ROOT

CHECKS = (
    "strictness",
    "parity",
    "fit_vae",
    "fit_cvae",
    "fit_seg_vae",
    "fit_unet",
    "fit_classifier",
    "explain",
    "precision_16",
    "compile",
    "ddp_1",
    "peak_memory",
    "bench_gpu",
)


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["check"]: r["status"] for r in records} == dict.fromkeys(CHECKS, "ok")
    assert all(r["device"] == "cpu" for r in records)
    parity = next(r for r in records if r["check"] == "parity")["error_over_bound"]
    assert set(parity) >= {"gradcam", "lrp", "saliency"} and all(v == 0.0 for v in parity.values())  # one device
    table = proc.stdout.split("| check (cpu) | status | seconds | figures |")[1]
    assert all(f"| {name} | ok |" in table for name in CHECKS) and "gpu-check on cpu: PASS" in proc.stdout
