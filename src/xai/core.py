"""What every explanation method shares: the call shape, the reference image, the map reduction,
the result types and the registry.

Call shape. Every method is `method(model, inputs, target, **options) -> result`:
  model    the nn.Module explained (a classifier, a VAE, a segmenter);
  inputs   [B, C, H, W] images;
  target   a callable output -> [B, K] (see `src.xai.targets`); the method explains each of the
           K scalars of each sample;
  options  keyword-only, typed, with defaults; `forward=` (where a method takes it) replaces
           `model(x)` by another function of x (e.g. `targets.latent_mean(model)`);
  result   a dataclass with `maps` [B, K, H, W] (relevance at the input's size) plus what the
           method knows (Grad-CAM's channel weights, a mask's loss curve, ...).

Glossary.
  baseline   the reference image that "absent" means: IG's starting point, occlusion's patch
             fill, the perturbation a mask blends in, what deletion metrics remove pixels to.
             One `Baseline`: constant(value) | blur(sigma) | noise(seed) | mean | tensor.
  map        [B, K, H, W] relevance per pixel: an attribution [B, K, C, H, W] reduced over
             channels by `to_map` - max |a| for gradient-like methods, the signed sum otherwise
             (each method's registry entry says which).
  registry   `METHODS`: name -> method, one spelling per method; `get_method(name)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from src.base.maps import gaussian_blur, scale_by_max
from src.base.rng import uniform_noise

# a loop's progress callable: on_step(done, total) once per step; it may raise to stop the loop
OnStep = Callable[[int, int], None]

# -- the reference image ---------------------------------------------------------------------------

BASELINE_KINDS = ("constant", "blur", "noise", "mean", "tensor")


@dataclass(frozen=True)
class Baseline:
    """The reference image for x [B, C, H, W]:
    constant - every pixel `value`; blur - x blurred by a Gaussian of `sigma` px; noise -
    uniform [0, 1) noise drawn from `seed` (the same for any device); mean - each image's own
    mean value; tensor - `tensor`, broadcast to x."""

    kind: str = "constant"
    value: float = 0.0
    sigma: float = 5.0
    seed: int = 0
    tensor: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline {self.kind!r}; choose one of {BASELINE_KINDS}")
        if self.kind == "tensor" and self.tensor is None:
            raise ValueError("a tensor baseline needs its tensor: Baseline.of(t)")

    @classmethod
    def constant(cls, value: float = 0.0) -> Baseline:
        return cls("constant", value=float(value))

    @classmethod
    def blur(cls, sigma: float = 5.0) -> Baseline:
        return cls("blur", sigma=float(sigma))

    @classmethod
    def noise(cls, seed: int = 0) -> Baseline:
        return cls("noise", seed=int(seed))

    @classmethod
    def mean(cls) -> Baseline:
        return cls("mean")

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Baseline:
        return cls("tensor", tensor=tensor)

    @classmethod
    def parse(cls, spec: Baseline | str | float | int | torch.Tensor | Mapping | None, **defaults) -> Baseline:
        """A Baseline from a config value: a Baseline, a number (constant), a tensor, a kind name
        ('constant', 'blur', 'noise', 'mean'; `defaults` fill sigma / seed / value) or a mapping
        {kind: blur, sigma: 3}. None gives constant 0."""
        if spec is None:
            return cls(**{"kind": "constant", **defaults})
        if isinstance(spec, Baseline):
            return spec
        if isinstance(spec, torch.Tensor):
            return cls.of(spec)
        if isinstance(spec, bool):
            raise ValueError(f"a baseline is a kind, a number or a tensor, not {spec!r}")
        if isinstance(spec, int | float):
            return cls.constant(spec)
        if isinstance(spec, Mapping):
            return cls(**{**defaults, **dict(spec)})
        if isinstance(spec, str):
            return cls(**{**defaults, "kind": spec})
        raise ValueError(f"a baseline is a kind {BASELINE_KINDS[:4]}, a number, a tensor or a mapping; got {spec!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] the reference image for x."""
        if self.kind == "constant":
            return torch.full_like(x, float(self.value))
        if self.kind == "blur":
            return gaussian_blur(x, self.sigma)
        if self.kind == "noise":
            return uniform_noise(x, self.seed)
        if self.kind == "mean":
            return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
        return self.tensor.to(x.device, x.dtype).expand_as(x)  # type: ignore[union-attr]


# frozen, so safe as defaults: constant 0 (IG, deletion), constant 0.5 (occlusion), blur (masks)
ZERO = Baseline()
GREY = Baseline("constant", value=0.5)
BLURRED = Baseline("blur", sigma=5.0)


