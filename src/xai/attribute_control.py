"""Does a conditional generator obey its condition? Judge generated images with a classifier."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def attribute_control(
    encode: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    judge: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    conditions: torch.Tensor,
    attributes: dict[str, tuple[int, int]],
    judge_size: int | None = None,
    intervene: Callable[[torch.Tensor, str, float], torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Per attribute: encode each image under its own condition, decode it with the attribute
    set off and on, and ask the judge (multi-label logits) whether the attribute is present.

    `attributes` maps a name to (index in the condition, index in the judge's outputs). Returns
    {name: {'acc_on', 'acc_off', 'acc' (mean of the two), 'judge_acc_real' (the judge on the
    real images: how far to trust it), 'judge_acc_recon' (the judge on the unedited
    reconstructions: can it read this generator's images at all)}}.
    `intervene(conditions, name, value)`, when given, sets the attribute and mends the rest of
    each condition so it stays one the data can show (turning blond hair on turns black hair
    off); without it only the one entry changes."""
    mu, _ = encode(images, conditions)

    def judged(x: torch.Tensor) -> torch.Tensor:
        if judge_size is not None and x.shape[-1] != judge_size:
            x = F.interpolate(x, size=(judge_size, judge_size), mode="bilinear", antialias=True, align_corners=False)
        return judge(x) > 0

    real = judged(images)
    recon = judged(decode(mu, conditions))
    out = {}
    for name, (c_idx, j_idx) in attributes.items():
        accs = {}
        for value, key in ((0.0, "acc_off"), (1.0, "acc_on")):
            if intervene is not None:
                toggled = intervene(conditions, name, value)
            else:
                toggled = conditions.clone()
                toggled[:, c_idx] = value
            predicted = judged(decode(mu, toggled))[:, j_idx]
            accs[key] = (predicted == bool(value)).float().mean().item()
        accs["acc"] = (accs["acc_on"] + accs["acc_off"]) / 2
        truth = conditions[:, c_idx] > 0.5
        accs["judge_acc_real"] = (real[:, j_idx] == truth).float().mean().item()
        accs["judge_acc_recon"] = (recon[:, j_idx] == truth).float().mean().item()
        out[name] = accs
    return out
