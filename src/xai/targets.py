"""Explanation targets: what an explanation explains.

A target is a callable `target(output) -> [B, K]`: it reads the output of the model (or of the
`forward` a method is given) and returns K scalars per sample; a method explains each of the K
columns. The helpers below build the usual ones:

- `classes(c)`: class logits - one class for all samples (an int), one per sample ([B] tensor)
  or several per sample ([B, K]); `select(columns)` any columns of a [B, N] output (latent
  means: `select([3, 7])` with `forward=latent_mean(model)`); `per_sample(indices)`;
- `direction(v)`: the projection of a [B, N] output on a direction (an attribute direction in
  latent space);
- `segmentation_region(classes, region)`: Seg-Grad-CAM's sum of class logits over a pixel set;
- `runner_up(labels)`: the second most likely class (the true class where the prediction is
  wrong), fixed on the inputs' logits - what semantic morphing morphs into;
- `judged(judge, columns)`: a classifier's logits for generated images (attribute control).

Forwards produce the output a target reads: `latent_mean(model)` (x -> mu),
`sampled_latent(model)`, `reconstruction_error(model)`.

Column targets (`classes`, `select`, `per_sample`) know their indices, so Captum gets them as
its own `target` argument (exactly as `Method(model).attribute(x, target=t)`); any other callable
is wrapped into the forward and must treat samples independently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Target = Callable[[torch.Tensor], torch.Tensor]
Forward = Callable[[torch.Tensor], torch.Tensor]


class Columns:
    """Columns of a [B, N] output: the same `columns` for every sample (None = all N), or
    `indices[b, k]` per sample."""

    def __init__(self, columns: Sequence[int] | torch.Tensor | None = None, indices: torch.Tensor | None = None):
        if columns is not None and indices is not None:
            raise ValueError("give shared columns or per-sample indices, not both")
        self.columns = None if columns is None else torch.as_tensor(columns, dtype=torch.long).flatten()
        self.indices = None if indices is None else torch.as_tensor(indices).long()
        if self.indices is not None and self.indices.dim() == 1:
            self.indices = self.indices.view(-1, 1)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 2:
            raise ValueError(f"a column target reads [B, N] outputs, got {tuple(out.shape)}")
        if self.indices is not None:
            if self.indices.shape[0] != out.shape[0]:
                raise ValueError(
                    f"the target has indices for {self.indices.shape[0]} samples, the output {out.shape[0]}"
                )
            return out.gather(1, self.indices.to(out.device))
        return out if self.columns is None else out[:, self.columns.to(out.device)]

    def width(self, n_outputs: int | None = None) -> int | None:
        """K, or None while it depends on the output (all columns) and `n_outputs` is not given."""
        if self.indices is not None:
            return self.indices.shape[1]
        if self.columns is not None:
            return len(self.columns)
        return n_outputs

    def index(self, k: int, batch: int) -> torch.Tensor:
        """[B] the output column that target column k reads, per sample."""
        if self.indices is not None:
            return self.indices[:, k]
        col = k if self.columns is None else int(self.columns[k])
        return torch.full((batch,), col, dtype=torch.long)

    def __repr__(self) -> str:
        what = f"indices={tuple(self.indices.shape)}" if self.indices is not None else f"columns={self.columns}"
        return f"Columns({what})"


def select(indices: Sequence[int] | torch.Tensor | None = None) -> Columns:
    """Columns `indices` of a [B, N] output for every sample (all columns when None): class
    logits, latent means."""
    return Columns(columns=indices)


def per_sample(indices: torch.Tensor) -> Columns:
    """Column indices[b, k] for sample b: [B, K] (e.g. each sample's own top classes); a [B]
    tensor is one column per sample."""
    return Columns(indices=indices)


def classes(c: int | Sequence[int] | torch.Tensor) -> Columns:
    """Class logits: an int (one class for every sample), a [B] tensor or list (one class per
    sample) or a [B, K] tensor (K classes per sample)."""
    if isinstance(c, int):
        return Columns(columns=[c])
    t = torch.as_tensor(c).long()
    if t.dim() == 0:
        return Columns(columns=[int(t)])
    return Columns(indices=t)


def shared_columns(target: Columns | Sequence[int], what: str = "columns") -> list[int]:
    """The columns of a `select(...)` target (or a plain list of indices): for methods that act
    on the same columns of every sample (latent sweeps, attribute sweeps)."""
    if isinstance(target, Columns):
        if target.columns is None or target.indices is not None:
            raise ValueError(f"name the {what} with targets.select([...])")
        return [int(i) for i in target.columns]
    return [int(i) for i in target]


def as_target(target) -> Target:
    """A target from what older code passed: a callable stays; an int, list or tensor of class
    indices becomes `classes(...)`."""
    if callable(target):
        return target
    return classes(target)


def class_indices(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """[B, K] the class (output column) each target column reads, for methods defined on one
    class per explanation (LRP, excitation backprop, morphing): column targets give theirs,
    a `runner_up` is fixed on `logits` [B, N]."""
    if isinstance(target, RunnerUp):
        target = target.resolve(logits)
    if not isinstance(target, Columns):
        raise ValueError(
            f"this method explains classes: give the target as targets.classes(...), select(...) "
            f"or per_sample(...), not {target!r}"
        )
    k = target.width(logits.shape[1])
    return torch.stack([target.index(i, logits.shape[0]) for i in range(k)], 1).to(logits.device)


class RunnerUp:
    """The class to explain a decision against: the second most likely class, or the true class
    (`labels`) where the prediction is wrong. `resolve(logits)` fixes it on the inputs' logits."""

    def __init__(self, labels: torch.Tensor | None = None) -> None:
        self.labels = labels

    def resolve(self, logits: torch.Tensor) -> Columns:
        top = logits.topk(2, dim=1).indices
        o = top[:, 1]
        if self.labels is not None:
            labels = self.labels.to(o.device).long()
            o = torch.where(top[:, 0] != labels, labels, o)
        return Columns(indices=o)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return self.resolve(out.detach())(out)


def runner_up(labels: torch.Tensor | None = None) -> RunnerUp:
    """See RunnerUp."""
    return RunnerUp(labels)


def top_classes(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """[B, k] the k most likely classes of each sample, most likely first."""
    return logits.topk(k, dim=1).indices


def direction(v: torch.Tensor) -> Target:
    """[B, 1] the projection <out, v / ||v||> of a [B, N] output on the direction v [N]."""
    unit = v.flatten() / v.flatten().norm().clamp_min(1e-12)
    return lambda out: (out @ unit.to(out.device, out.dtype)).unsqueeze(1)


def judged(judge: Forward, columns: Sequence[int], size: int | None = None) -> Target:
    """[B, K] a multi-label judge's logits `columns` for images (resized to `size` first when
    given): reads a generator's decodings."""
    cols = torch.as_tensor(list(columns), dtype=torch.long)

    def target(images: torch.Tensor) -> torch.Tensor:
        if size is not None and images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return judge(images)[:, cols.to(images.device)]

    return target


class Bound:
    """A forward bound to per-sample tensors: `fn(x, *args)` called as forward(x). Methods that
    evaluate the forward on an expanded batch (SmoothGrad's noise copies, IG's steps, occlusion's
    windows) hand `args` to Captum as additional forward arguments, which it expands alike."""

    def __init__(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> None:
        self.fn, self.args = fn, args

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args)


def latent_mean(model, c: torch.Tensor | None = None) -> Forward:
    """Forward x -> mu [B, latent_dim] ([Liu2020] differentiate the posterior mean); with a
    condition c [B, ...] (a CVAE) the forward is `Bound` to it. Uses the model's `encode_mean` when
    it has one (mu without logvar), else `encode(x, c)[0]`."""
    mean = getattr(model, "encode_mean", None) or (lambda x, cond=None: model.encode(x, cond)[0])
    if c is None:

        def forward(x: torch.Tensor) -> torch.Tensor:
            return mean(x)

        forward.per_sample = True  # each row of mu reads its own image: callers may cut the batch
        return forward
    return Bound(lambda x, cond: mean(x, cond), c)


def sampled_latent(model, c: torch.Tensor | None = None, seed: int = 0) -> Forward:
    """Forward x -> z = mu + eps * sigma with eps from a seeded generator: [Panday2021]'s
    variant, reproducible (the same eps for the same batch shape and seed)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        mu, logvar = model.encode(x, c)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        eps = torch.randn(mu.shape, generator=g, dtype=mu.dtype).to(mu.device)
        return mu + eps * torch.exp(0.5 * logvar)

    return forward


LATENTS = ("mean", "sampled")


def latent(model, c: torch.Tensor | None = None, kind: str = "mean", seed: int = 0) -> Forward:
    """`latent_mean` (kind 'mean') or `sampled_latent` (kind 'sampled')."""
    if kind == "mean":
        return latent_mean(model, c)
    if kind == "sampled":
        return sampled_latent(model, c, seed)
    raise ValueError(f"unknown latent {kind!r}; choose one of {LATENTS}")


def segmentation_region(classes: Sequence[int] | int, region: torch.Tensor | None = None) -> Target:
    """Seg-Grad-CAM target [Vinogradova2020]: sum of class-c logits over a pixel set.

    Output is [B, C, H, W] logits (C = 1 for a binary mask). `region` is a [H, W], [B, H, W] or
    [B, K, H, W] 0/1 mask (one pixel, a box, an object); None = every pixel predicted as that
    class (argmax; > 0 for binary). Returns [B, K], K = len(classes)."""
    classes = [classes] if isinstance(classes, int) else list(classes)

    def target(out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 4:
            raise ValueError(f"segmentation_region needs [B, C, H, W] logits, got {tuple(out.shape)}")
        logits = out[:, classes]  # [B, K, H, W]
        if region is None:
            if out.shape[1] == 1:  # binary: the pixels with a positive logit
                hit = (out > 0).expand_as(logits)
            else:
                hit = out.argmax(1, keepdim=True) == torch.as_tensor(classes, device=out.device).view(1, -1, 1, 1)
            mask = hit.to(logits.dtype)
        else:
            mask = region.to(device=out.device, dtype=logits.dtype)
            while mask.dim() < 4:
                mask = mask.unsqueeze(0 if mask.dim() == 2 else 1)
        return (logits * mask).sum(dim=(-2, -1))

    return target


def predicted_classes(pred: torch.Tensor, num_classes: int, max_classes: int = 4) -> list[int]:
    """The classes a segmenter predicts most often in `pred` (a [B, H, W] class map), background
    (0) aside, most frequent first, at most `max_classes`; [0] for a binary model (num_classes 1)."""
    if num_classes == 1:
        return [0]
    counts = torch.bincount(pred.flatten(), minlength=num_classes)[1:]
    return [int(k) + 1 for k in counts.argsort(descending=True, stable=True)[:max_classes] if counts[k] > 0]


def box(size: tuple[int, int], top: int, left: int, height: int, width: int) -> torch.Tensor:
    """[H, W] 0/1 region: a rectangle (one pixel when height = width = 1)."""
    mask = torch.zeros(size)
    mask[top : top + height, left : left + width] = 1.0
    return mask


def reconstruction_error(model, c: torch.Tensor | None = None, kind: str = "bce") -> Forward:
    """Forward x -> [B, 1] reconstruction error of x through mu (no sampling): which regions
    the encoder's features make hard to reconstruct. kind: bce (sigmoid outputs) | mse."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        mu, _ = model.encode(x, c)
        if kind == "bce":
            err = F.binary_cross_entropy_with_logits(model.decode_logits(mu, c), x.detach(), reduction="none")
        elif kind == "mse":
            err = (model.decode(mu, c) - x.detach()).pow(2)
        else:
            raise ValueError(f"unknown reconstruction error {kind!r}; choose bce or mse")
        return err.flatten(1).sum(1, keepdim=True)

    return forward
