"""Latent sweeps during training: what each informative latent node changes, and where its
attention goes at each step; attribute sweeps for conditional models."""

from __future__ import annotations

import lightning as L
import torch

from src.base.contracts import ConditionalModel
from src.base.gaussian import kl_per_dimension
from src.callbacks.base import ImageCallback
from src.viz.grid import as_rgb, header_labels, table_grid
from src.viz.heatmap import overlay
from src.xai import targets
from src.xai.latent.sweeps import attribute_sweep, latent_sweep, rank_dimensions


class LatentSweep(ImageCallback):
    """Per probe, one grid: for each swept dimension a row of decodings (mu + offset * unit * e_i)
    and under it their Grad-CAM overlays; columns = offsets. Per dimension, an animated GIF over
    the offsets (all probes side by side), shown in W&B as a video. Dimensions: `dims`, or the
    `num_dims` with the most KL. Conditional models also get an attribute sweep per probe: rows =
    attributes, columns = `attribute_values`, z held fixed."""

    def __init__(
        self,
        name: str = "latent_sweep",
        dims: list[int] | None = None,
        num_dims: int = 6,
        offsets: list[float] = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
        scale: str = "aggregate",
        with_maps: bool = True,
        gif: bool = True,
        fps: float = 4.0,
        attributes: list[str] | None = None,
        max_attributes: int = 6,
        attribute_values: list[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        num_probes: int = 4,
        layer: str | None = None,
        alpha: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        self.dims, self.num_dims, self.offsets, self.scale = dims, num_dims, list(offsets), scale
        self.with_maps, self.gif, self.fps, self.layer, self.alpha = with_maps, gif, fps, layer, alpha
        self.attributes, self.max_attributes, self.attribute_values = attributes, max_attributes, list(attribute_values)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        x, c = probes["image"], pl_module.condition(probes)
        with torch.no_grad():
            mu, logvar = pl_module.encode(x, c)
        dims = list(self.dims) if self.dims else rank_dimensions(kl_per_dimension(mu, logvar), self.num_dims)
        sweep = latent_sweep(
            pl_module,
            x,
            targets.select(dims),
            offsets=self.offsets,
            c=c,
            scale=self.scale,
            with_maps=self.with_maps,
            layer=self.layer,
        )
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        heads = [f"{o:+g}" for o in self.offsets]
        grids = []
        for b in range(len(x)):
            rows, names = [], []
            for n, d in enumerate(dims):
                rows.append(list(as_rgb(sweep.images[b, n])))
                names.append(f"z{d}")
                if sweep.maps is not None:
                    rows.append(list(overlay(sweep.images[b, n], sweep.maps[b, n], self.alpha)))
                    names.append(None)
            grids.append(table_grid(rows, header_labels(names, heads)))
        unit = {"aggregate": "x the dimension's spread", "posterior": "x the probe's sigma", "absolute": "added"}
        sinks.log_images(
            self.name,
            "sweep",
            grids,
            epoch,
            step,
            captions=[
                f"probe {b}: rows = dimensions {dims} (decoded, then attention), columns = offsets {self.offsets} "
                f"({unit.get(self.scale, self.scale)})"
                for b in range(len(x))
            ],
        )
        if self.gif:
            for n, d in enumerate(dims):
                frames = []
                for j in range(len(self.offsets)):
                    row = [as_rgb(sweep.images[b, n, j : j + 1])[0] for b in range(len(x))]
                    frame_rows = [row]
                    if sweep.maps is not None:
                        frame_rows.append(
                            [
                                overlay(sweep.images[b, n, j : j + 1], sweep.maps[b, n, j : j + 1], self.alpha)[0]
                                for b in range(len(x))
                            ]
                        )
                    frames.append(
                        table_grid(
                            frame_rows, header_labels([heads[j]] + [None] * (len(frame_rows) - 1), [""] * len(x))
                        )
                    )
                sinks.log_animation(
                    self.name, f"dim_{d:03d}", frames, epoch, step, self.fps, caption=f"z{d} swept over {self.offsets}"
                )
        if self.save_tensors:
            sinks.save_tensors(
                self.name,
                "sweep",
                {
                    "images": sweep.images,
                    "z": sweep.z,
                    "steps": sweep.steps,
                    "offsets": sweep.offsets,
                    "dims": torch.tensor(dims),
                    "image": x,
                    **({"maps": sweep.maps} if sweep.maps is not None else {}),
                },
                epoch,
            )
        if c is not None and isinstance(pl_module, ConditionalModel):
            self._attribute_sweep(trainer, pl_module, x, c)

    def _attribute_sweep(self, trainer, model, x, c) -> None:
        names = model.attribute_names or [str(i) for i in range(model.condition_dim)]
        wanted = self.attributes or names[: self.max_attributes]
        missing = [a for a in wanted if a not in names]
        if missing:
            raise ValueError(f"{self.name}: attributes {missing} are not conditions of this model ({names})")
        index = [names.index(a) for a in wanted]
        # [B, A, J, C, H, W]: per probe, one row per attribute, one column per value
        images = attribute_sweep(model, x, targets.select(index), c=c, values=self.attribute_values)
        grids = []
        for b in range(len(x)):
            rows = [list(as_rgb(images[b, i])) for i in range(len(index))]
            labels = header_labels(list(wanted), [f"{v:g}" for v in self.attribute_values])
            grids.append(table_grid(rows, labels))
        caption = f"rows = {wanted}, columns = condition value {self.attribute_values}, z fixed"
        self.sinks(trainer).log_images(
            self.name,
            "attributes",
            grids,
            trainer.current_epoch,
            trainer.global_step,
            captions=[f"probe {b}: {caption}" for b in range(len(x))],
        )
