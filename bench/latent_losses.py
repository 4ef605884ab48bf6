"""What the latent-disentangling loss terms cost per training step (JSON lines).

For the dSprites VAE (10 latents, 64x64x1, batch 64) and the synthfaces face VAE (64 latents,
64x64x3, batch 128): training images/s of `loss_terms` + backward + Adam step (src/models/vae.py)
with the plain ELBO, + the total-correlation term (model.loss.tc_weight), + the attention-
disentanglement loss (model.loss.ad_weight, ad_dims 4 and 8: one batched backward for the maps'
weights, the overlap of all pairs), and both. Each contender's best of --repeats passes over
--batches batches, the contenders timed in turn (common.interleaved_best's order), the whole
comparison --rounds times: the JSON line carries each round's step time, their median and the
relative cost against the plain ELBO of the same round.
Usage: python bench/latent_losses.py [--device auto] [--batches 8] [--repeats 3] [--rounds 3]
"""

from __future__ import annotations

import statistics

import torch
from common import emit, interleaved_best, machine, parse_args

from src.models.optim import build_optimizer
from src.models.vae import VAE

MODELS = {
    "dsprites": (
        dict(
            image_size=64,
            in_channels=1,
            latent_dim=10,
            norm="none",
            activation="relu",
            bias=True,
            encoder={"channels": [32, 32, 64, 64], "kernel_size": 4, "hidden": [256]},
            decoder={"hidden": [256], "project_norm_act": True},
        ),
        64,
    ),
    "synthfaces": (
        dict(
            image_size=64,
            in_channels=3,
            latent_dim=64,
            norm="none",
            activation="leaky_relu",
            activation_kwargs={"negative_slope": 0.3},
            bias=True,
            encoder={"channels": [32, 64, 64, 64]},
        ),
        128,
    ),
}
VARIANTS = {
    "elbo": {},
    "tc": {"tc_weight": 35.0},
    "ad4": {"ad_weight": 1.0, "ad_dims": 4},
    "ad8": {"ad_weight": 1.0, "ad_dims": 8},
    "tc+ad4": {"tc_weight": 35.0, "ad_weight": 1.0, "ad_dims": 4},
}


def stepper(kwargs: dict, loss: dict, batches: list[torch.Tensor], device: torch.device):
    torch.manual_seed(0)
    model = VAE(**kwargs, loss={"reconstruction": "bce", **loss}).to(device).train()
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)

    def run():
        for x in batches:
            optimizer.zero_grad(set_to_none=True)
            model.loss_terms({"image": x}, 1.0)["loss"].backward()
            optimizer.step()

    return run


def main() -> None:
    args, device = parse_args(batches=8, repeats=3, rounds=3)
    for name, (kwargs, batch) in MODELS.items():
        g = torch.Generator().manual_seed(0)
        batches = [
            torch.rand(batch, kwargs["in_channels"], 64, 64, generator=g).round().to(device)
            for _ in range(args.batches)
        ]
        rounds = []
        for _ in range(args.rounds):
            fns = {v: stepper(kwargs, loss, batches, device) for v, loss in VARIANTS.items()}
            rounds.append({v: s / args.batches for v, s in interleaved_best(fns, device, args.repeats).items()})
        for variant in VARIANTS:
            steps = [r[variant] for r in rounds]
            relative = [r[variant] / r["elbo"] - 1 for r in rounds]
            emit(
                "latent_losses",
                model=name,
                variant=variant,
                batch=batch,
                step_seconds=[round(s, 4) for s in steps],
                median_step_seconds=round(statistics.median(steps), 4),
                median_extra_cost=round(statistics.median(relative), 3),
                extra_cost_range=[round(min(relative), 3), round(max(relative), 3)],
                **machine(device),
            )


if __name__ == "__main__":
    main()
