"""`make bench-gpu`'s script runs end to end with tiny sizes on the CPU: every bench child starts,
prints its JSON lines and lands in the table (slow: about a minute; the figures are not checked,
speed lives in BENCHMARKS.md)."""

import json
import subprocess
import sys

import pytest

from src.testing.compose import ROOT


@pytest.mark.slow
def test_bench_gpu_chain_runs_tiny_on_cpu():
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--limit", "240"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    status = {r["child"]: r["status"] for r in records if r.get("bench") == "gpu"}
    children = ("fast_paths", "gradcam_latents", "morph_batching", "explain_overhead", "data_loaders")
    assert status == dict.fromkeys(children, "ok")
    benches = {r["bench"] for r in records}
    assert {"fast_path_train_step", "gradcam_latents", "morph_batching", "explain_overhead", "loader_digits"} <= benches
    assert all(r["device"] == "cpu" for r in records if r.get("bench") != "gpu")  # every child on the device asked
    table = proc.stdout.split("| bench | what | figures |")[1]
    for name in children:
        assert f"| {name} |" in table
