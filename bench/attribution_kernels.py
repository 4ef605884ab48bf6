"""The attribution methods (src.xai.methods.attribution.attribute) vs Captum on the same inputs (JSON lines).

The path-mask thesis' FashionMNIST CNN (`fashion_classifier` model, random init: timing does not depend on
the weights), a batch of `--batch` 28x28 images, each explained for its top class. For every method
Captum has, ours and Captum called directly with the same settings: seconds (best of `--repeats`, timed in turn),
ours / Captum (goal: <= 1.05, i.e. the wrapper costs nothing), Captum / Captum timed as a third
contender (the noise floor of the same call on this machine) and the largest difference between
the two attributions. Grad-CAM is ours (batched hooks) vs Captum's LayerGradCam + upsampling.
Methods Captum lacks (Grad-CAM++, mask perturbation, excitation backprop) are timed alone.
Usage: python bench/attribution_kernels.py [--device auto] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from common import compose_cfg, emit, interleaved_best, machine, parse_args, timed
from hydra.utils import instantiate

from src.xai import Attribution, Baseline, explain, targets
from src.xai.methods.gradcam import resolve_layer


def attribute(method: str, model, x, t, **options):
    """[B, C, H, W] (Grad-CAM: [B, 1, H, W]) of the registered method for classes t."""
    result = explain(method, model, x, targets.classes(t), **options)
    return result.attributions[:, 0] if isinstance(result, Attribution) else result.maps[:, :1]


def captum_calls(model, x, t) -> dict:
    """Captum, called as its documentation shows, with our defaults' settings."""
    c = x.shape[1]
    layer = resolve_layer(model, model.cam_layer)

    def gradcam():
        maps = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(maps, x.shape[-2:], interpolate_mode="bilinear")

    return {
        "saliency": (lambda: Saliency(model).attribute(x, target=t, abs=False), {}),
        "input_x_gradient": (lambda: InputXGradient(model).attribute(x, target=t), {}),
        "guided_backprop": (lambda: GuidedBackprop(model).attribute(x, target=t), {}),
        "deconvnet": (lambda: Deconvolution(model).attribute(x, target=t), {}),
        "smoothgrad": (
            lambda: NoiseTunnel(Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=25, stdevs=0.15 * float(x.amax() - x.amin()), target=t
            ),
            {"samples": 25, "noise": 0.15},
        ),
        "integrated_gradients": (
            lambda: IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=32),
            {"steps": 32, "baseline": Baseline.constant(0.0)},
        ),
        "occlusion": (
            lambda: Occlusion(model).attribute(
                x, sliding_window_shapes=(c, 4, 4), strides=(c, 2, 2), baselines=0.5, target=t
            ),
            {"patch": 4, "stride": 2, "baseline": Baseline.constant(0.5)},
        ),
        "gradcam": (gradcam, {}),
    }


def main() -> None:
    args, device = parse_args(batch=16, repeats=5)
    torch.manual_seed(0)
    model = instantiate(compose_cfg(["experiment=fashion_classifier"]).model, _convert_="all").to(device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    with torch.no_grad():
        t = model(x).argmax(1)
    for method, (captum, options) in captum_calls(model, x, t).items():
        # Captum timed twice: the second copy's ratio is this machine's noise floor for the same call
        best = interleaved_best(
            {
                "ours": lambda m=method, o=options: attribute(m, model, x, t, **o),
                "captum": captum,
                "captum_again": captum,
            },
            device,
            repeats=args.repeats,
        )
        ours_s, captum_s = best["ours"], best["captum"]
        ours, theirs = attribute(method, model, x, t, **options), captum().detach()
        same = method != "smoothgrad"  # both draw their own noise
        emit(
            "attribution_vs_captum",
            method=method,
            ours_s=round(ours_s, 4),
            captum_s=round(captum_s, 4),
            ratio=round(ours_s / captum_s, 3),
            captum_vs_itself=round(best["captum_again"] / captum_s, 3),
            goal="<= 1.05",
            met=ours_s <= 1.05 * captum_s,
            max_abs_diff=float((ours - theirs).abs().max()) if same else None,
            scale=float(theirs.abs().max()),
            batch=args.batch,
            **machine(device),
        )
    for method, options in (
        ("gradcampp", {}),
        ("mask_perturbation", {"steps": 100}),
        ("excitation_backprop", {}),
        ("lrp", {}),
    ):
        seconds = min(timed(lambda m=method, o=options: attribute(m, model, x, t, **o), device, repeats=2))
        emit(
            "attribution_ours_only",
            method=method,
            seconds=round(seconds, 4),
            ms_per_image=round(1e3 * seconds / args.batch, 2),
            options=options,
            batch=args.batch,
            **machine(device),
        )


if __name__ == "__main__":
    main()
