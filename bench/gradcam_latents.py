"""Grad-CAM for every latent dimension at once vs one target at a time (JSON lines).

The 128x128 face VAE with 200 latents (the Stuttgart paper's preset), batch 16, maps at the third encoder
convolution (`encoder.blocks.2.conv`). Times, best of `--repeats`:
  auto      - ours, default mode: here forward mode, 64 channel JVPs instead of 200 backwards
  batched   - ours, mode=reverse: one forward, all 200 targets through batched backwards (chunk --chunk)
  loop      - one target per call (forward + backward each, as the Stuttgart authors' code does), our hooks
  loop_shared_forward - ours with batched=False: one forward, one backward per target (the test oracle)
  captum    - Captum's LayerGradCam looped over the 200 targets (a forward + backward each)
  fwd_bwd   - one forward + one ordinary backward of sum(mu): the floor any method pays
and checks that the three methods give the same maps.
Usage: python bench/gradcam_latents.py [--device cpu|cuda] [--repeats 3] [--chunk 200]
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam
from common import emit_record, machine, parse_args, timed

from src.models.vae import VAE
from src.xai import targets
from src.xai.methods.gradcam import gradcam


def face_vae(latent_dim: int = 200, image_size: int = 128) -> VAE:
    """The face_vae preset (conf/model/arch/face_vae.yaml)."""
    return VAE(
        image_size=image_size,
        in_channels=3,
        latent_dim=latent_dim,
        encoder={"channels": [32, 64, 64, 64], "kernel_size": 3, "stride": 2, "padding": 1},
        norm="none",
        activation="leaky_relu",
        activation_kwargs={"negative_slope": 0.3},
        bias=True,
    )


def best_time(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """(best seconds of `repeats` calls, the last call's output)."""
    out = None

    def call():
        nonlocal out
        out = fn()

    return min(timed(call, device, repeats=repeats, warmup=0)), out


def main() -> None:
    args, device = parse_args(repeats=3, batch=16, latents=200, chunk=200, layer="encoder.blocks.2.conv")
    torch.manual_seed(0)
    model = face_vae(args.latents).to(device).eval()
    x = torch.rand(args.batch, 3, 128, 128, device=device)
    forward = targets.latent_mean(model)
    k = args.latents

    def ours(batched: bool, mode: str = "reverse"):
        return gradcam(
            model,
            x,
            targets.select(),
            layer=args.layer,
            forward=forward,
            batched=batched,
            chunk_size=args.chunk,
            mode=mode,
        ).raw

    def per_target_calls():
        return torch.cat(
            [
                gradcam(model, x, targets.select([i]), layer=args.layer, forward=forward, mode="reverse").raw
                for i in range(k)
            ],
            1,
        )

    def captum():
        lgc = LayerGradCam(forward, model.get_submodule(args.layer))
        return torch.stack([lgc.attribute(x, target=i, relu_attributions=True)[:, 0] for i in range(k)], 1)

    def fwd_bwd():
        xx = x.clone().requires_grad_(True)
        forward(xx).sum().backward()
        model.zero_grad(set_to_none=True)

    ours(True), ours(True, "auto"), fwd_bwd()  # warm-up
    t_auto, m_auto = best_time(lambda: ours(True, "auto"), args.repeats, device)
    t_batched, m_batched = best_time(lambda: ours(True), args.repeats, device)
    t_loop, m_loop = best_time(per_target_calls, args.repeats, device)
    t_shared, m_shared = best_time(lambda: ours(False), args.repeats, device)
    t_captum, m_captum = best_time(captum, args.repeats, device)
    t_fb, _ = best_time(fwd_bwd, args.repeats, device)
    err_auto = (m_auto - m_loop).abs().max().item()
    err_shared = (m_shared - m_loop).abs().max().item()
    err_loop = (m_batched - m_loop).abs().max().item()
    err_captum = (m_batched - m_captum).abs().max().item()
    scale = m_loop.abs().max().item()
    info = {
        "bench": "gradcam_latents",
        "batch": args.batch,
        "latents": k,
        "layer": args.layer,
        "chunk": args.chunk,
        **machine(device),
    }
    emit_record({**info, "method": "auto_forward_mode", "seconds": round(t_auto, 4)})
    emit_record({**info, "method": "batched_reverse", "seconds": round(t_batched, 4)})
    emit_record({**info, "method": "loop", "seconds": round(t_loop, 4)})
    emit_record({**info, "method": "loop_shared_forward", "seconds": round(t_shared, 4)})
    emit_record({**info, "method": "captum_loop", "seconds": round(t_captum, 4)})
    emit_record({**info, "method": "forward_backward", "seconds": round(t_fb, 4)})
    emit_record(
        {
            **info,
            "summary": True,
            "auto_speedup_vs_loop": round(t_loop / t_auto, 2),
            "auto_speedup_vs_captum": round(t_captum / t_auto, 2),
            "reverse_speedup_vs_loop": round(t_loop / t_batched, 2),
            "reverse_speedup_vs_captum": round(t_captum / t_batched, 2),
            "auto_speedup_vs_loop_shared_forward": round(t_shared / t_auto, 2),
            "reverse_speedup_vs_loop_shared_forward": round(t_shared / t_batched, 2),
            "auto_over_one_forward_backward": round(t_auto / t_fb, 2),
            "reverse_over_one_forward_backward": round(t_batched / t_fb, 2),
            "max_abs_diff_auto_vs_loop": err_auto,
            "max_abs_diff_reverse_vs_loop": err_loop,
            "max_abs_diff_vs_captum": err_captum,
            "max_abs_diff_shared_vs_loop": err_shared,
            "max_map_value": scale,
        }
    )


if __name__ == "__main__":
    main()
