"""Image classifiers: the [PathMaskThesis] CNNs built from a layer spec, or any timm model by name."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from src.base.errors import ConfigError
from src.models.augment import random_blur
from src.models.nets import require_layer
from src.models.optim import build_optimizer
from src.models.stages import StagedSteps, TrainLogging


def build_cnn(
    in_channels: int, image_size: int, num_classes: int, layers: list[dict], dense: list[int], dropout: float = 0.5
) -> tuple[nn.Sequential, nn.Sequential]:
    """(features, head) from a spec: layers are {'conv': out, 'kernel', 'stride', 'padding'}
    (Conv without bias + BatchNorm + ReLU, named features.<i>.conv/norm/act) or {'pool': k};
    dense are hidden widths (Linear + BatchNorm1d + ReLU + Dropout) before the class layer."""
    blocks, c, size = [], in_channels, image_size
    for i, spec in enumerate(layers):
        if "conv" in spec:
            k, s, p = spec.get("kernel", 3), spec.get("stride", 1), spec.get("padding", 0)
            out = int(spec["conv"])
            blocks.append(
                nn.Sequential(
                    OrderedDict(conv=nn.Conv2d(c, out, k, s, p, bias=False), norm=nn.BatchNorm2d(out), act=nn.ReLU())
                )
            )
            c, size = out, (size + 2 * p - k) // s + 1
        elif "pool" in spec:
            blocks.append(nn.MaxPool2d(int(spec["pool"])))
            size = size // int(spec["pool"])
        else:
            raise ConfigError(f"model.layers[{i}]", spec, "each layer is {conv: channels, ...} or {pool: size}")
        if size < 1:
            raise ConfigError("model.image_size", image_size, f"layer {i} shrinks the feature map to nothing")
    head: list[nn.Module] = [nn.Flatten()]
    features = c * size * size
    for width in dense:
        head += [nn.Linear(features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)]
        features = width
    head.append(nn.Linear(features, num_classes))
    return nn.Sequential(*blocks), nn.Sequential(*head)


class ClassAccuracy(torchmetrics.Metric):
    """Per-class accuracy of a multiclass classifier (torchmetrics' `Accuracy(average="none")`,
    0 for a class with no sample), counted without a host sync: torchmetrics counts classes with
    `torch.bincount`, which on CUDA reads the largest label back to the host at every update."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        hit = (logits.argmax(1) == target).to(self.correct.dtype)
        self.correct.index_add_(0, target, hit)
        self.total.index_add_(0, target, torch.ones_like(hit))

    def compute(self) -> torch.Tensor:
        return torch.where(self.total > 0, self.correct / self.total.clamp_min(1), torch.zeros_like(self.total))


class Classifier(StagedSteps, TrainLogging, L.LightningModule):
    """forward(x) -> logits [B, K]; `classes`, `cam_layer` per the classifier contract.

    task 'multiclass' (labels, cross-entropy) or 'multilabel' (0/1 attribute vectors, one
    sigmoid per attribute, e.g. to judge what a CVAE generates). Metrics: accuracy and
    per-class accuracy (torchmetrics); the validation confusion matrix is kept in
    `val_confusion` (synced on every rank) for the confusion-matrix callback.

    Contracts (src/base/contracts.py): Classifier."""

    kind = "classifier"  # src.base.contracts.KINDS, read from the class before anything is built

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_channels: int,
        layers: list[dict] | None = None,
        dense: list[int] | None = None,
        dropout: float = 0.5,
        timm_name: str | None = None,
        task: str = "multiclass",
        target_key: str | None = None,
        classes: list[str] | None = None,
        optimizer: dict | None = None,
        cam_layer: str | None = None,
        blur_augment: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.blur_augment = float(blur_augment)
        if task not in ("multiclass", "multilabel"):
            raise ConfigError("model.task", task, "choose 'multiclass' or 'multilabel'")
        if num_classes < 2 and task == "multiclass":
            raise ConfigError("model.num_classes", num_classes, "a multiclass classifier needs at least 2 classes")
        self.task = task
        self.target_key = target_key or ("label" if task == "multiclass" else "attributes")
        self.num_classes = num_classes
        self.classes = list(classes) if classes else [str(i) for i in range(num_classes)]
        self.optimizer_cfg = dict(optimizer or {"name": "Adam", "lr": 1e-3})
        if timm_name:
            import timm

            try:
                self.net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
            except RuntimeError as exc:
                raise ConfigError("model.timm_name", timm_name, f"timm cannot build it ({exc})") from exc
            self.cam_layer = cam_layer or _last_conv_path(self.net, prefix="net")
        else:
            if not layers:
                raise ConfigError(
                    "model.layers", layers, "give a layer spec (see conf/model/arch/*_cnn.yaml) or timm_name"
                )
            features, head = build_cnn(in_channels, image_size, num_classes, layers, dense or [], dropout)
            self.net = nn.Sequential(OrderedDict(features=features, head=head))
            last_conv = max(i for i, b in enumerate(features) if isinstance(b, nn.Sequential))
            self.cam_layer = cam_layer or f"net.features.{last_conv}.act"
        require_layer(self, self.cam_layer)
        metric_args = (
            {"task": "multiclass", "num_classes": num_classes}
            if task == "multiclass"
            else {"task": "multilabel", "num_labels": num_classes}
        )
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.metrics[f"{stage}_acc"] = torchmetrics.Accuracy(**metric_args, average="micro")
            self.metrics[f"{stage}_class_acc"] = (
                ClassAccuracy(num_classes)
                if task == "multiclass"
                else torchmetrics.Accuracy(**metric_args, average="none")
            )
        self.confusion = torchmetrics.ConfusionMatrix(**metric_args)
        self.val_confusion: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        # class names for labels; attribute names for multi-label attribute vectors
        names = getattr(datamodule, "class_names" if self.task == "multiclass" else "attribute_names", None)
        if names and len(names) == self.num_classes:
            self.classes = list(names)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["classes"] = self.classes

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.classes = list(checkpoint.get("classes", self.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "multiclass":
            return F.cross_entropy(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target.float())

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        target = batch[self.target_key]
        x = batch["image"]
        if stage == "train" and self.blur_augment > 0:
            x = random_blur(x, self.blur_augment)
        logits = self(x)
        loss = self.loss(logits, target)
        target_int = target.long()
        self.metrics[f"{stage}_acc"].update(logits, target_int)
        self.metrics[f"{stage}_class_acc"].update(logits, target_int)
        if stage == "val":
            self.confusion.update(logits, target_int)
        if stage == "train":  # per-step logging costs Lightning's loop the most (TrainLogging)
            self.log_train({"train/loss_step": loss}, {"train/loss_epoch": loss}, len(target))
            return loss
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(target), sync_dist=True)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _log_class_acc(self, stage: str) -> None:
        per_class = self.metrics[f"{stage}_class_acc"].compute()
        self.metrics[f"{stage}_class_acc"].reset()
        for name, value in zip(self.classes, per_class):
            self.log(f"{stage}/acc_{name}", value, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("train/acc", self.metrics["train_acc"].compute())
        self.metrics["train_acc"].reset()
        self._log_class_acc("train")

    def on_validation_epoch_end(self) -> None:
        self._log_class_acc("val")
        self.val_confusion = self.confusion.compute().cpu()  # a collective under DDP: every rank runs it
        self.confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_class_acc("test")

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.optimizer_cfg)


def _last_conv_path(module: nn.Module, prefix: str) -> str:
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("model.cam_layer", None, "the timm model has no Conv2d; name a layer with model.cam_layer")
    return f"{prefix}.{convs[-1]}"
