import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.base.errors import ConfigError
from src.models.classifier import Classifier
from src.testing.compose import CONF_DIR


def preset(name: str, image_size: int, in_channels: int, **kw) -> Classifier:
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "arch" / f"{name}.yaml"))
    return Classifier(num_classes=10, image_size=image_size, in_channels=in_channels, **arch, **kw)


LISTINGS = [("mnist_cnn", 28, 1, 64 * 6 * 6), ("fashion_cnn", 28, 1, 128 * 6 * 6), ("cifar_cnn", 32, 3, 256 * 3 * 3)]


@pytest.mark.parametrize("name,size,channels,flat", LISTINGS)
def test_thesis_presets_match_their_listings(name, size, channels, flat):
    m = preset(name, size, channels).eval()
    linears = [layer for layer in m.net.head if isinstance(layer, nn.Linear)]
    assert linears[0].in_features == flat  # the listings' Flatten sizes
    assert linears[-1].out_features == 10
    assert m(torch.rand(3, channels, size, size)).shape == (3, 10)
    assert isinstance(m.get_submodule(m.cam_layer), nn.ReLU)


def test_timm_model_by_name():
    m = Classifier(num_classes=4, image_size=32, in_channels=1, timm_name="resnet18").eval()
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 4)
    assert isinstance(m.get_submodule(m.cam_layer), nn.Conv2d)
    with pytest.raises(ConfigError, match="model.timm_name"):
        Classifier(num_classes=4, image_size=32, in_channels=1, timm_name="no_such_model_xyz")


def test_losses_and_metrics_by_hand():
    m = preset("mnist_cnn", 28, 1)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0, 0, 0, 0, 0, 0, 0], [0.0, 1.0, 3.0, 0, 0, 0, 0, 0, 0, 0]])
    target = torch.tensor([0, 1])
    expected = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    torch.testing.assert_close(m.loss(logits, target), expected)
    m.metrics["val_acc"].update(logits, target)
    assert m.metrics["val_acc"].compute().item() == pytest.approx(0.5)
    m.confusion.update(logits, target)
    cm = m.confusion.compute()
    assert cm[0, 0] == 1 and cm[1, 2] == 1 and cm.sum() == 2

    ml = preset("mnist_cnn", 28, 1, task="multilabel")
    attr_logits = torch.tensor([[3.0, -2.0] + [0.0] * 8])
    attrs = torch.tensor([[1.0, 1.0] + [0.0] * 8])
    p = torch.sigmoid(attr_logits)
    bce = -(attrs * p.log() + (1 - attrs) * (1 - p).log()).mean()
    torch.testing.assert_close(ml.loss(attr_logits, attrs), bce)


def test_bad_specs_name_the_key():
    with pytest.raises(ConfigError, match=r"model.layers\[1\]"):
        Classifier(num_classes=3, image_size=28, in_channels=1, layers=[{"conv": 8}, {"dense": 3}])
    with pytest.raises(ConfigError, match="model.image_size"):
        Classifier(
            num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 8, "kernel": 5}, {"conv": 8, "kernel": 5}]
        )
    with pytest.raises(ConfigError, match="model.task"):
        Classifier(num_classes=3, image_size=28, in_channels=1, layers=[{"conv": 8}], task="regression")


def test_names_come_from_the_data(train_cfg, tmp_path):
    """A multi-label classifier takes the attribute names, a multiclass one the class names."""
    from src.train import train

    cfg = train_cfg("model=classifier", "model/arch=mnist_cnn", "explain=none", "test=false")
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["classes"][:2] == ["T-shirt/top", "Trouser"]

    class Data:
        class_names = ["other", "mask"]
        attribute_names = [f"attr{i}" for i in range(10)]

    class Trainer:
        datamodule = Data()

    m = preset("mnist_cnn", 28, 1, task="multilabel")
    m._trainer = Trainer()
    m.setup("fit")
    assert m.classes == [f"attr{i}" for i in range(10)]


def test_class_accuracy_equals_torchmetrics_per_class_accuracy():
    """The per-class accuracy counted without bincount (no host sync on CUDA) is torchmetrics'
    Accuracy(average="none"), over several updates and with a class that has no sample."""
    import torchmetrics

    from src.models.classifier import ClassAccuracy

    g = torch.Generator().manual_seed(0)
    ours, oracle = ClassAccuracy(5), torchmetrics.Accuracy(task="multiclass", num_classes=5, average="none")
    for _ in range(3):
        logits, target = torch.randn(16, 5, generator=g), torch.randint(0, 4, (16,), generator=g)  # class 4 absent
        ours.update(logits, target)
        oracle.update(logits, target)
    torch.testing.assert_close(ours.compute(), oracle.compute())
    assert ours.compute()[4] == 0
