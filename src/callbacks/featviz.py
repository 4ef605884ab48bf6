"""Feature visualisation for classifiers during training: first-layer filters, activation
maximisation per class, nearest neighbours (embedding vs pixels) and a t-SNE of the embedding."""

from __future__ import annotations

import lightning as L
import torch

from src.callbacks.base import ImageCallback
from src.progress import progress
from src.viz.grid import as_rgb, header_labels, image_grid, table_grid
from src.viz.plots import scatter_image
from src.xai.featviz import (
    activation_maximisation,
    class_objectives,
    first_layer_filters,
    nearest_neighbours,
    penultimate,
    tsne,
)


class FeatureVisualisation(ImageCallback):
    """Every `every_n_epochs`: the first conv layer's filters; one image per class grown from noise
    to maximise its logit (TV, jitter, scale and blur regularised); for `num_queries` probes their
    `k` nearest validation images in the penultimate embedding next to those in pixel space; a
    t-SNE of the embedding of `num_probes` validation images coloured by class."""

    def __init__(self, name: str = "featviz", num_probes: int = 500, num_queries: int = 6, k: int = 5,
                 am_steps: int = 200, am_lr: float = 0.05, tv: float = 0.05, jitter: int = 1, scale: float = 0.05,
                 blur_every: int = 20, every_n_epochs: int = 5, **kwargs) -> None:  # fmt: skip
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        self.num_queries, self.k = num_queries, k
        self.am = dict(steps=am_steps, lr=am_lr, tv=tv, jitter=jitter, scale=scale, blur_every=blur_every)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        x = probes["image"]
        names = pl_module.classes
        filters = first_layer_filters(pl_module)
        if filters.shape[1] not in (1, 3):
            filters = filters.mean(1, keepdim=True)
        sinks.log_images(self.name, "filters", [image_grid(filters, nrow=min(16, len(filters)), pad_value=0.5)],
                         epoch, step, captions=["first conv layer's kernels, each scaled to [0, 1]"])  # fmt: skip
        k = len(names)
        with progress(self.name, trainer) as steps:
            am = activation_maximisation(class_objectives(pl_module), (k, *x.shape[1:]), seed=self.seed,
                                         device=x.device, progress=steps.phase("class maximisation"),
                                         **self.am)  # fmt: skip
        sinks.log_images(self.name, "class_maximisation", [table_grid([list(as_rgb(am))], [list(names)])], epoch,
                         step, captions=["images grown from noise to maximise each class logit"])  # fmt: skip
        emb = penultimate(pl_module, x)
        q = min(self.num_queries, len(x))
        by_emb = nearest_neighbours(emb[:q], emb, self.k + 1)[:, 1:]  # drop the query itself
        by_pix = nearest_neighbours(x[:q], x, self.k + 1)[:, 1:]
        rows = [[as_rgb(x[i : i + 1])[0], *as_rgb(x[by_emb[i]]), *as_rgb(x[by_pix[i]])] for i in range(q)]
        heads = ["query"] + ["embedding"] + [""] * (self.k - 1) + ["pixels"] + [""] * (self.k - 1)
        sinks.log_images(self.name, "neighbours", [table_grid(rows, header_labels([None] * q, heads))], epoch, step,
                         captions=[f"query | {self.k} nearest in the penultimate embedding | {self.k} nearest in "
                                   "pixel space"])  # fmt: skip
        if "label" in probes and len(x) >= 10:
            points = tsne(emb, seed=self.seed)
            image = scatter_image(points, probes["label"].cpu().numpy(), list(names))
            caption = f"t-SNE of the penultimate embedding of {len(x)} validation images"
            sinks.log_images(self.name, "tsne", [image], epoch, step, captions=[caption])
        if self.save_tensors:
            sinks.save_tensors(self.name, "featviz", {"filters": filters, "class_maximisation": am, "embedding": emb,
                                                      "image": x}, epoch)  # fmt: skip
