"""Side-by-side attribution methods for classifiers, with how faithful each is on the probes."""

from __future__ import annotations

import logging

import lightning as L
import torch

from src.base.errors import ConfigError
from src.callbacks.base import ImageCallback, method_specs
from src.run.progress import progress
from src.viz.grid import as_rgb, header_labels, table_grid
from src.viz.heatmap import overlay
from src.viz.masks import cutout
from src.xai import Baseline, Unsupported, explain, faithfulness, targets
from src.xai.core import METHODS
from src.xai.scores.saliency_segmentation import SEGMENTERS, saliency_segmentation

log = logging.getLogger(__name__)


class AttributionComparison(ImageCallback):
    """Per probe, one grid: rows = methods, columns = input | map for the predicted class | map for
    the second most likely class (|relevance| normalised per map). A table per epoch: each
    method's deletion AOPC (most relevant first) and insertion AUC on the probes for the predicted
    class, next to a random map's. With `segmentation` (grabcut | threshold), a grid of what the
    saliency of the predicted class segments [Simonyan2014]: input | saliency | the
    object cut out."""

    def __init__(
        self,
        name: str = "attribution",
        methods: list[str] | dict | None = None,
        options: dict | None = None,
        num_probes: int = 8,
        steps: int = 20,
        baseline: str | float | dict = "constant",
        alpha: float = 0.6,
        segmentation: str | None = "grabcut",
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        if segmentation is not None and segmentation not in SEGMENTERS:
            raise ConfigError(f"explain.{name}.segmentation", segmentation, f"use one of {SEGMENTERS} or null")
        self.segmentation = segmentation
        self.methods = method_specs(methods or list(METHODS), f"explain.{name}.methods", METHODS, options)
        self.steps, self.baseline, self.alpha = steps, Baseline.parse(baseline), alpha

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x = probes["image"]
        with torch.no_grad():
            top = targets.top_classes(pl_module(x), k=2)  # [B, 2]
        results, table = {}, []
        with progress(self.name, trainer) as steps:  # a step per method; mask perturbation's own steps
            methods = dict(self.methods)
            for done, (label, (method, options)) in enumerate(methods.items(), 1):
                try:  # both classes at once: one target of two columns
                    result = explain(method, pl_module, x, targets.classes(top), progress=steps.phase(label), **options)
                except Unsupported as exc:  # this architecture lacks what the method needs: said once
                    if self.raise_errors:
                        raise
                    log.warning(
                        "%s: %s cannot explain this model, left out from now on: %s. Remove it from explain.%s.methods",
                        self.name,
                        label,
                        exc,
                        self.name,
                    )
                    del self.methods[label]
                    steps(done, len(methods))
                    continue
                results[label] = result
                table.append([label, *self._faithfulness(pl_module, x, top[:, 0], result.maps[:, 0])])
                steps(done, len(methods))
        if not results:
            raise ValueError(f"{self.name}: none of {list(methods)} could explain this model")
        shown_methods = list(results)
        g = torch.Generator().manual_seed(self.seed)
        random_map = torch.rand(result.maps[:, 0].shape, generator=g).to(x.device)
        table.append(["random", *self._faithfulness(pl_module, x, top[:, 0], random_map)])
        names = pl_module.classes
        shown = {method: result.normalized() for method, result in results.items()}  # |map| / its max, [B, 2, H, W]
        grids = []
        for b in range(len(x)):
            rows = []
            for method in shown_methods:
                rows.append(
                    [
                        as_rgb(x[b : b + 1])[0],
                        *overlay(x[b : b + 1].expand(2, -1, -1, -1), shown[method][b], self.alpha),
                    ]
                )
            heads = ["", names[int(top[b, 0])], names[int(top[b, 1])]]
            grids.append(table_grid(rows, header_labels(shown_methods, heads)))
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        sinks.log_images(
            self.name,
            "methods",
            grids,
            epoch,
            step,
            captions=[f"probe {b}: rows = {shown_methods}; predicted class, second class" for b in range(len(x))],
        )
        sinks.log_table(self.name, "faithfulness", ["method", "aopc", "insertion_auc"], table, epoch, step)
        saved = {f"{m}_{k}": r.maps[:, i] for m, r in results.items() for i, k in enumerate(("top1", "top2"))}
        if self.segmentation is not None:
            seg = saliency_segmentation(pl_module, x, targets.classes(top[:, 0]), segmenter=self.segmentation)
            rows = [
                [
                    as_rgb(x[b : b + 1])[0],
                    overlay(x[b : b + 1], seg.normalized()[b, :1], self.alpha)[0],
                    cutout(x[b : b + 1], seg.masks[b, :1])[0],
                ]
                for b in range(len(x))
            ]
            labels = header_labels([names[int(c)] for c in top[:, 0]], ["input", "saliency", self.segmentation])
            sinks.log_images(
                self.name,
                "saliency_segmentation",
                [table_grid(rows, labels)],
                epoch,
                step,
                captions=[f"the predicted class's saliency and what it segments ({self.segmentation}, [Simonyan2014])"],
            )
            saved["segmentation_top1"] = seg.masks[:, 0]
        if self.save_tensors:
            sinks.save_tensors(self.name, "maps", saved | {"image": x, "classes": top}, epoch)

    def nondeterministic_on_cuda(self) -> dict[str, str]:
        why = {
            label: METHODS[m].nondeterministic_on_cuda
            for label, (m, _) in self.methods.items()
            if METHODS[m].nondeterministic_on_cuda
        }
        return {f"explain.{self.name}.methods ({m})": reason for m, reason in why.items()}

    def _faithfulness(self, model, x, classes, relevance) -> list[float]:
        f = faithfulness(model, x, relevance, targets.classes(classes), self.steps, self.baseline)
        return [round(f["aopc"], 4), round(f["insertion_auc"], 4)]
