"""glibc keeping freed buffers (`fast.malloc`, src/run/runtime.py) on vs off (JSON lines).

Each measurement runs in a fresh process (the allocator setting is per process and set before
torch allocates), the two settings alternating for `--rounds` rounds so load drifts hit both:
- training images/s of the face VAE (`celeba_vae` geometry, 64 latents) at 64 and 128 px,
  batch 32 (bench/scaling.py's measurement);
- batched path-mask (the path-mask thesis' FashionMNIST CNN, 8 images, a 100-step path, `--mask-steps`
  Adam steps): seconds per image for 3,000 steps, extrapolated;
- each child's peak resident memory (ru_maxrss), the price of keeping buffers.
Per setting: the median over rounds, min and max. With `--suite`, also the wall time of the fast
test suite (`pytest -m "not slow"`) once per setting (LATENT_LENS_MALLOC=0 switches it off there).
Usage: python bench/malloc.py [--rounds 3] [--mask-steps 20] [--suite]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def child(setting: str, what: str, mask_steps: int) -> dict:
    from src.run.runtime import keep_malloc_buffers

    applied = keep_malloc_buffers(setting == "on")  # before torch allocates anything
    import torch
    from common import compose_cfg, train_step_rate
    from hydra.utils import instantiate

    torch.manual_seed(0)
    if what.startswith("train"):
        size = int(what.removeprefix("train"))
        cfg = compose_cfg(["experiment=celeba_vae", f"data.image_size={size}", "model.latent_dim=64"])
        model = instantiate(cfg.model, _convert_="all")
        batches = [{"image": torch.rand(32, 3, size, size)} for _ in range(6)]
        value = {"train_images_per_s": round(train_step_rate(model, batches, torch.device("cpu"), repeats=3), 1)}
    else:
        from morph_batching import models

        from src.xai.morph.path_mask import PathMaskConfig, path_mask
        from src.xai.morph.semantic import radial_path

        vae, clf = models(torch.device("cpu"))
        z0, z1 = torch.randn(8, vae.latent_dim), torch.randn(8, vae.latent_dim)
        with torch.no_grad():
            path = vae.decode(radial_path(z0, z1, 100).flatten(0, 1)).view(100, 8, 1, 28, 28)
        o = torch.zeros(8, dtype=torch.long)
        path_mask(clf, path, o, PathMaskConfig(steps=2))  # warm-up
        start = time.perf_counter()
        path_mask(clf, path, o, PathMaskConfig(steps=mask_steps))
        per_step = (time.perf_counter() - start) / mask_steps
        value = {"path_mask_s_per_image_3000_steps": round(per_step * 3000 / 8, 1)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"applied": applied, **value, "peak_rss_mb": round(peak_mb)}


def run_child(setting: str, what: str, mask_steps: int) -> dict:
    env = CLEAN_ENV | {"PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", setting, what, "--mask-steps", str(mask_steps)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def suite_seconds(setting: str) -> float:
    env = CLEAN_ENV | {"LATENT_LENS_MALLOC": "1" if setting == "on" else "0"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mask-steps", type=int, default=20)
    parser.add_argument("--suite", action="store_true", help="also time the fast test suite per setting")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.mask_steps)))
        return
    import torch
    from common import emit, machine

    results: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for what in ("train64", "train128", "pathmask"):
            for setting in ("on", "off")[:: -1 if round_ % 2 else 1]:
                results.setdefault((what, setting), []).append(run_child(setting, what, args.mask_steps))
    for (what, setting), rows in results.items():
        key = next(k for k in rows[0] if k not in ("applied", "peak_rss_mb"))
        values = [r[key] for r in rows]
        emit(
            "malloc",
            what=what,
            malloc=setting,
            applied=rows[0]["applied"],
            metric=key,
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            runs=len(values),
            peak_rss_mb=max(r["peak_rss_mb"] for r in rows),
            **machine(torch.device("cpu")),
        )
    if args.suite:
        for setting in ("on", "off"):
            emit(
                "malloc",
                what="test_suite",
                malloc=setting,
                metric="wall_s",
                median=round(suite_seconds(setting), 1),
                runs=1,
                **machine(torch.device("cpu")),
            )


if __name__ == "__main__":
    main()
