"""Side-by-side attribution methods for classifiers, with how faithful each is on the probes."""

from __future__ import annotations

import logging

import lightning as L
import torch

from src.callbacks.base import ImageCallback
from src.progress import progress
from src.viz.grid import as_rgb, header_labels, table_grid
from src.viz.heatmap import overlay
from src.xai.attribution import METHODS, attribute, relevance_map
from src.xai.gradcam import normalize_maps
from src.xai.metrics import faithfulness

log = logging.getLogger(__name__)


class AttributionComparison(ImageCallback):
    """Per probe, one grid: rows = methods, columns = input | map for the predicted class | map for
    the second most likely class (|relevance| normalised per map). A table per epoch: each
    method's deletion AOPC (most relevant first) and insertion AUC on the probes for the predicted
    class, next to a random map's."""

    def __init__(self, name: str = "attribution", methods: list[str] | None = None, options: dict | None = None,
                 num_probes: int = 8, steps: int = 20, removal: str = "constant", alpha: float = 0.6,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(name, num_probes=num_probes, **kwargs)
        self.methods = list(methods or METHODS)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"{name}: unknown methods {unknown}; choose from {sorted(METHODS)}")
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.steps, self.removal, self.alpha = steps, removal, alpha

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x = probes["image"]
        with torch.no_grad():
            top = pl_module(x).topk(2, dim=1).indices  # [B, 2]
        maps, table = {}, []
        with progress(self.name, trainer) as steps:  # a step per method; mask perturbation's own steps
            for done, method in enumerate(self.methods, 1):
                opts = self.options.get(method, {})
                try:
                    first = relevance_map(method, attribute(method, pl_module, x, top[:, 0], **opts,
                                                            progress=steps.phase(f"{method} (top 1)")))  # fmt: skip
                    second = relevance_map(method, attribute(method, pl_module, x, top[:, 1], **opts,
                                                             progress=steps.phase(f"{method} (top 2)")))  # fmt: skip
                except (ValueError, TypeError, RuntimeError) as exc:  # a method this architecture does not support
                    if self.raise_errors:
                        raise
                    log.warning("%s: %s skipped (%s)", self.name, method, exc)
                    steps(done, len(self.methods))
                    continue
                maps[method] = (first, second)
                table.append([method, *self._faithfulness(pl_module, x, top[:, 0], first)])
                steps(done, len(self.methods))
        if not maps:
            raise ValueError(f"{self.name}: none of {self.methods} could explain this model")
        shown_methods = list(maps)
        g = torch.Generator().manual_seed(self.seed)
        random_map = torch.rand(first.shape, generator=g).to(x.device)
        table.append(["random", *self._faithfulness(pl_module, x, top[:, 0], random_map)])
        names = pl_module.classes
        grids = []
        for b in range(len(x)):
            rows = []
            for method in shown_methods:
                shown = normalize_maps(torch.stack([m[b] for m in maps[method]]).abs())
                rows.append([as_rgb(x[b : b + 1])[0], *overlay(x[b : b + 1].expand(2, -1, -1, -1), shown, self.alpha)])
            heads = ["", names[int(top[b, 0])], names[int(top[b, 1])]]
            grids.append(table_grid(rows, header_labels(shown_methods, heads)))
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        sinks.log_images(self.name, "methods", grids, epoch, step,
                         captions=[f"probe {b}: rows = {shown_methods}; predicted class, second class"
                                   for b in range(len(x))])  # fmt: skip
        sinks.log_table(self.name, "faithfulness", ["method", "aopc", "insertion_auc"], table, epoch, step)
        if self.save_tensors:
            sinks.save_tensors(self.name, "maps", {f"{m}_{k}": v for m, pair in maps.items()
                                                   for k, v in zip(("top1", "top2"), pair)} | {"image": x,
                                                   "classes": top}, epoch)  # fmt: skip

    def _faithfulness(self, model, x, target, relevance) -> list[float]:
        f = faithfulness(model, x, relevance, target, self.steps, self.removal)
        return [round(f["aopc"], 4), round(f["insertion_auc"], 4)]
