"""How right are the latent explanations, epoch by epoch (synthetic faces: the ground truth is known)."""

from __future__ import annotations

import math

import lightning as L
import torch

from src.base.contracts import ConditionalModel
from src.base.gaussian import kl_per_dimension
from src.callbacks.base import ImageCallback, method_specs
from src.data.synthfaces.counterfactual import counterfactual_pairs
from src.data.synthfaces.parameters import ATTRIBUTES as GENERATOR_ATTRIBUTES
from src.xai import METHODS, latent_agreement, latent_localisation
from src.xai.latent.sweeps import rank_dimensions

ATTRIBUTES = ["Eyeglasses", "Wearing_Hat", "Bangs", "Mouth_Slightly_Open"]
LOCALISATION = [
    "attribute",
    "shift_top",
    "direction_norm",
    "method",
    "target",
    "pointing",
    "mass_inside",
    "density",
    "auroc",
    "area",
    "n",
]
AGREEMENT = ["method", "spearman", "auroc", "mismatched_spearman", "mismatched_auroc", "dimensions"]


class LatentGroundTruth(ImageCallback):
    """Scores latent explanations against two ground truths every `every_n_epochs`:

    - counterfactual localisation: `num_faces` faces per attribute rendered with the attribute off and on
      (the same faces every epoch); per method, the maps of the dimensions that encode the
      attribute most, of its direction in latent space and of random dimensions, scored against
      the changed pixels (pointing game, mass inside, density, AUROC), with how strongly the code
      holds the attribute (the top dimension's mu shift in posterior sigmas) beside them;
    - agreement: on the probes, each method's maps of the `num_agreement_dims` dimensions with the
      most KL against their decoder action maps (Spearman, AUROC; mismatched-pair baseline).

    `methods`: label -> {method: a registered name, options: {...}}. Logs the `localisation` and
    `agreement` tables and a `summary` (per method: mean AUROC of the direction maps over the
    attributes, agreement Spearman), whose numbers become curves beside the loss in W&B and
    TensorBoard."""

    def __init__(
        self,
        name: str = "latent_ground_truth",
        attributes: list[str] | None = None,
        num_faces: int = 32,
        methods: dict[str, dict] | None = None,
        num_top_dims: int = 3,
        num_agreement_dims: int = 8,
        num_probes: int = 32,
        every_n_epochs: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        self.attributes, self.num_faces = list(attributes or ATTRIBUTES), int(num_faces)
        self.methods = method_specs(methods or ["gradcam"], f"explain.{name}.methods", METHODS)
        self.num_top_dims, self.num_agreement_dims = int(num_top_dims), int(num_agreement_dims)
        self._pairs: dict | None = None

    def pairs(self, image_size: int, device: torch.device, names: list[str] | None = None) -> tuple[dict, dict]:
        """(attribute -> (off, on, region), attribute -> the 'on' faces' attributes in the order of
        `names`, a CVAE's condition entries), rendered once."""
        if self._pairs is None:
            rendered = {
                a: counterfactual_pairs(a, self.num_faces, image_size, seed=self.seed + k)
                for k, a in enumerate(self.attributes)
            }
            self._pairs = rendered
        pairs = {a: (p["off"].to(device), p["on"].to(device), p["region"].to(device)) for a, p in self._pairs.items()}
        columns = [GENERATOR_ATTRIBUTES.index(n) for n in (names or GENERATOR_ATTRIBUTES)]
        return pairs, {a: p["attributes_on"][:, columns].to(device) for a, p in self._pairs.items()}

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x = probes["image"]
        conditional = isinstance(pl_module, ConditionalModel) and pl_module.condition(probes) is not None
        pairs, conditions = self.pairs(x.shape[-1], x.device, pl_module.attribute_names if conditional else None)
        rows = latent_localisation(
            pl_module,
            pairs,
            self.methods,
            top_dims=self.num_top_dims,
            c=conditions if conditional else None,
            seed=self.seed,
        )
        c = pl_module.condition(probes)
        with torch.no_grad():
            mu, logvar = pl_module.encode(x, c)
        dims = rank_dimensions(kl_per_dimension(mu, logvar), self.num_agreement_dims)
        agree = latent_agreement(pl_module, x, dims, self.methods, c=c)
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        sinks.log_table(
            self.name, "localisation", LOCALISATION, [[_cell(r[k]) for k in LOCALISATION] for r in rows], epoch, step
        )
        sinks.log_table(
            self.name, "agreement", AGREEMENT, [[_cell(r[k]) for k in AGREEMENT] for r in agree], epoch, step
        )
        summary: dict = {"epoch": epoch}
        for label in self.methods:
            direction = [r["auroc"] for r in rows if r["method"] == label and r["target"] == "direction"]
            finite = [v for v in direction if math.isfinite(v)]
            summary[f"{label}/direction_auroc"] = sum(finite) / len(finite) if finite else float("nan")
            summary[f"{label}/agreement_spearman"] = next(r["spearman"] for r in agree if r["method"] == label)
        sinks.log_summary(self.name, "summary", {**summary, "localisation": rows, "agreement": agree}, epoch, step)
        if self.save_tensors:
            sinks.save_tensors(self.name, "probes", {"image": x}, epoch)


def _cell(value):
    return round(value, 4) if isinstance(value, float) else value if isinstance(value, int | str) else str(value)
