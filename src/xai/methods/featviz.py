"""Feature visualisation: first-layer filters, activation maximisation, maximally activating
dataset patches, nearest neighbours in the embedding vs pixel space, and a t-SNE of the embedding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.base.maps import gaussian_blur, min_max_scale
from src.xai.core import OnStep
from src.xai.methods.gradcam import capture, resolve_layer


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The first Conv2d's kernels as images [out, in, k, k], each min-max scaled to [0, 1]."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("the model has no Conv2d layer")
    return min_max_scale(conv.weight.detach().float(), dims=(1, 2, 3))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """[B] mean squared difference between neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(
        dim=(1, 2, 3)
    )


def zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """[B, C, H, W] magnified by `factor` about the centre (bilinear, reflected at the borders),
    same size."""
    theta = torch.tensor([[1 / factor, 0.0, 0.0], [0.0, 1 / factor, 0.0]], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def unit_objective(model: nn.Module, layer: str | None, unit: int, neuron: tuple[int, int] | None = None):
    """x -> [B] the value to maximise: class logit `unit` (layer None), the mean of channel `unit`
    of `layer`'s output, or one neuron (channel `unit` at `neuron` = (row, col))."""

    def objective(x: torch.Tensor) -> torch.Tensor:
        if layer is None:
            return model(x)[:, unit]
        module = resolve_layer(model, layer)
        with capture(module) as box:
            model(x)
        a = box.activation
        if a.dim() == 2:
            return a[:, unit]
        return a[:, unit].mean(dim=(-2, -1)) if neuron is None else a[:, unit, neuron[0], neuron[1]]

    return objective


def class_objectives(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [K, C, H, W] -> [K]: image k's logit for class k (one image per class, grown together)."""

    def objective(x: torch.Tensor) -> torch.Tensor:
        return model(x).gather(1, torch.arange(len(x), device=x.device).view(-1, 1)).squeeze(1)

    return objective


def activation_maximisation(
    objective: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int, int, int],
    steps: int = 200,
    lr: float = 0.05,
    tv: float = 0.0,
    l2: float = 0.0,
    jitter: int = 0,
    scale: float = 0.0,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    device: torch.device | str = "cpu",
    progress: OnStep | None = None,
) -> torch.Tensor:
    """Images of `shape` that maximise objective(x) [B], from seeded noise by Adam, with total
    variation and L2 penalties, random jitter (pixels) and rescaling (+-scale) of the input at each
    step for robustness, and a Gaussian blur every `blur_every` steps. Pixels are kept in
    `value_range`. The objective is differentiated only w.r.t. the image. `progress(done, steps)`
    after each step (it may raise to stop)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = value_range
    x = (lo + (hi - lo) * (0.5 + 0.1 * torch.randn(shape, generator=g))).clamp(lo, hi)
    x = x.to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(int(steps)):
            view = x
            if jitter:
                dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
                view = torch.roll(view, shifts=(dy, dx), dims=(-2, -1))
            if scale:  # zoom about the centre by 1 +- scale, same output size
                view = zoom(view, 1.0 + float(torch.empty(1).uniform_(-scale, scale, generator=g)))
            loss = -objective(view).sum() + tv * total_variation(x).sum() + l2 * x.pow(2).mean(dim=(1, 2, 3)).sum()
            (x.grad,) = torch.autograd.grad(loss, x)
            opt.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur(x, blur_sigma))
                x.clamp_(lo, hi)
            if progress is not None:
                progress(step + 1, int(steps))
    return x.detach()


def _field_probe(model: nn.Module) -> nn.Module:
    """A copy whose weights are positive constants (no gradient cancels), whose BatchNorms are plain
    positive rescalings and whose max-pools average (every pixel of a window counts, not only the max)."""
    import copy

    with torch.inference_mode(False):  # normal tensors, so receptive_field can differentiate them
        probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(0.1)
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    for parent in probe.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.ReLU):
                child.inplace = False
    return probe


def receptive_field(
    model: nn.Module, layer: str, input_shape: tuple[int, int, int], at: tuple[int, int], probe: nn.Module | None = None
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels that can affect `layer`'s output at position
    `at` (row, col): the non-zero support of that activation's gradient w.r.t. the input, on
    `_field_probe(model)` (pass `probe` to reuse one). Exact for conv / pool stacks."""
    probe = probe if probe is not None else _field_probe(model)
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    with torch.inference_mode(False), torch.enable_grad(), capture(resolve_layer(probe, layer)) as box:
        x = torch.ones(1, *input_shape, device=device, requires_grad=True)
        probe(x)
        (g,) = torch.autograd.grad(box.activation[0, :, at[0], at[1]].sum(), x)
    rows = g[0].abs().sum(0).sum(1).nonzero().flatten()
    cols = g[0].abs().sum(0).sum(0).nonzero().flatten()
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _field_crops(
    model: nn.Module, layer: str, images: torch.Tensor, where: torch.Tensor, probe: nn.Module | None = None
) -> torch.Tensor:
    """[k, C, h, w] the receptive field of `layer` at each (image index, row, col) of `where` [k, 3],
    cut from `images` [k or N, C, H, W] (row i of `where` reads images[where[i, 0]]): all of the
    field's size (the field at an interior position), zeros where it leaves the image, on the
    side where it leaves it."""
    probe = probe if probe is not None else _field_probe(model)
    shape = tuple(images.shape[1:])
    # the full receptive field, at an interior position of the layer's output
    with torch.no_grad(), capture(resolve_layer(probe, layer)) as box:
        probe(torch.zeros(1, *shape, device=next((q.device for q in probe.parameters()), images.device)))
    h, w = box.activation.shape[-2:]
    t0, l0, b0, r0 = receptive_field(model, layer, shape, (h // 2, w // 2), probe)
    size = (b0 - t0, r0 - l0)
    crops = []
    for idx, r, c in where.tolist():
        top, left, bottom, right = receptive_field(model, layer, shape, (r, c), probe)
        # a field cut off at the top / left border keeps its content at the bottom / right of the crop
        crop = images[idx, :, top:bottom, left:right].detach().cpu()
        off_r = size[0] - crop.shape[1] if top == 0 and bottom - top < size[0] else 0
        off_c = size[1] - crop.shape[2] if left == 0 and right - left < size[1] else 0
        padded = torch.zeros(images.shape[1], *size, dtype=images.dtype)
        padded[:, off_r : off_r + crop.shape[1], off_c : off_c + crop.shape[2]] = crop[:, : size[0], : size[1]]
        crops.append(padded)
    return torch.stack(crops)


@torch.no_grad()
def top_patches(model: nn.Module, layer: str, images: torch.Tensor, channel: int, k: int = 8, chunk: int = 256):
    """The `k` dataset crops that excite `channel` of `layer` most: (crops [k, C, h, w] of the
    receptive field's size, zeros where it leaves the image, on the side where it leaves it;
    values [k]; (image index, row, col) [k, 3])."""
    acts = []
    module = resolve_layer(model, layer)
    for i in range(0, len(images), chunk):
        with capture(module) as box:
            model(images[i : i + chunk])
        acts.append(box.activation[:, channel].detach())
    a = torch.cat(acts)  # [N, h, w]
    n, h, w = a.shape
    values, flat = a.flatten().topk(min(k, a.numel()))
    where = torch.stack([flat // (h * w), (flat % (h * w)) // w, flat % w], 1)
    return _field_crops(model, layer, images, where), values, where


def deconv_projections(
    model: nn.Module, layer: str, images: torch.Tensor, channel: int, where: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[Zeiler2014]: each single activation of `channel` of `layer` at (image index, row,
    col) in `where` [k, 3] (e.g. `top_patches`'), projected back to pixel space through the
    deconvnet (the transposed layers, with ReLU applied to the signal on the way back; Captum's
    NeuronDeconvolution, all k at once). Returns (projections [k, C, H, W] at full size,
    the same cut to the receptive field like `top_patches`' crops [k, C, h, w]). The deconvnet
    reads the image only through max-pool switches: in a network without max pooling a channel's
    projection is the same pattern wherever it fires [Nie2018]."""
    from captum.attr import NeuronDeconvolution

    with torch.inference_mode(False), torch.enable_grad():  # index tensors made here: autograd saves them
        rows, cols = where[:, 1].clone().to(images.device), where[:, 2].clone().to(images.device)
        pick = torch.arange(len(where), device=images.device)

        def selector(out: torch.Tensor) -> torch.Tensor:
            return out[pick, channel, rows, cols]

        x = images[where[:, 0].clone().to(images.device)]
        x = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)  # also under inference mode
        full = NeuronDeconvolution(model, resolve_layer(model, layer)).attribute(x, selector)
    full = full.detach()
    local = torch.stack([torch.arange(len(where)), where[:, 1].cpu(), where[:, 2].cpu()], 1)
    return full, _field_crops(model, layer, full, local)


@torch.no_grad()
def embed(model: nn.Module, layer: str, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[N, D] the flattened output of `layer` (e.g. the penultimate layer) for each image."""
    module = resolve_layer(model, layer)
    out = []
    for i in range(0, len(images), chunk):
        with capture(module) as box:
            model(images[i : i + chunk])
        out.append(box.activation.detach().flatten(1))
    return torch.cat(out)


def nearest_neighbours(queries: torch.Tensor, pool: torch.Tensor, k: int = 5) -> torch.Tensor:
    """[Q, k] indices into `pool` of each query's k nearest rows (L2), nearest first."""
    return torch.cdist(queries.flatten(1).float(), pool.flatten(1).float()).topk(k, dim=1, largest=False).indices


def tsne(embedding: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """[N, 2] scikit-learn t-SNE of the embedding (PCA initialisation, seeded)."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(2.0, (len(embedding) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        embedding.detach().cpu().double().numpy()
    )


@torch.no_grad()
def penultimate(model: nn.Module, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[N, D] what the last Linear layer (the class layer) receives: the embedding a classifier
    separates its classes in."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the model has no Linear layer to take the embedding from")
    out: list[torch.Tensor] = []
    handle = last[-1].register_forward_pre_hook(lambda m, args: out.append(args[0].detach().flatten(1)))
    try:
        for i in range(0, len(images), chunk):
            model(images[i : i + chunk])
    finally:
        handle.remove()
    return torch.cat(out)
