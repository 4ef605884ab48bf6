"""Feature visualisation for classifiers during training: first-layer filters, activation
maximisation per class, the dataset crops that excite chosen channels most beside their deconvnet
projections, nearest neighbours (embedding vs pixels) and a t-SNE of the embedding."""

from __future__ import annotations

import inspect

import lightning as L
import torch

from src.base.errors import ConfigError
from src.callbacks.base import ImageCallback
from src.run.progress import progress
from src.viz.grid import as_rgb, header_labels, image_grid, signed_unit, table_grid
from src.viz.morph import enlarge
from src.viz.plots import scatter_image
from src.xai.methods.featviz import (
    activation_maximisation,
    class_objectives,
    deconv_projections,
    first_layer_filters,
    nearest_neighbours,
    penultimate,
    top_patches,
    tsne,
)

# the class images' settings when none are configured (conf/explain/featviz.yaml shows the same)
MAXIMISATION = {"steps": 200, "lr": 0.05, "tv": 0.05, "jitter": 1, "scale": 0.05, "blur_every": 20}


class FeatureVisualisation(ImageCallback):
    """Every `every_n_epochs`: the first conv layer's filters; one image per class grown from noise
    to maximise its logit (TV, jitter, scale and blur regularised); for `patch_channels` channels
    of `layer` (default the model's cam_layer; an int: the first n channels, or a list), the
    `num_patches` receptive-field crops of the probes that excite the channel most beside the deconvnet
    projection of each of those activations [Zeiler2014]; for `num_queries` probes their
    `num_neighbours` nearest validation images in the penultimate embedding next to those in pixel space; a
    t-SNE of the embedding of `num_probes` validation images coloured by class."""

    def __init__(
        self,
        name: str = "featviz",
        num_probes: int = 500,
        num_queries: int = 6,
        num_neighbours: int = 5,
        maximisation: dict | None = None,
        layer: str | None = None,
        patch_channels: int | list[int] = 4,
        num_patches: int = 6,
        every_n_epochs: int = 5,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        self.num_queries, self.num_neighbours = num_queries, num_neighbours
        self.layer, self.patch_channels, self.num_patches = layer, patch_channels, num_patches
        self.maximisation = dict(MAXIMISATION if maximisation is None else maximisation)
        taken = {"objective", "shape", "progress", "seed", "device"}  # what render passes itself
        accepted = set(inspect.signature(activation_maximisation).parameters) - taken
        unknown = sorted(set(self.maximisation) - accepted)
        if unknown:
            key = f"explain.{name}.maximisation.{unknown[0]}"
            raise ConfigError(key, self.maximisation[unknown[0]], f"choose from {sorted(accepted)}")

    def nondeterministic_on_cuda(self) -> dict[str, str]:
        return {f"explain.{self.name}": "the backward of grid_sample (the jitter and scale of class maximisation)"}

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        x = probes["image"]
        names = pl_module.classes
        filters = first_layer_filters(pl_module)
        if filters.shape[1] not in (1, 3):
            filters = filters.mean(1, keepdim=True)
        sinks.log_images(
            self.name,
            "filters",
            [image_grid(filters, nrow=min(16, len(filters)), pad_value=0.5)],
            epoch,
            step,
            captions=["first conv layer's kernels, each scaled to [0, 1]"],
        )
        k = len(names)
        with progress(self.name, trainer) as steps:
            am = activation_maximisation(
                class_objectives(pl_module),
                (k, *x.shape[1:]),
                seed=self.seed,
                device=x.device,
                progress=steps.phase("class maximisation"),
                **self.maximisation,
            )
        sinks.log_images(
            self.name,
            "class_maximisation",
            [table_grid([list(as_rgb(am))], [list(names)])],
            epoch,
            step,
            captions=["images grown from noise to maximise each class logit"],
        )
        patches, saved = self.top_patch_rows(pl_module, x), {}
        if patches is not None:
            rows, labels, caption, saved = patches
            sinks.log_images(self.name, "top_patches", [table_grid(rows, labels)], epoch, step, captions=[caption])
        emb = penultimate(pl_module, x)
        q, k = min(self.num_queries, len(x)), self.num_neighbours
        by_emb = nearest_neighbours(emb[:q], emb, k + 1)[:, 1:]  # drop the query itself
        by_pix = nearest_neighbours(x[:q], x, k + 1)[:, 1:]
        rows = [[as_rgb(x[i : i + 1])[0], *as_rgb(x[by_emb[i]]), *as_rgb(x[by_pix[i]])] for i in range(q)]
        heads = ["query"] + ["embedding"] + [""] * (k - 1) + ["pixels"] + [""] * (k - 1)
        sinks.log_images(
            self.name,
            "neighbours",
            [table_grid(rows, header_labels([None] * q, heads))],
            epoch,
            step,
            captions=[f"query | {k} nearest in the penultimate embedding | {k} nearest in pixel space"],
        )
        if "label" in probes and len(x) >= 10:
            points = tsne(emb, seed=self.seed)
            image = scatter_image(points, probes["label"].cpu().numpy(), list(names))
            caption = f"t-SNE of the penultimate embedding of {len(x)} validation images"
            sinks.log_images(self.name, "tsne", [image], epoch, step, captions=[caption])
        if self.save_tensors:
            tensors = {"filters": filters, "class_maximisation": am, "embedding": emb, "image": x}
            sinks.save_tensors(self.name, "featviz", tensors | saved, epoch)

    def top_patch_rows(self, model: L.LightningModule, x: torch.Tensor):
        """(rows, labels, caption, tensors) of the top-patches table, or None when no channel is asked for."""
        channels = list(range(self.patch_channels)) if isinstance(self.patch_channels, int) else self.patch_channels
        if not channels:
            return None
        rows, crops_all, proj_all = [], [], []
        for ch in channels:
            crops, _, where = top_patches(model, self.layer, x, int(ch), k=self.num_patches)
            _, projections = deconv_projections(model, self.layer, x, int(ch), where)
            crops_all.append(crops)
            proj_all.append(projections)
            rows.append(list(enlarge(torch.cat([as_rgb(crops), as_rgb(signed_unit(projections))]), 48)))
        k = len(rows[0]) // 2
        heads = ["crops"] + [""] * (k - 1) + ["deconv"] + [""] * (k - 1)
        layer = self.layer or getattr(model, "cam_layer", "the last conv")
        caption = (
            f"channels {channels} of {layer}: the {k} receptive-field crops of the probes that excite each "
            "most | each activation projected back to pixels by the deconvnet (grey = 0)"
        )
        saved = {"patch_crops": torch.stack(crops_all), "patch_projections": torch.stack(proj_all)}
        return rows, header_labels([f"ch {c}" for c in channels], heads), caption, saved
