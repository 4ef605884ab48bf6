"""What the explanations and callbacks need of a model, as `typing.Protocol`s.

A model satisfies a contract by having the members below (no inheritance needed); code checks
with `isinstance(model, GenerativeModel)` (runtime_checkable: the members' presence, not their
signatures). The project's models declare theirs in their docstrings and the tests check them:

- `VAE`, `CVAE`: GenerativeModel (a CVAE also ConditionalModel);
- `SegVAE`: Segmenter and GenerativeModel (its decodings are mask logits);
- `UNet`: Segmenter; `Classifier`: Classifier.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GenerativeModel(Protocol):
    """A latent-variable model: a Gaussian posterior q(z | x) and a decoder. `cam_layer` is the
    dotted path of the encoder layer that Grad-CAM reads by default."""

    latent_dim: int
    cam_layer: str

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each [B, latent_dim]."""
        ...

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """[B, ...] the decoding of codes z [B, latent_dim]."""
        ...

    def sample(self, n: int, c: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decodings of n draws from the prior N(0, I)."""
        ...


@runtime_checkable
class ConditionalModel(Protocol):
    """A generative model whose encoder and decoder also read a condition vector c [B, condition_dim]
    (attribute values), built from a batch by `condition(batch)`."""

    condition_dim: int
    attribute_names: list[str] | None

    def condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None: ...


@runtime_checkable
class Classifier(Protocol):
    """model(x) -> [B, num_classes] logits; `classes` names the columns."""

    classes: list[str]

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Segmenter(Protocol):
    """model(x) -> [B, C, H, W] mask logits (C = 1: binary); predict_mask(x) the hard mask."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def predict_mask(self, x: torch.Tensor) -> torch.Tensor: ...


# the model kinds, in the order kind() tries them: a SegVAE is a segmenter first, a CVAE conditional
KINDS = ("segmenter", "conditional", "generative", "classifier")


def kind(model: object) -> str:
    """The contract that decides how a model is explained, one of KINDS. An instance is checked
    against the protocols; a class (what a config's `model._target_` names, before anything is
    built) answers with its declared `kind` attribute, which tests/models/test_contracts.py checks
    against its instances. ValueError for a model that meets none."""
    if isinstance(model, type):
        declared = getattr(model, "kind", None)
        if declared in KINDS:
            return declared
        raise ValueError(f"{model.__name__} declares no `kind` (one of {', '.join(KINDS)})")
    if isinstance(model, Segmenter):
        return "segmenter"
    if isinstance(model, GenerativeModel):
        return "conditional" if isinstance(model, ConditionalModel) else "generative"
    if isinstance(model, Classifier):
        return "classifier"
    raise ValueError(
        f"{type(model).__name__} meets none of the contracts in src/base/contracts.py (GenerativeModel: encode, "
        "decode, sample, latent_dim, cam_layer; Classifier: classes and logits; Segmenter: predict_mask)"
    )
