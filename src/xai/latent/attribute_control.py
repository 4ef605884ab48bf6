"""Does a conditional generator obey its condition? Judge generated images with a classifier."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def attribute_control(
    model,
    inputs: torch.Tensor,
    target: Callable[[torch.Tensor], torch.Tensor],
    *,
    conditions: torch.Tensor,
    attributes: dict[str, int],
    intervene: Callable[[torch.Tensor, str, float], torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Per attribute: encode each image under its own condition with the CVAE `model`, decode it
    with the attribute set off and on, and ask the judge whether the attribute is present.

    `target(images) -> [B, K]` reads the judge's logits for the K attributes, in the order of
    `attributes` (`targets.judged(judge, columns, size)`); `attributes` maps each name to its
    index in the condition. Returns {name: {'acc_on', 'acc_off', 'acc' (mean of the two),
    'judge_acc_real' (the judge on the real images: how far to trust it), 'judge_acc_recon'
    (the judge on the unedited reconstructions: can it read this generator's images at all)}}.
    `intervene(conditions, name, value)`, when given, sets the attribute and mends the rest of
    each condition so it stays one the data can show (turning blond hair on turns black hair
    off); without it only the one entry changes."""
    images = inputs
    mu, _ = model.encode(images, conditions)

    def judged(x: torch.Tensor) -> torch.Tensor:
        return target(x) > 0

    real = judged(images)
    recon = judged(model.decode(mu, conditions))
    if real.shape[1] != len(attributes):
        raise ValueError(f"the target reads {real.shape[1]} judge outputs for {len(attributes)} attributes")
    out = {}
    for j_idx, (name, c_idx) in enumerate(attributes.items()):
        accs = {}
        for value, key in ((0.0, "acc_off"), (1.0, "acc_on")):
            if intervene is not None:
                toggled = intervene(conditions, name, value)
            else:
                toggled = conditions.clone()
                toggled[:, c_idx] = value
            predicted = judged(model.decode(mu, toggled))[:, j_idx]
            accs[key] = (predicted == bool(value)).float().mean().item()
        accs["acc"] = (accs["acc_on"] + accs["acc_off"]) / 2
        truth = conditions[:, c_idx] > 0.5
        accs["judge_acc_real"] = (real[:, j_idx] == truth).float().mean().item()
        accs["judge_acc_recon"] = (recon[:, j_idx] == truth).float().mean().item()
        out[name] = accs
    return out
