"""The whole method: starting codes, the semantic morph, the radial path and its path masks for a
batch, in phases a callback can write as each finishes."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch

from src.xai.core import OnStep
from src.xai.folding import agrees, folded
from src.xai.morph.path_mask import (
    PathMask,
    PathMaskConfig,
    entropy_window,
    path_entropy,
    path_gradients,
    path_mask,
    pearson,
)
from src.xai.morph.semantic import Morph, code_norms, linear_path, radial_path, semantic_morph, starting_code

Fn = Callable[[torch.Tensor], torch.Tensor]


# -- the whole method ------------------------------------------------------------------------------


@dataclass
class MorphPath:
    """The method's output for B images: classes a (predicted) and o (target); the starting codes
    (and whether a draw kept the top-2 classes); the morph; the radial path's codes [S, B, D] and
    decodings [S, B, C, H, W] from the start to the morphed code; 2-class entropy, its window and
    the input-gradient norm of p_a along the path [S, B]; their Pearson correlation [B]; the
    classifier's logits along the path [S, B, K]; wall-clock seconds of the morph; the path mask
    of the first samples (None when not asked for)."""

    a: torch.Tensor
    o: torch.Tensor
    start: torch.Tensor
    kept: torch.Tensor
    morph: Morph
    codes: torch.Tensor
    images: torch.Tensor
    entropy: torch.Tensor
    window: dict[str, torch.Tensor]
    gradient: torch.Tensor
    pearson: torch.Tensor
    logits: torch.Tensor
    morph_seconds: float
    mask: PathMask | None

    @property
    def probabilities(self) -> torch.Tensor:
        """[S, B, K] the classifier's softmax along the path."""
        return torch.softmax(self.logits, dim=2)

    def path_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([S, B], [S, B]) the code norm along the radial path and along the straight line between
        the same two codes (which dips through the atypical low-norm middle)."""
        line = linear_path(self.start, self.morph.codes, len(self.codes))
        return self.codes.norm(dim=2), line.norm(dim=2)

    @property
    def final_class(self) -> torch.Tensor:
        """[B] the classifier's answer on the morphed decoding."""
        return self.logits[-1].argmax(1)

    @property
    def error(self) -> torch.Tensor:
        """[B] the [PathMaskThesis] morphing error: the morphed decoding is not classified o."""
        return self.final_class != self.o

    def summary(self) -> dict[str, float]:
        n = len(self.o)
        both = torch.isfinite(self.pearson)
        pooled = pearson(self.entropy.flatten()[:, None], self.gradient.flatten()[:, None])
        return {
            "samples": n,
            "error_rate": self.error.float().mean().item(),
            "converged_rate": self.morph.converged.float().mean().item(),
            "start_kept_top2_rate": self.kept.float().mean().item(),
            "mean_steps": self.morph.steps.float().mean().item(),
            "seconds_per_sample": self.morph_seconds / max(n, 1),
            "pearson_entropy_gradient_pooled": pooled.item(),
            "pearson_entropy_gradient_mean": self.pearson[both].mean().item() if both.any() else float("nan"),
        }


PRECISIONS = ("32", "bf16")  # of the semantic morph


@dataclass(frozen=True)
class MorphConfig:
    """How `morph_path` morphs: `num_start_samples` draws of q(z|x) for the starting code; Adam
    (learning rate `lr`, at most `max_steps` steps) on -logit_o + alpha_lk * r * (||c|| - n_o)^2
    until the a-vs-o entropy (bits) is below `entropy_tol` and the argmax is o; the radial path in
    `path_steps` codes. `precision` "bf16": decode and classify under bfloat16 autocast while
    morphing. `fold`: morph with `folding.folded` shadows of the models (batch norm folded into
    the layer before it, channels-last convolutions; the models are not touched), the same
    functions up to float rounding (checked on the inputs first; where they differ, the models as
    they are, with a warning)."""

    alpha_lk: float = 10.0
    lr: float = 1e-3
    max_steps: int = 5000
    entropy_tol: float = 0.01
    num_start_samples: int = 100
    path_steps: int = 100
    precision: str = "32"
    fold: bool = True

    def __post_init__(self) -> None:
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"unknown morphing precision {self.precision!r}; choose one of {PRECISIONS}")


