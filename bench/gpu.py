"""What the project states about GPUs, measured in one run: `make bench-gpu` (JSON lines + a table).

Runs, one after the other and each under a time limit, the benches behind the GPU claims:
  fast_paths        training images/s per model with the fast paths off and on (bf16 autocast,
                    channels_last, torch.compile on a GPU) and their speed-ups over fp32;
  gradcam_latents   Grad-CAM of every latent dimension vs one forward + backward (goal <= 3x) and
                    vs the per-target loops;
  morph_batching    batched vs one-at-a-time semantic morphing and path-mask (goal >= 20x at 64);
  explain_overhead  the explanation callbacks' share of a training epoch (synthetic faces: no data
                    to fetch on a fresh machine);
  data_loaders      each datamodule's loader against its VAE's training step on the device, CelebA's
                    layout at 128 px with 0 and 8 loader workers.
Every child's JSON lines are passed through; a failed or timed-out child is reported as a line
of its own and the rest still run. The full sizes take about 5-7 minutes on one GPU; `--tiny`
shrinks every bench so that `--device cpu --tiny` checks the whole chain in under a minute (the
suite runs it). Usage: python bench/gpu.py [--device cuda] [--tiny] [--limit 150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FULL = {
    "fast_paths": ["bench/fast_paths.py", "--steps", "20", "--repeats", "3"],
    "gradcam_latents": ["bench/gradcam_latents.py", "--repeats", "3"],
    "morph_batching": ["bench/morph_batching.py", "--n", "64", "--morph-steps", "100", "--mask-steps", "50"],
    "explain_overhead": ["bench/explain_overhead.py", "--experiments", "synthfaces_vae", "--batches", "30"],
    "data_loaders": [
        "bench/data_loaders.py",
        "--celeba-count",
        "3000",
        "--workers",
        "8",
        "--celeba-step-batches",
        "10",
    ],
}
TINY = {
    "fast_paths": ["bench/fast_paths.py", "--steps", "1", "--repeats", "1", "--compile", "off"],
    "gradcam_latents": ["bench/gradcam_latents.py", "--repeats", "1", "--batch", "2", "--latents", "8", "--chunk", "8"],
    "morph_batching": [
        "bench/morph_batching.py",
        "--n",
        "4",
        "--morph-steps",
        "3",
        "--mask-steps",
        "2",
        "--path-steps",
        "4",
    ],
    "explain_overhead": ["bench/explain_overhead.py", "--experiments", "digits_vae", "--batches", "2"],
    "data_loaders": [
        "bench/data_loaders.py",
        "--celeba-count",
        "150",
        "--notmnist-per-letter",
        "20",
        "--cifar-per-batch",
        "1100",
        "--step-batches",
        "1",
        "--celeba-step-batches",
        "1",
        "--workers",
        "1",
    ],
}
HEADLINE = (
    "speedup",
    "speedup_vs_fp32",
    "images_per_s",
    "images_per_s_batched",
    "auto_over_one_forward_backward",
    "reverse_over_one_forward_backward",
    "auto_speedup_vs_loop",
    "share_of_epoch",
    "loader_to_step",
)


def run(name: str, argv: list[str], device: str, limit: float) -> list[dict]:
    cmd = [sys.executable, *argv, "--device", device]  # every child on the device asked for
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return [{"bench": "gpu", "child": name, "status": "timeout", "limit_s": limit}]
    records = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    status = "ok" if proc.returncode == 0 and records else f"failed (exit {proc.returncode})"
    tail = proc.stderr.strip().splitlines()[-3:] if status != "ok" else []
    seconds = round(time.perf_counter() - start, 1)
    return [
        *records,
        {
            "bench": "gpu",
            "child": name,
            "status": status,
            "seconds": seconds,
            **({"stderr_tail": tail} if tail else {}),
        },
    ]


def label(record: dict) -> str:
    parts = [
        str(record[k]) for k in ("model", "variant", "method", "experiment", "dataset", "num_workers") if k in record
    ]
    return " / ".join(parts) if parts else ("summary" if record.get("summary") else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds each bench may take")
    args = parser.parse_args()
    rows = []
    for name, argv in (TINY if args.tiny else FULL).items():
        for record in run(name, argv, args.device, args.limit):
            print(json.dumps(record), flush=True)
            figures = {k: record[k] for k in HEADLINE if isinstance(record.get(k), int | float)}
            if record.get("bench") == "gpu" and record.get("status") != "ok":
                rows.append((name, "FAILED", record["status"]))
            elif figures:
                rows.append((name, label(record), ", ".join(f"{k} {v}" for k, v in figures.items())))
    print("\n| bench | what | figures |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