# -- maps ----------------------------------------------------------------------------------------------

REDUCTIONS = ("max_abs", "sum", "abs_sum")


def to_map(attribution: torch.Tensor, reduce: str = "max_abs") -> torch.Tensor:
    """An attribution [..., C, H, W] as a map [..., H, W]: max |a| over channels (gradient-like
    methods: their sign is not evidence), the signed sum (methods whose sign is), or the sum of |a|.
    A tensor that is already a map ([B, H, W]) is returned as it is."""
    if attribution.dim() == 3:
        return attribution
    if reduce == "max_abs":
        return attribution.abs().amax(-3)
    if reduce == "sum":
        return attribution.sum(-3)
    if reduce == "abs_sum":
        return attribution.abs().sum(-3)
    raise ValueError(f"unknown reduction {reduce!r}; choose one of {REDUCTIONS}")


# -- results -------------------------------------------------------------------------------------------


class Explanation:
    """Base of every result: `maps` [B, K, H, W], one relevance map per sample and target column,
    at the input's size."""

    maps: torch.Tensor

    def normalized(self) -> torch.Tensor:
        """[B, K, H, W] |maps| each divided by its own maximum, in [0, 1] (all-zero maps stay 0)."""
        return scale_by_max(self.maps.abs())

    def map(self, k: int = 0) -> torch.Tensor:
        """[B, H, W] the maps of target column k."""
        return self.maps[:, k]


@dataclass
class Attribution(Explanation):
    """An input-space attribution: `attributions` [B, K, C, H, W] (the input's shape, per target
    column) and `maps` [B, K, H, W] = to_map(attributions, reduce)."""

    attributions: torch.Tensor
    reduce: str = "sum"
    maps: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.maps = to_map(self.attributions, self.reduce)


@dataclass
class MaskAttribution(Attribution):
    """Mask perturbation: `attributions` the deletion mask m at input size (over the channels);
    `mask` [B, K, 1, h, w] at the resolution it was learnt at; `loss` [steps, B, K] per step."""

    mask: torch.Tensor | None = None
    loss: torch.Tensor | None = None


# -- the registry ----------------------------------------------------------------------------------------


class Unsupported(ValueError):
    """A method cannot explain this model: its architecture lacks what the method needs (a conv
    layer, a plain feed-forward stack, ...); the message says what. Raised before any work, so a
    caller can drop the method and go on; every other error is a fault."""


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, its function, and why it cannot run under
    torch.use_deterministic_algorithms on CUDA (an op of its own without a deterministic CUDA
    kernel), or None. How its attributions reduce to maps is the method's own (its result's
    `reduce`)."""

    name: str
    fn: Callable[..., Explanation]
    nondeterministic_on_cuda: str | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options the method takes (beyond model, inputs, target)."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    @property
    def reports_progress(self) -> bool:
        """Whether the method has a loop that calls `progress(done, total)` (an option it takes)."""
        return "progress" in inspect.signature(self.fn).parameters


METHODS: dict[str, MethodInfo] = {}


def register(nondeterministic_on_cuda: str | None = None) -> Callable:
    """Decorator: add a method with the call shape above to METHODS under its function's own
    name, the one name configs, callbacks and Python use (MethodInfo)."""

    def wrap(fn: Callable[..., Explanation]) -> Callable[..., Explanation]:
        if fn.__name__ in METHODS:
            raise ValueError(f"method {fn.__name__!r} is registered twice")
        METHODS[fn.__name__] = MethodInfo(fn.__name__, fn, nondeterministic_on_cuda)
        return fn

    return wrap


_RAISE = object()


def canonical_name(name: str, default=_RAISE) -> str:
    """`name` when it is a registered method. An unknown name raises ValueError, or gives
    `default` when one is given."""
    if name in METHODS:
        return name
    if default is not _RAISE:
        return default
    raise ValueError(f"unknown explanation method {name!r}; choose one of {sorted(METHODS)}")


def get_method(name: str) -> Callable[..., Explanation]:
    """The method registered as `name`, for configs and callbacks."""
    return METHODS[canonical_name(name)].fn


def explain(name: str, model, inputs: torch.Tensor, target, progress: OnStep | None = None, **options) -> Explanation:
    """Run the method registered as `name`: `get_method(name)(model, inputs, target, **options)`;
    `progress` goes to the methods that have a loop to report (see MethodInfo.reports_progress)."""
    info = METHODS[canonical_name(name)]
    if progress is not None and info.reports_progress:
        options = {**options, "progress": progress}
    return info.fn(model, inputs, target, **options)