def morph_path(
    model: Fn,
    inputs: torch.Tensor,
    target=None,
    *,
    vae,
    norm_means: torch.Tensor,
    morph: MorphConfig = MorphConfig(),
    mask: PathMaskConfig = PathMaskConfig(),
    num_masks: int = 0,
    seed: int = 0,
    progress: Callable[[str], OnStep] | None = None,
) -> MorphPath:
    """Why does the classifier `model` say a rather than o? Semantic morphing of `inputs` through
    the latent space of `vae` (encode / decode) into the target class o as `morph` says, the
    radial path, its entropy/gradient analysis and (for the first `num_masks` samples) path-mask
    attribution as `mask` says, all batched. `target` names o per sample (`targets.classes(o)`);
    None = `targets.runner_up()` (the second most likely class); `targets.runner_up(labels)` also
    morphs misclassified samples into their true class. `norm_means` [K] the mean code norm of
    each class (`class_norm_means`). `progress(phase)` gives the progress callable of each long
    phase in turn: "starting codes", "semantic morph", "path gradients", "path mask"."""
    from src.xai import targets as tg

    if morph.fold:
        model, vae = _folded_if_same(model, vae, inputs)
    encode, decode, classify, x = vae.encode, vae.decode, model, inputs

    def phase(name: str) -> OnStep | None:
        return progress(name) if progress is not None else None

    with torch.no_grad():
        logits = classify(x)
    a = logits.topk(1, dim=1).indices[:, 0]
    o = tg.class_indices(tg.runner_up() if target is None else tg.as_target(target), logits)[:, 0]
    start, kept = starting_code(
        encode, decode, classify, x, samples=morph.num_start_samples, seed=seed, progress=phase("starting codes")
    )
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    morphed = semantic_morph(
        decode,
        classify,
        start,
        a,
        o,
        norm_means,
        alpha_lk=morph.alpha_lk,
        lr=morph.lr,
        max_steps=morph.max_steps,
        entropy_tol=morph.entropy_tol,
        progress=phase("semantic morph"),
        autocast=torch.bfloat16 if str(morph.precision) == "bf16" else None,
    )
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - t0
    codes = radial_path(start, morphed.codes, morph.path_steps)
    with torch.no_grad():
        images = torch.stack([decode(c) for c in codes])
    logits, gradient = path_gradients(classify, images, a, progress=phase("path gradients"))
    entropy = path_entropy(logits, a, o)
    window = entropy_window(entropy)
    corr = pearson(entropy, gradient)
    out = MorphPath(a, o, start, kept, morphed, codes, images, entropy, window, gradient, corr, logits, seconds, None)
    if num_masks > 0:
        out = with_path_mask(classify, out, num_masks, mask, seed=seed, progress=phase("path mask"))
    return out


def with_path_mask(
    model: Fn,
    out: MorphPath,
    count: int,
    config: PathMaskConfig = PathMaskConfig(),
    *,
    fold: bool = False,
    seed: int = 0,
    progress: OnStep | None = None,
) -> MorphPath:
    """`out` with the path mask (`path_mask(model, ..., config)`) of its first `count` samples'
    paths added: the last phase of `morph_path`, on its own so that a caller can write the morph's
    panels before the (longer) mask is learnt, or morph in chunks and learn the masks once. `fold`:
    learn it on the `folding.folded` shadow of `model` where that computes what `model` computes
    on the paths' first images (`morph_path` passes its folded model and fold=False)."""
    k = min(int(count), len(out.o))
    path = out.images[:, :k]
    if fold:
        (fast,) = folded(model)
        model = fast if fast is model or agrees(fast, model, path[0]) else model
    return replace(out, mask=path_mask(model, path, out.o[:k], config, seed=seed, progress=progress))


def concat(parts: Sequence[MorphPath]) -> MorphPath:
    """One MorphPath of the samples of `parts` (morphed chunk by chunk) in order; the morph's
    seconds add up. The parts carry no path mask (`with_path_mask` adds it to the whole)."""
    if any(part.mask is not None for part in parts):
        raise ValueError("concat joins morphs without path masks; add the mask to the result (with_path_mask)")
    if len(parts) == 1:
        return parts[0]

    def cat(name: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([getattr(part, name) for part in parts], dim=dim)

    morph = Morph(*(torch.cat([getattr(part.morph, f.name) for part in parts]) for f in fields(Morph)))
    window = {key: torch.cat([part.window[key] for part in parts]) for key in parts[0].window}
    return MorphPath(
        cat("a"),
        cat("o"),
        cat("start"),
        cat("kept"),
        morph,
        cat("codes", 1),
        cat("images", 1),
        cat("entropy", 1),
        window,
        cat("gradient", 1),
        cat("pearson"),
        cat("logits", 1),
        sum(part.morph_seconds for part in parts),
        None,
    )


def _folded_if_same(model: Fn, vae, x: torch.Tensor) -> tuple:
    """(model, vae) as `folding.folded` shadows when they compute what the originals compute on x
    and its codes (`folding.agrees`); else the originals, with a warning."""
    fast_model, fast_vae = folded(model, vae)
    same = fast_model is model or agrees(fast_model, model, x)
    if fast_vae is not vae and same:
        with torch.no_grad():
            mu = vae.encode(x)[0]
        same = agrees(fast_vae.encode, vae.encode, x) and agrees(fast_vae.decode, vae.decode, mu)
    if same:
        return fast_model, fast_vae
    warnings.warn(
        "morph_path: the models with batch norm folded (fold=True) do not compute what the models "
        "compute (a Sequential's layers read outside its forward?); morphing with the models as they are",
        stacklevel=3,
    )
    return model, vae


@torch.no_grad()
def norm_statistics(encode: Callable, batches, progress: OnStep | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(||mu|| [N], labels [N]) over `batches`, a sized iterable of (images, labels) pairs (the
    training set, chunk by chunk): the input of `class_norm_means`. `progress(done, total)`
    after each batch."""
    norms, labels = [], []
    total = len(batches)
    for images, y in batches:
        norms.append(code_norms(encode, images).cpu())
        labels.append(y.cpu())
        if progress is not None:
            progress(len(norms), total)
    return torch.cat(norms), torch.cat(labels)
