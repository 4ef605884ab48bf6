"""Which model kinds fit which data sets, decided from the config before anything is built.

`model=` and `data=` compose freely (an `experiment=` is only an overlay); what a data set's
batches hold is a class attribute of its datamodule (`batch_fields`, `num_label_classes`,
`all_attributes`), so a combination that cannot train is refused with the keys at fault and the
fix, before a file is read or a weight is drawn, and the CVAE's condition is derived from the data."""

from __future__ import annotations

from omegaconf import DictConfig

from src.base import contracts
from src.base.errors import ConfigError


def _class(target: str, key: str) -> type:
    import hydra

    try:
        return hydra.utils.get_class(str(target))
    except Exception as exc:  # ImportError / AttributeError, wrapped by Hydra
        raise ConfigError(f"{key}._target_", target, "no such class; check the spelling or the config group") from exc


def data_class(target: str) -> type:
    """The datamodule class a `data._target_` names."""
    return _class(target, "data")


def model_kind(target: str) -> str:
    """`src.base.contracts.kind` of the class a `model._target_` names (one of its KINDS)."""
    cls = _class(target, "model")
    try:
        return contracts.kind(cls)
    except ValueError:
        raise ConfigError(
            "model._target_", target, "not a latent-lens model (VAE, CVAE, SegVAE, UNet or Classifier)"
        ) from None


def _fields(data) -> tuple[str, ...]:
    return tuple(getattr(data, "batch_fields", ("image",)))


def _attribute_count(data, attributes) -> int:
    return len(attributes) if attributes is not None else len(getattr(data, "all_attributes", ()))


def cvae_condition(data_target: str) -> str:
    """The CVAE condition a data set gives: its attribute vector, else its one-hot class label."""
    fields = _fields(data_class(data_target))
    if "attributes" in fields:
        return "attributes"
    if "label" in fields:
        return "label"
    raise ConfigError("model", "cvae", f"{data_target} gives neither attributes nor labels to condition on")


def condition_dim(data_target: str, condition: str, attributes=None) -> int:
    """Entries of the CVAE condition: the selected attributes (all when `data.attributes` is null)
    or the number of classes."""
    data = data_class(data_target)
    if condition == "label":
        return int(getattr(data, "num_label_classes", 10))
    return _attribute_count(data, attributes)


def check_model_fits_data(cfg: DictConfig) -> str:
    """Raise ConfigError for a model/data pair that cannot train; returns the model kind."""
    kind = model_kind(cfg.model._target_)
    data = data_class(cfg.data._target_)
    fields, name = _fields(data), data.__name__.removesuffix("DataModule")
    holds = f"data={name} gives batches of {', '.join(fields)}"
    model = cfg.model
    if kind == "conditional":
        condition = str(model.get("condition"))
        if condition not in fields:
            other = "label" if condition == "attributes" else "attributes"
            fix = f"set model.condition={other}" if other in fields else "pick data with attributes or labels"
            raise ConfigError("model.condition", condition, f"{holds}, no '{condition}'; {fix}")
    elif kind == "segmenter":
        if "mask" not in fields:
            raise ConfigError(
                "model",
                model._target_.rsplit(".", 1)[-1],
                f"a segmentation model needs masks, and {holds}; use data=synthfaces or "
                "data=celebamask_hq (or model=vae / model=classifier for this data)",
            )
        target, classes = str(cfg.data.get("target", "binary")), int(model.num_classes)
        want = 1 if target == "binary" else int(getattr(data, "num_parts", classes))
        if classes != want:
            raise ConfigError(
                "model.num_classes",
                classes,
                f"data.target={target} gives {'a binary mask' if want == 1 else f'{want} classes'}; "
                f"set model.num_classes={want}",
            )
    elif kind == "classifier":
        task, classes = str(model.get("task", "multiclass")), int(model.num_classes)
        if task == "multiclass":
            if "label" not in fields:
                n = _attribute_count(data, cfg.data.get("attributes"))
                raise ConfigError(
                    "model.task",
                    task,
                    f"{holds}, no class label; classify its attributes with "
                    f"model.task=multilabel model.num_classes={n}, or pick "
                    "labelled data (data=digits, fashion_mnist, ...)",
                )
            want = int(getattr(data, "num_label_classes", classes))
        else:
            if "attributes" not in fields:
                raise ConfigError("model.task", task, f"{holds}, no attributes; use model.task=multiclass")
            want = _attribute_count(data, cfg.data.get("attributes"))
        if classes != want:
            raise ConfigError(
                "model.num_classes",
                classes,
                f"data={name} has {want} "
                f"{'classes' if task == 'multiclass' else 'attributes'}; "
                f"set model.num_classes={want}",
            )
    return kind
