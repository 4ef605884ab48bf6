"""The gradient-based CAM family's core, shared by the explanations (`src.xai.methods.gradcam`)
and the models' attention-disentanglement loss: the gradients of K scalars with respect to a
layer's output from batched backward passes, and the maps of each variant from them.

With g = d y_k / d A for a layer output A [B, C, h, w]:

    gradcam    alpha_c = mean_pq g_c[p, q],                     M_k = ReLU(sum_c alpha_c A_c)
    gradcampp  alpha_c = sum_pq a_c[p, q] ReLU(g_c[p, q])      [Chattopadhay2018], eq. 19
    hirescam   M_k = ReLU(sum_c g_c * A_c)                      element-wise [Draelos2020]
    layercam   M_k = ReLU(sum_c ReLU(g_c) * A_c)                element-wise [Jiang2021]
    xgradcam   alpha_c = sum_pq A_c[p, q] / (sum_pq A_c + eps) * g_c[p, q]   [Fu2020]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

VARIANTS = ("gradcam", "gradcampp", "hirescam", "layercam", "xgradcam")  # the gradient-based CAMs
XGRADCAM_EPS = 1e-7  # in XGradCAM's sum_pq A_c + eps, as pytorch-grad-cam


def cam_variant(method: str) -> str:
    """`method` when it is one of VARIANTS, else a ValueError listing them."""
    if method not in VARIANTS:
        hint = " (scorecam needs no gradients: call the scorecam function itself)" if method == "scorecam" else ""
        raise ValueError(f"unknown Grad-CAM method {method!r}; choose one of {VARIANTS}{hint}")
    return method


def layer_gradients(
    activation: torch.Tensor, scores: torch.Tensor, batched: bool = True, chunk_size: int = 64
) -> Iterator[torch.Tensor]:
    """dy_k/dA for every k, in chunks of [k, B, C, h, w]. Samples are independent (eval mode), so
    the gradient of sum_b y[b, k] w.r.t. A gives every sample's own gradient in one pass; a chunk
    of targets shares one batched backward. Falls back to one backward per target when an op
    has no batching rule."""
    k_total, chunk_size = scores.shape[1], max(1, int(chunk_size))
    start = 0
    if batched:
        eye = torch.eye(k_total, dtype=scores.dtype, device=scores.device)
        try:
            while start < k_total:
                stop = min(start + chunk_size, k_total)
                grad_outputs = eye[start:stop, None, :].expand(stop - start, scores.shape[0], k_total)
                (g,) = torch.autograd.grad(scores, activation, grad_outputs, retain_graph=True, is_grads_batched=True)
                yield g
                start = stop
            return
        except RuntimeError as exc:
            warnings.warn(f"batched Grad-CAM backward failed ({exc}); using the per-target loop", stacklevel=2)
    for k in range(start, k_total):
        (g,) = torch.autograd.grad(scores[:, k].sum(), activation, retain_graph=True)
        yield g.unsqueeze(0)


def cam_from_gradients(
    activation: torch.Tensor, grads: torch.Tensor, method: str = "gradcam"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps [K, B, h, w], weights [K, B, C]) from A [B, C, h, w] and dy_k/dA [K, B, C, h, w] for
    one of VARIANTS (see the module docstring; `CamMaps` says what `weights` holds for each)."""
    method = cam_variant(method)
    if method in ("hirescam", "layercam"):  # element-wise: no channel weight
        # one product [K, B, C, h, w], summed over the channels (the map) and the pixels (`weights`);
        # faster on a CPU than two einsums, which permute the gradients to a matmul's layout
        prod = grads * activation if method == "hirescam" else grads.clamp_min(0).mul_(activation)
        return prod.sum(2).clamp_min_(0), prod.sum(dim=(-2, -1)).div_(activation.shape[-2] * activation.shape[-1])
    if method == "gradcam":
        weights = grads.mean(dim=(-2, -1))
    elif method == "xgradcam":
        share = activation / (activation.sum(dim=(-2, -1), keepdim=True) + XGRADCAM_EPS)
        weights = (grads * share).sum(dim=(-2, -1))
    else:
        # the closed form for an exponential target ([Chattopadhay2018], eq. 19; as pytorch-grad-cam)
        g2 = grads.pow(2)
        denom = 2 * g2 + activation.sum(dim=(-2, -1), keepdim=True) * g2 * grads
        a = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
        weights = (a * grads.clamp_min(0)).sum(dim=(-2, -1))
    maps = torch.einsum("kbc,bchw->kbhw", weights, activation).clamp_min(0)
    return maps, weights
