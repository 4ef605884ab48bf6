"""The GPU acceptance run: `make gpu-check` (one GPU, under 10 minutes); one pass/fail table.

Each check runs as its own process under a time limit, in a fresh temporary folder, and the rest
still run when one fails:
  strictness      the device-strictness suite (tests/test_device_strict.py: every method, the xai
                  entry points, the morph / path-mask / training loops and their host-sync budgets)
                  on the real device (LATENT_LENS_STRICT_DEVICE; the fake one with --device cpu)
  parity          every registered method on the device (TF32 off) against the CPU, within the
                  float32 bound of its computation (src/testing/tolerance.py)
  fit_<model>     `python -m src.train experiment=<...> debug=fast` per model kind (VAE, CVAE, seg
                  VAE, U-Net, classifier) with trainer=gpu (the fast paths on), fit + test, on
                  generated data (sklearn's digits, the synthetic faces: nothing to download)
  explain         `python -m src.explain` on the VAE checkpoint fit_vae wrote
  precision_16    trainer.precision=16-mixed (bf16-mixed with --device cpu)
  compile         fast.compile=true
  ddp_1           trainer=ddp trainer.devices=1 (trainer=ddp_cpu with --device cpu)
  peak_memory     peak device memory of the all-latent methods (Grad-CAM both modes, Score-CAM,
                  decoder action maps) on the 128 px face VAE, 200 latents, batch 16
  bench_gpu       bench/gpu.py with every child on the device (--tiny with --device cpu)
`--device cpu` runs the same chain on the CPU with small sizes (`make test-full` runs it).
Usage: python bench/gpu_check.py [--device cuda] [--limit 240]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACES = ["data.count=48", "data.build_workers=1", "data.batch_size=8"]
MODELS = {
    "vae": ["experiment=digits_vae"],
    "cvae": ["experiment=synthfaces_cvae", *FACES],
    "seg_vae": ["experiment=synthfaces_seg_vae", *FACES],
    "unet": ["experiment=synthfaces_unet", *FACES],
    "classifier": ["experiment=digits_classifier"],
}


def parity(device: str) -> dict:
    """Every registered method on `device` (TF32 off) against the CPU, each map within the float32
    bound of its computation (src/testing/tolerance.py, with the budgets and the ReLU-kink allowance the
    fast-path tests derive); methods that draw random numbers (their streams differ by device)
    are reported, not judged. Figures: each map's largest error over its bound."""
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from src import xai
    from src.models.classifier import build_cnn
    from src.testing.tolerance import KINKS, assert_close_scaled, map_budget, relative_bound
    from src.training.fast_paths import full_precision
    from src.xai import targets

    torch.manual_seed(0)
    features, head = build_cnn(1, 12, 3, [{"conv": 4, "padding": 1}, {"pool": 2}, {"conv": 6, "padding": 1}], [8])
    model = nn.Sequential(features, head).eval()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    target = targets.classes(torch.tensor([[0, 2], [1, 0], [2, 1]]))
    fast = {"smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 4}, "mask_perturbation": {"steps": 3}}
    random = {"smoothgrad", "mask_perturbation"}
    worst, failed = {}, []
    with full_precision():
        for name in sorted(xai.METHODS):
            opts = fast.get(name, {})
            torch.manual_seed(1)
            want = xai.explain(name, model, x, target, **opts).maps
            torch.manual_seed(1)
            got = xai.explain(name, model.to(device), x.to(device), target, **opts).maps.cpu()
            model.cpu()
            terms, scale = map_budget(name, model, fast, x)
            bound = relative_bound(terms) * (scale if scale is not None else float(want.abs().max()) or 1.0)
            worst[name] = round(float((got - want).abs().max()) / bound, 3)
            try:
                assert_close_scaled(got, want, terms=terms, scale=scale, outliers=KINKS, msg=name)
            except AssertionError:
                if name not in random:
                    failed.append(name)
    return {"status": "ok" if not failed else f"failed: {failed}", "error_over_bound": worst}


def peak_memory(device: str) -> dict:
    """Peak device memory (MB) of each all-latent method on the 128 px face VAE, 200 latents, batch
    16 (on the CPU: the same calls at 32 px, 8 latents, batch 2, no memory figure)."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from gradcam_latents import face_vae

    from src.training.fast_paths import full_precision
    from src.xai import targets
    from src.xai.methods.gradcam import gradcam, scorecam
    from src.xai.scores.ground_truth import decoder_action

    cuda = device != "cpu"
    size, latents, batch = (128, 200, 16) if cuda else (32, 8, 2)
    torch.manual_seed(0)
    model = face_vae(latents, size).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    forward, layer = targets.latent_mean(model), "encoder.blocks.2.conv"
    calls = {
        "gradcam_auto": lambda: gradcam(model, x, targets.select(), layer=layer, forward=forward, mode="auto"),
        "gradcam_reverse": lambda: gradcam(model, x, targets.select(), layer=layer, forward=forward, mode="reverse"),
        "scorecam": lambda: scorecam(model, x, targets.select(), layer=layer, forward=forward),
        "decoder_action": lambda: decoder_action(model, x),
    }
    peaks = {}
    with full_precision():
        for name, call in calls.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            call()
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
            else:
                peaks[name] = None
    return {"status": "ok", "size": size, "latents": latents, "batch": batch, "peak_mb": peaks}


def check(name: str, argv: list[str], limit: float, env: dict | None = None) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"check": name, "status": "timeout", "seconds": limit}
    seconds = round(time.perf_counter() - start, 1)
    out = {
        "check": name,
        "status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
        "seconds": seconds,
    }
    if proc.returncode != 0:
        out["tail"] = (proc.stdout + proc.stderr).strip().splitlines()[-4:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if records:
        out["records"] = records
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", help="cuda (the acceptance run) or cpu (the same chain, small)")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds each check may take")
    args = parser.parse_args()
    gpu = args.device != "cpu"
    trainer = "trainer=gpu" if gpu else "trainer=cpu"
    py = sys.executable
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = [f"paths.data_dir={tmp}/data", "logger=csv", "debug=fast"]
        on_real = ["env", f"LATENT_LENS_STRICT_DEVICE={args.device}"] if gpu else []  # else the fake device
        runs = [
            (
                "strictness",
                [*on_real, py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device_strict.py"],
            )
        ]
        runs += [
            (f"fit_{kind}", [py, "-m", "src.train", *overrides, trainer, *data, f"hydra.run.dir={tmp}/{kind}"])
            for kind, overrides in MODELS.items()
        ]
        vae = f"{tmp}/vae/checkpoints/last.ckpt"
        runs += [
            (
                "explain",
                [
                    py,
                    "-m",
                    "src.explain",
                    "experiment=digits_vae",
                    f"ckpt_path={vae}",
                    trainer,
                    *data,
                    f"hydra.run.dir={tmp}/explain",
                ],
            ),
            (
                "precision_16",
                [
                    py,
                    "-m",
                    "src.train",
                    "experiment=digits_vae",
                    trainer,
                    *data,
                    f"hydra.run.dir={tmp}/p16",
                    f"trainer.precision={'16-mixed' if gpu else 'bf16-mixed'}",
                ],
            ),
            (
                "compile",
                [
                    py,
                    "-m",
                    "src.train",
                    "experiment=digits_vae",
                    trainer,
                    *data,
                    "fast.compile=true",
                    f"hydra.run.dir={tmp}/compile",
                ],
            ),
            (
                "ddp_1",
                [
                    py,
                    "-m",
                    "src.train",
                    "experiment=digits_vae",
                    "trainer=ddp" if gpu else "trainer=ddp_cpu",
                    "trainer.devices=1",
                    *data,
                    f"hydra.run.dir={tmp}/ddp",
                ],
            ),
            ("bench_gpu", [py, "bench/gpu.py", "--device", args.device, *([] if gpu else ["--tiny"])]),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name, argv in runs:
            result = check(name, argv, args.limit * (3 if name == "bench_gpu" else 1), env)
            results.append(result)
            print(json.dumps({"bench": "gpu_check", "device": args.device, **result}), flush=True)
            for after, fn in (("strictness", parity), ("ddp_1", peak_memory)):
                if name != after:
                    continue
                start = time.perf_counter()
                try:
                    found = fn(args.device)
                except Exception as exc:  # noqa: BLE001  (reported in the table; the chain goes on)
                    found = {"status": f"failed ({type(exc).__name__}: {exc})"}
                found = {"check": fn.__name__, "seconds": round(time.perf_counter() - start, 1), **found}
                results.append(found)
                print(json.dumps({"bench": "gpu_check", "device": args.device, **found}), flush=True)
    print(f"\n| check ({args.device}) | status | seconds | figures |\n| --- | --- | --- | --- |")
    for r in results:
        figures = r.get("peak_mb") or r.get("error_over_bound") or ""
        if figures:
            figures = ", ".join(f"{k} {v}" for k, v in figures.items())
        print(f"| {r['check']} | {r['status']} | {r.get('seconds', '')} | {figures} |")
    ok = all(r["status"] == "ok" for r in results)
    print(f"\ngpu-check on {args.device}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
