"""Anomaly localisation while a VAE trains on normal data only (`data.normal`): [Liu2020]'s
attention maps and the reconstruction baselines, scored on the test split, which holds the
anomalies."""

from __future__ import annotations

import lightning as L
import torch

from src.base.errors import ConfigError
from src.base.maps import min_max_scale
from src.callbacks.base import ImageCallback, method_specs
from src.data.celebamask_hq import PARTS
from src.data.in_memory import seeded_rows
from src.viz.grid import as_rgb, table_grid
from src.viz.heatmap import overlay
from src.xai.scores.anomaly import ANOMALY_MAPS, DEFAULT_MAPS, score_anomalies

COLUMNS = ["map", "pixel_auroc", "best_iou", "iou_threshold", "pro", "image_auroc"]


class AnomalyLocalisation(ImageCallback):
    """Every `every_n_epochs`: the anomaly maps `maps` (names in `src.xai.scores.anomaly.ANOMALY_MAPS`)
    of `num_test` test images (a seeded choice), with the codes of `num_normal` training images as the
    normal statistics. With `parts` (CelebAMask-HQ part names, e.g. [eye_g, hat], read from the
    batches' class maps, `data.target=index`) the pixels of those parts on anomalous images are the
    truth: pixel AUROC, best IoU and PRO per map; without, image AUROC only (the one-class
    protocol). Image AUROC of every image score (negative ELBO, reconstruction error, KL,
    deviation, attention mass) and of each map's mass. Logs a table, a summary and a panel of
    anomalous test images with their maps. The test split is only read here: nothing (no
    checkpoint, no early stop) is chosen by these numbers."""

    def __init__(
        self,
        name: str = "anomaly",
        maps: list[str] | dict | None = None,
        options: dict | None = None,
        parts: list[str] | None = None,
        num_test: int = 512,
        num_normal: int = 2048,
        batch_size: int = 64,
        num_probes: int = 6,
        every_n_epochs: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        specs = method_specs(maps or list(DEFAULT_MAPS), f"explain.{name}.maps", ANOMALY_MAPS, options)
        renamed = sorted(label for label, (method, _) in specs.items() if label != method)
        if renamed:
            raise ConfigError(
                f"explain.{name}.maps.{renamed[0]}", renamed[0], "anomaly maps are labelled by their name"
            )
        self.maps = list(specs)
        self.options = {label: options for label, (_, options) in specs.items() if options}
        bad = [p for p in parts or [] if p not in PARTS]
        if bad:
            raise ConfigError(f"explain.{name}.parts", bad, f"choose from {list(PARTS)}")
        self.parts = list(parts or [])
        self.num_test, self.num_normal, self.batch_size = int(num_test), int(num_normal), int(batch_size)
        self._test: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer.datamodule, "normal", None) is None:
            hint = (
                "anomaly localisation needs a model trained on normal data only: set data.normal "
                "(e.g. {classes: [0]} or {without_attributes: [Eyeglasses]})"
            )
            raise ConfigError("data.normal", None, hint)

    def test_batch(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        data = trainer.datamodule
        if self._test is None:
            if data.datasets is None or "test" not in data.datasets:
                data.setup("test")
            self._test = seeded_rows(data.test_set, self.num_test, self.seed)
            if self.parts and self._test.get("mask", torch.empty(0)).dim() != 3:
                raise ConfigError(
                    "data.target",
                    getattr(data, "target", None),
                    f"explain.{self.name}.parts reads class maps: set data.target=index",
                )
        return self._test

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        device = pl_module.device
        test = self.test_batch(trainer)
        normal = seeded_rows(trainer.datamodule.train_set, self.num_normal, self.seed + 1)["image"]
        anomalous = test["anomalous"]
        masks = None
        if self.parts:
            ids = torch.tensor([PARTS.index(p) for p in self.parts])
            masks = torch.isin(test["mask"], ids) & anomalous[:, None, None]
        batches = [chunk.to(device) for chunk in normal.split(self.batch_size)]
        result = score_anomalies(
            pl_module,
            batches,
            test["image"].to(device),
            anomalous,
            masks,
            maps=self.maps,
            options=self.options,
            batch_size=self.batch_size,
            keep_maps=True,
        )
        epoch, step, sinks = trainer.current_epoch, trainer.global_step, self.sinks(trainer)
        rows = [[name] + [_cell(scores.get(k)) for k in COLUMNS[1:]] for name, scores in result["pixel"].items()]
        sinks.log_table(self.name, "maps", COLUMNS, rows, epoch, step)
        summary = {
            "epoch": epoch,
            **{f"{name}/{k}": v for name, s in result["pixel"].items() for k, v in s.items()},
            **{f"image/{k}": v for k, v in result["image"].items()},
            "counts": result["counts"],
        }
        sinks.log_summary(self.name, "summary", summary, epoch, step)
        shown = torch.nonzero(anomalous).flatten()[: self.num_probes]
        if len(shown):
            x = test["image"][shown]
            scaled = {m: min_max_scale(result["maps"][m][shown]) for m in self.maps}
            truth = [masks[shown].float()[:, None].expand(-1, 3, -1, -1)] if masks is not None else []
            columns = [as_rgb(x), *truth, *(overlay(x, scaled[m]) for m in self.maps)]
            row_tiles = [[column[i] for column in columns] for i in range(len(shown))]
            header = ["image"] + (["truth"] if masks is not None else []) + self.maps
            grid = table_grid(row_tiles, [header] + [[None] * len(header)] * (len(shown) - 1))
            self.log_grid(
                trainer,
                "maps",
                grid,
                "anomalous test images and their anomaly maps",
                {"image": x, **{m: result["maps"][m][shown] for m in self.maps}},
            )


def _cell(value):
    return None if value is None else round(float(value), 4)
