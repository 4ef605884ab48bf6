import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from src.models.segmentation import SegVAE, UNet
from src.testing.compose import CONF_DIR


def preset(name: str, **overrides) -> SegVAE:
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "seg_vae.yaml"))
    for key in ("defaults", "_target_", "image_size", "in_channels"):
        base.pop(key)
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "arch" / f"{name}.yaml"))
    return SegVAE(**{**base, **arch, **overrides})


@pytest.mark.parametrize(
    "name,size,latents,convs", [("seg_vae64", 64, 5, 5), ("seg_vae128", 128, 15, 4), ("seg_vae256", 256, 100, 3)]
)
def test_presets(name, size, latents, convs):
    m = preset(name, image_size=size).eval()
    assert m.latent_dim == latents and len(m.encoder.blocks) == convs
    x = torch.rand(2, 3, size, size)
    mu, _ = m.encode(x)
    assert mu.shape == (2, latents)
    assert m.decode(mu).shape == (2, 1, size, size) and m(x).shape == (2, 1, size, size)
    assert m.sample(3).shape == (3, 1, size, size)
    assert isinstance(m.get_submodule(m.cam_layer), nn.Conv2d)


def test_multiclass_output_and_prediction():
    m = preset("seg_vae64", image_size=64, num_classes=19).eval()
    x = torch.rand(2, 3, 64, 64)
    assert m(x).shape == (2, 19, 64, 64)
    assert m.predict_mask(x).shape == (2, 64, 64) and m.predict_mask(x).dtype == torch.long


def test_binary_loss_terms_by_hand():
    m = SegVAE(image_size=8, latent_dim=2, encoder={"channels": [4]}, loss={"beta": 0.0})
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    terms = m.seg_loss(logits, target)
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    inter = (p * target).sum()
    jaccard = 1 - inter / (p.sum() + target.sum() - inter)
    torch.testing.assert_close(terms["ce"], bce)
    torch.testing.assert_close(terms["jaccard"], jaccard)


def test_multiclass_loss_terms_by_hand():
    m = SegVAE(image_size=8, latent_dim=2, num_classes=3, encoder={"channels": [4]})
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, generator=g)
    target = torch.tensor([[[0, 1], [1, 0]]])  # class 2 absent
    terms = m.seg_loss(logits, target)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, target))
    p = logits.softmax(1)
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    per_class = []
    for k in range(3):
        inter = (p[:, k] * onehot[:, k]).sum()
        union = p[:, k].sum() + onehot[:, k].sum() - inter
        per_class.append((1 - inter / union) * (onehot[:, k].sum() > 0))  # smp zeroes absent classes
    torch.testing.assert_close(terms["jaccard"], torch.stack(per_class).mean())


def test_kl_term_only_with_beta():
    x = torch.rand(2, 3, 16, 16)
    plain = SegVAE(image_size=16, latent_dim=3, encoder={"channels": [4, 4]}, loss={"beta": 0.0}).train()
    assert plain.logits(x)[1] == {}
    weighted = SegVAE(image_size=16, latent_dim=3, encoder={"channels": [4, 4]}, loss={"beta": 0.5}).train()
    _, extra = weighted.logits(x)
    mu, logvar = weighted.encode(x)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    torch.testing.assert_close(extra["kl"], 0.5 * kl)


def test_iou_metric_by_hand():
    m = SegVAE(image_size=8, latent_dim=2, encoder={"channels": [4]})
    pred = torch.tensor([[[[1, 1], [0, 0]]]])
    target = torch.tensor([[[[1, 0], [1, 0]]]])
    m.iou["val_miou"].update(pred, target)
    assert m.iou["val_miou"].compute().item() == pytest.approx(1 / 3)


def test_unet_random_init_shapes():
    m = UNet(in_channels=3, num_classes=1, encoder_name="resnet18", image_size=64).eval()
    assert m(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert isinstance(m.get_submodule(m.cam_layer), nn.Conv2d)
    from src.base.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of 32"):
        UNet(image_size=48)


def test_huge_log_variance_cannot_overflow_sampling():
    m = SegVAE(image_size=16, latent_dim=3, encoder={"channels": [4, 4]}, loss={"beta": 0.0}).train()
    with torch.no_grad():
        m.fc_logvar.bias.fill_(500.0)  # exp(250) is inf in float32
    logits, extra = m.logits(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(logits).all() and extra == {}
    m.eval()
    assert m.logits(torch.rand(2, 3, 16, 16))[1] == {}  # no 0 * inf KL at evaluation either


def test_seg_vae256_preset_uses_a_smaller_learning_rate():
    cfg = OmegaConf.load(CONF_DIR / "model" / "arch" / "seg_vae256.yaml")
    assert cfg.optimizer.lr == 1e-4
