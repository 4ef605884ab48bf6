"""The CAM family for every latent dimension at once vs one target (JSON lines).

The synthfaces VAE (`experiment=synthfaces_vae`: the face VAE geometry at 64 px, 64 latents), batch
16, maps at its cam_layer (the last encoder convolution, 64 channels at 4x4). For each method (the
registered names; Grad-CAM in reverse mode, as the others):
  all   - one call for all 64 latent means (one forward; K backward rows in chunks of --chunk, or
          Score-CAM's C masked forwards of --chunk channels x 16 images)
  one   - the same method for latent 0 alone (the same shared forward, one backward row / the same
          C masked forwards)
timed in turn (all, one, one, all, ...) after a warm-up call each, --repeats runs of each: the min,
the spread (max - min) / min and every run; `all_over_one` = min(all) / min(one), the issue's goal
<= 3; and the largest difference between latent 0's map in both calls.
Usage: python bench/cam_family.py [--device cpu|cuda] [--repeats 3] [--batch 16] [--chunk 64]
[--threads N] (CPU threads; 0: torch's default)
"""

from __future__ import annotations

import torch
from common import compose_cfg, emit_record, machine, parse_args, timed
from hydra.utils import instantiate

from src.xai import targets
from src.xai.core import get_method

METHODS = ("hirescam", "layercam", "xgradcam", "scorecam", "gradcam", "gradcampp")
GOAL = 3.0  # all K targets within 3x one target


def main() -> None:
    args, device = parse_args(repeats=3, batch=16, chunk=64, threads=0)
    if args.threads > 0:  # a steadier figure on a shared CPU: one thread cannot wait on a descheduled other
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = instantiate(compose_cfg(["experiment=synthfaces_vae"]).model, _convert_="all").to(device).eval()
    x = torch.rand(args.batch, model.in_channels, model.image_size, model.image_size, device=device)
    forward = targets.latent_mean(model)
    k = model.latent_dim
    channels = model.get_submodule(model.cam_layer).out_channels
    info = {
        "bench": "cam_family",
        "batch": args.batch,
        "latents": k,
        "layer": model.cam_layer,
        "channels": channels,
        "image_size": model.image_size,
        "chunk": args.chunk,
        **machine(device),
    }
    for name in METHODS:
        method = get_method(name)
        options = {"forward": forward, "chunk_size": args.chunk, **({"mode": "reverse"} if name == "gradcam" else {})}
        outputs = {}

        def run(label, target, options=options, method=method, outputs=outputs):
            outputs[label] = method(model, x, target, **options).raw

        calls = {
            "all": lambda run=run: run("all", targets.select()),
            "one": lambda run=run: run("one", targets.select([0])),
        }
        for call in calls.values():  # warm-up
            call()
        times = {label: [] for label in calls}
        for round_ in range(args.repeats):
            for label in list(calls)[:: -1 if round_ % 2 else 1]:
                times[label] += timed(calls[label], device, repeats=1, warmup=0)
        best = {label: min(t) for label, t in times.items()}
        ratio = best["all"] / best["one"]
        diff = (outputs["all"][:, 0] - outputs["one"][:, 0]).abs().max().item()
        emit_record(
            {
                **info,
                "method": name,
                "all_seconds_min": round(best["all"], 4),
                "one_seconds_min": round(best["one"], 4),
                "all_spread": round((max(times["all"]) - best["all"]) / best["all"], 3),
                "one_spread": round((max(times["one"]) - best["one"]) / best["one"], 3),
                "all_runs": [round(t, 4) for t in times["all"]],
                "one_runs": [round(t, 4) for t in times["one"]],
                "all_over_one": round(ratio, 2),
                "goal": GOAL,
                "goal_met": ratio <= GOAL,
                "max_abs_diff_latent0": diff,
                "max_map_value": outputs["one"].abs().max().item(),
            }
        )


if __name__ == "__main__":
    main()
