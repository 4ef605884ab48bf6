"""Grad-CAM callbacks: per-latent-dimension maps for VAEs/CVAEs [Liu2020], class maps
for classifiers, Seg-Grad-CAM for segmentation models, and the part-mask score on synthfaces."""

from __future__ import annotations

import logging

import lightning as L
import torch

from src.base import contracts
from src.base.errors import ConfigError
from src.base.gaussian import kl_per_dimension
from src.base.maps import scale_by_max
from src.callbacks.base import ImageCallback, method_spec
from src.viz.grid import as_rgb, header_labels, table_grid
from src.viz.heatmap import overlay
from src.viz.masks import colorize
from src.xai import METHODS, CamMaps, condition_action, decoder_action, get_method, targets
from src.xai.latent.part_attention import part_attention
from src.xai.latent.sweeps import attention_mass, rank_dimensions

RANKINGS = ("kl", "attention")
log = logging.getLogger(__name__)


class GradCamGrid(ImageCallback):
    """One row per probe. Generative models: input | reconstruction | overall map (mean of the
    per-dimension maps) | for each of the `num_dims` dimensions (labelled z<i>, ranked by KL per
    dimension or by attention mass) its `method` map, its `compare` map and its decoder action map
    (where the encoder looks, measured two ways | where the dimension acts on the image); a
    ranking table beside it. Classifiers: input | map of the predicted class | map of the second
    most likely class.

    `method` is any method registered in src.xai (gradcam, gradcampp, hirescam, layercam,
    xgradcam, scorecam, or an input-space one such as smoothgrad), a name or {method, options};
    `compare` another (null: none;
    see the latent ground-truth callback for which scores best); `latent`: which latent node a map
    explains - mean (mu_i, [Liu2020]) or sampled (z_i with seeded noise, the code of
    [Panday2021])."""

    def __init__(
        self,
        name: str = "gradcam",
        layer: str | None = None,
        method: str = "gradcam",
        latent: str = "mean",
        num_dims: int = 6,
        rank_by: str = "kl",
        num_probes: int = 8,
        chunk_size: int = 64,
        alpha: float = 0.5,
        compare: str | dict | None = None,
        action: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        if latent not in targets.LATENTS:
            raise ConfigError(f"explain.{name}.latent", latent, f"choose one of {list(targets.LATENTS)}")
        if rank_by not in RANKINGS:
            raise ConfigError(f"explain.{name}.rank_by", rank_by, f"choose one of {list(RANKINGS)}")
        self.method, self.method_options = method_spec(method, f"explain.{name}.method", METHODS)
        self.compare, self.compare_options = (
            (None, {}) if compare is None else method_spec(compare, f"explain.{name}.compare", METHODS)
        )
        self.action = bool(action)
        self.layer, self.latent, self.num_dims, self.rank_by = layer, latent, num_dims, rank_by
        self.chunk_size, self.alpha = chunk_size, alpha

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        kind = contracts.kind(pl_module)
        if kind == "segmenter":
            raise ValueError(f"{self.name}: segmentation models take explain=seg_gradcam")
        if kind == "classifier":
            self._classifier(trainer, pl_module, probes)
        else:
            self._generative(trainer, pl_module, probes)

    def _run(self, name: str, model, x, target, **options):
        """The registered method, with this callback's layer and chunk size where it takes them."""
        accepted = METHODS[name].options
        extra = {k: v for k, v in (("layer", self.layer), ("chunk_size", self.chunk_size)) if k in accepted}
        return get_method(name)(model, x, target, **{**extra, **options})  # a method's own options win

    def _generative(self, trainer, model, probes) -> None:
        x = probes["image"]
        c = model.condition(probes)
        forward = targets.latent(model, c, self.latent, seed=self.seed)
        result = self._run(self.method, model, x, targets.select(), forward=forward, **self.method_options)
        with torch.no_grad():
            mu, logvar = model.encode(x, c)
            recon = model.reconstruct(x, c)
        raw = result.raw if isinstance(result, CamMaps) else result.maps.abs()
        kl, mass = kl_per_dimension(mu, logvar), attention_mass(raw)
        order = rank_dimensions(kl if self.rank_by == "kl" else mass)
        dims = order[: self.num_dims]
        maps = result.normalized()
        overall = result.overall() if isinstance(result, CamMaps) else scale_by_max(raw.mean(1, keepdim=True))[:, 0]
        columns, heads = [maps[:, dims]], [self.method]
        if self.compare is not None:
            columns.append(
                self._run(
                    self.compare, model, x, targets.select(dims), forward=forward, **self.compare_options
                ).normalized()
            )
            heads.append(self.compare)
        if self.action:
            columns.append(scale_by_max(decoder_action(model, x, targets.select(dims), c=c).maps))
            heads.append("acts")
        shown = torch.stack(columns, 2).flatten(1, 2)  # [B, D * M, H, W]: each dimension's maps side by side
        rows = []
        for b in range(len(x)):
            rows.append(
                [
                    as_rgb(x[b : b + 1])[0],
                    as_rgb(recon[b : b + 1])[0],
                    overlay(x[b : b + 1], overall[b : b + 1], self.alpha)[0],
                    *overlay(x[b : b + 1].expand(shown.shape[1], -1, -1, -1), shown[b], self.alpha),
                ]
            )
        labels = header_labels([None] * len(x), ["in", "rec", "all"] + [f"z{d} {h}" for d in dims for h in heads])
        sinks = self.sinks(trainer)
        caption = (
            f"rows: probes; columns: input | reconstruction | mean of all {model.latent_dim} maps | for each "
            f"of the top {len(dims)} dimensions by {self.rank_by}: {' | '.join(heads)} "
            f"({self.latent} latent)"
        )
        self.log_grid(trainer, "maps", table_grid(rows, labels), caption)
        sinks.log_table(
            self.name,
            "ranking",
            ["rank", "dim", "kl", "attention_mass"],
            [[r, d, round(float(kl[d]), 5), round(float(mass[d]), 5)] for r, d in enumerate(order)],
            trainer.current_epoch,
            trainer.global_step,
        )
        if self.action and isinstance(model, contracts.ConditionalModel) and c is not None:
            self._attribute_action(trainer, model, x, c)
        if self.save_tensors:
            extra = {"weights": result.weights} if isinstance(result, CamMaps) else {}
            sinks.save_tensors(
                self.name,
                "maps",
                {
                    "raw": raw,
                    **extra,
                    "mu": mu,
                    "logvar": logvar,
                    "image": x,
                    "shown": shown,
                    "dims": torch.tensor(dims),
                },
                trainer.current_epoch,
            )

    def _attribute_action(self, trainer, model, x, c) -> None:
        """CVAE: where each of the first `num_dims` condition entries acts on each probe (|d x_hat / d c_j|)."""
        entries = list(range(min(self.num_dims, c.shape[1])))
        names = model.attribute_names or [str(j) for j in range(c.shape[1])]
        action = scale_by_max(condition_action(model, x, targets.select(entries), c=c).maps)
        rows = [
            [as_rgb(x[b : b + 1])[0], *overlay(x[b : b + 1].expand(len(entries), -1, -1, -1), action[b], self.alpha)]
            for b in range(len(x))
        ]
        labels = header_labels([None] * len(x), ["in"] + [names[j] for j in entries])
        caption = "where each attribute of the condition acts: |d x_hat / d c_j|"
        self.log_grid(trainer, "attribute_action", table_grid(rows, labels), caption)

    def _classifier(self, trainer, model, probes) -> None:
        x = probes["image"]
        with torch.no_grad():
            logits = model(x)
        top = targets.top_classes(logits, k=min(2, logits.shape[1]))
        cam = self._run(self.method, model, x, targets.per_sample(top), **self.method_options)
        maps = cam.normalized()
        names = model.classes
        rows, labels = [], []
        for b in range(len(x)):
            truth = names[int(probes["label"][b])] if "label" in probes else ""
            rows.append(
                [as_rgb(x[b : b + 1])[0], *overlay(x[b : b + 1].expand(top.shape[1], -1, -1, -1), maps[b], self.alpha)]
            )
            labels.append([truth] + [names[int(k)] for k in top[b]])
        self.log_grid(
            trainer,
            "maps",
            table_grid(rows, labels),
            "input (true class) | map of the predicted class | map of the second class",
            {"raw": cam.raw, "classes": top, "image": x},
        )


class SegGradCam(ImageCallback):
    """Seg-Grad-CAM [Vinogradova2020] at the model's bottleneck (cam_layer): per probe,
    input | predicted mask | one map per class for the pixels predicted as that class."""

    def __init__(
        self,
        name: str = "seg_gradcam",
        layer: str | None = None,
        classes: list[int] | None = None,
        max_classes: int = 4,
        num_probes: int = 8,
        alpha: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        self.layer, self.classes, self.max_classes, self.alpha = layer, classes, max_classes, alpha

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        if not isinstance(pl_module, contracts.Segmenter):
            raise ValueError(f"{self.name}: needs a segmentation model (with predict_mask)")
        x = probes["image"]
        with torch.no_grad():
            logits = pl_module(x)
            pred = pl_module.predict_mask(x)
        if self.classes is not None and logits.shape[1] > 1:
            classes = [int(k) for k in self.classes]
        else:  # the classes predicted most often in the probes, background (0) aside
            classes = targets.predicted_classes(pred, logits.shape[1], self.max_classes)
        if not classes:
            raise ValueError(f"{self.name}: the model predicts only background on the probes; nothing to explain")
        names = list(getattr(trainer.datamodule, "class_names", []) or [])
        cam = get_method("gradcam")(pl_module, x, targets.segmentation_region(classes), layer=self.layer)
        maps = cam.normalized()
        shown = [
            names[-1] if logits.shape[1] == 1 and names else (names[k] if k < len(names) else str(k)) for k in classes
        ]
        rows, labels = [], []
        for b in range(len(x)):
            rows.append(
                [
                    as_rgb(x[b : b + 1])[0],
                    colorize(pred[b : b + 1])[0],
                    *overlay(x[b : b + 1].expand(len(classes), -1, -1, -1), maps[b], self.alpha),
                ]
            )
            labels.append(["in", "pred", *shown] if b == 0 else [None, None, *shown])
        self.log_grid(
            trainer,
            "maps",
            table_grid(rows, labels),
            "input | predicted mask | Seg-Grad-CAM of each class over the pixels predicted as it",
            {"raw": cam.raw, "classes": torch.tensor(classes), "image": x},
        )


class PartAttentionCallback(ImageCallback):
    """Scores each latent dimension's attention against ground-truth part masks (synthfaces, or
    any data with class-map masks: data.target=index). For the `num_dims` dimensions with the
    most KL: the part holding most of its Grad-CAM mass, the part its sweep changes most, and the
    share of attention inside that part next to the part's share of the image area. Logged as a
    table and written to `<run dir>/part_attention.json` (the latest epoch)."""

    def __init__(
        self,
        name: str = "part_attention",
        num_dims: int = 10,
        offsets: list[float] = (-2.0, 2.0),
        scale: str = "aggregate",
        num_probes: int = 64,
        layer: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, **kwargs)
        self.num_dims, self.offsets, self.scale, self.layer = num_dims, list(offsets), scale, layer

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        mask = probes.get("mask")
        if mask is None or mask.dim() != 3 or mask.dtype.is_floating_point:
            raise ValueError(
                f"{self.name}: needs class-map masks in the batch; use data with part masks and "
                "data.target=index (e.g. experiment=synthfaces_vae)"
            )
        names = list(trainer.datamodule.class_names)
        x = probes["image"]
        result = part_attention(
            pl_module,
            x,
            parts=mask,
            part_names=names,
            num_dims=self.num_dims,
            offsets=self.offsets,
            scale=self.scale,
            layers=[self.layer],
            c=pl_module.condition(probes),
        )
        summary = result.summary()
        rows = summary["dimensions"]
        columns = list(rows[0])
        sinks = self.sinks(trainer)
        sinks.log_table(
            self.name,
            "scores",
            columns,
            [[r[k] for k in columns] for r in rows],
            trainer.current_epoch,
            trainer.global_step,
        )
        summary = {
            "epoch": trainer.current_epoch,
            "probes": len(x),
            "offsets": self.offsets,
            "scale": self.scale,
            **summary,
        }
        sinks.log_summary(
            self.name, "part_attention", summary, trainer.current_epoch, trainer.global_step, run_level=True
        )
