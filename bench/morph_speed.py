"""Semantic morphing of 100 FashionMNIST test images on trained models, phase by phase (JSON lines).

What `python -m src.explain experiment=fashion_path_mask` runs, without the path-mask: the per-class
norm statistics over the training set, the starting codes (100 draws of q(z|x) each), the semantic
morph with the thesis' stopping rule (2-class entropy < 0.01 bits and argmax o, at most 5,000 Adam
steps), the radial path and its input gradients. One line per phase with its seconds, then a
summary: error rate, share that met the entropy stop, mean steps, total seconds. Goal (issue 21):
100 images <= 2 minutes on a 2-core CPU at the same error rate. glibc keeps freed buffers as the
entry points do (`fast.malloc`). `--profile N` instead prints torch.profiler's table of N morphing
steps at the full batch (where the time goes).
`--precision bf16` decodes and classifies under bfloat16 autocast during the morph; `--no-fold` runs the
modules as they are (default: batch norm folded, channels-last convolutions, `src.xai.folding.folded`).
Usage: python bench/morph_speed.py CLASSIFIER.ckpt VAE.ckpt [--n 100] [--max-steps 5000] [--precision 32]
       [--no-fold] [--profile 0]
"""

from __future__ import annotations

import time

import torch
from common import emit, fashion_pair, machine, train_norm_means

from src.xai import targets
from src.xai.folding import folded
from src.xai.morph.pipeline import MorphConfig, morph_path
from src.xai.morph.semantic import morph_targets, semantic_morph


def main() -> None:
    parser, load = fashion_pair(n=100)
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--no-fold", dest="fold", action="store_false")
    args = parser.parse_args()
    device, clf, vae, data, rows, batch = load(args)
    x, labels = batch["image"].to(device), batch["label"].to(device)
    if args.profile:
        with torch.no_grad():
            mu, _ = vae.encode(x)
            a, o = morph_targets(clf(x), labels)
        cast = torch.bfloat16 if args.precision == "bf16" else None
        c, v = folded(clf, vae) if args.fold else (clf, vae)
        semantic_morph(
            v.decode, c, mu, a, o, torch.full((10,), 4.0), max_steps=5, entropy_tol=-1.0, autocast=cast
        )  # warm-up
        with torch.profiler.profile(record_shapes=True) as prof:
            semantic_morph(
                v.decode, c, mu, a, o, torch.full((10,), 4.0), max_steps=args.profile, entropy_tol=-1.0, autocast=cast
            )
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
        return
    t0 = time.perf_counter()
    means = train_norm_means(vae, data, device)
    emit_phase = {"norm statistics": time.perf_counter() - t0}
    marks: list[tuple[str, float]] = []

    def phase(name: str):
        marks.append((name, time.perf_counter()))
        return None

    t1 = time.perf_counter()
    out = morph_path(
        clf,
        x,
        targets.runner_up(labels),
        vae=vae,
        norm_means=means,
        progress=phase,
        morph=MorphConfig(max_steps=args.max_steps, precision=args.precision, fold=args.fold),
    )
    end = time.perf_counter()
    marks.append(("end", end))
    emit_phase["starting codes"] = marks[1][1] - marks[0][1]
    emit_phase["semantic morph"] = out.morph_seconds
    emit_phase["path and gradients"] = end - marks[1][1] - out.morph_seconds
    for name, seconds in emit_phase.items():
        emit("morph_speed", phase=name, seconds=round(seconds, 2))
    summary = out.summary()
    emit(
        "morph_speed",
        summary=True,
        images=args.n,
        precision=args.precision,
        fold=args.fold,
        error_rate=round(summary["error_rate"], 4),
        converged=round(summary["converged_rate"], 4),
        mean_steps=round(summary["mean_steps"], 1),
        morph_seconds=round(out.morph_seconds, 1),
        total_seconds=round(end - t1 + emit_phase["norm statistics"], 1),
        **machine(device),
    )


if __name__ == "__main__":
    main()
