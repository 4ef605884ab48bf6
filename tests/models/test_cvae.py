import pytest
import torch

from src.base.errors import ConfigError
from src.models.cvae import CVAE


def tiny(**kw):
    args = dict(
        condition_dim=3,
        image_size=16,
        in_channels=3,
        latent_dim=4,
        encoder={"channels": [8, 8]},
        norm="none",
        bias=True,
    )
    return CVAE(**{**args, **kw}).eval()


def test_contract_shapes():
    m = tiny()
    x, c = torch.rand(2, 3, 16, 16), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    mu, logvar = m.encode(x, c)
    assert mu.shape == logvar.shape == (2, 4)
    assert m.decode(mu, c).shape == x.shape
    assert m.sample(5, c[:1].expand(5, 3)).shape == (5, 3, 16, 16)
    # the seeds' wiring: one extra input plane from Dense(c), z and c side by side into the decoder
    assert m.encoder.blocks[0].conv.in_channels == 4
    assert m.condition_plane.out_features == 16 * 16
    assert m.decoder.dense[0].linear.in_features == 4 + 3
    with pytest.raises(ValueError, match=r"condition of shape \[B, 3\]"):
        m.encode(x, None)
    assert torch.equal(m.encode_mean(x, c), mu)  # mu without logvar: the same ops on the same input


def test_condition_changes_the_output():
    torch.manual_seed(0)
    m = tiny()
    x = torch.rand(1, 3, 16, 16)
    c0, c1 = torch.tensor([[0.0, 0, 0]]), torch.tensor([[0.0, 1, 0]])
    assert not torch.allclose(m.encode(x, c0)[0], m.encode(x, c1)[0])
    z = torch.zeros(1, 4)
    assert not torch.allclose(m.decode(z, c0), m.decode(z, c1))
    # and the loss trains the condition path
    m.train()
    loss = m.loss_terms({"image": x, "attributes": c1}, beta=1.0)["loss"]
    loss.backward()
    assert m.condition_plane.weight.grad.abs().sum() > 0


def test_condition_at_every_decoder_block():
    torch.manual_seed(0)
    m = tiny(condition_every_block=True)
    assert [b.conv.in_channels for b in m.decoder.blocks] == [8 + 3, 8 + 3]
    z = torch.zeros(2, 4)
    c = torch.tensor([[0.0, 0, 0], [0.0, 1, 0]])
    out = m.decode(z, c)
    assert out.shape == (2, 3, 16, 16) and not torch.allclose(out[0], out[1])
    # c alone changes the last block: same input to the last conv except the c planes
    last = m.decoder.blocks[-1]
    h = torch.rand(1, 8, 8, 8)
    a = last(torch.cat([h, c[:1, :, None, None].expand(-1, -1, 8, 8)], 1))
    b = last(torch.cat([h, c[1:, :, None, None].expand(-1, -1, 8, 8)], 1))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"c of shape \[B, 3\] at every block"):
        m.decoder(torch.zeros(1, 7))


def test_label_condition_is_one_hot():
    m = tiny(condition="label")
    c = m.condition({"label": torch.tensor([2, 0])})
    assert torch.equal(c, torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    with pytest.raises(ConfigError, match="model.condition_dim"):
        tiny(condition_dim=0)


def test_checkpoint_keeps_attribute_names(tmp_path):
    import lightning as L

    m = tiny()
    m.attribute_names = ["Smiling", "Eyeglasses", "Male"]
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = CVAE.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    assert loaded.attribute_names == ["Smiling", "Eyeglasses", "Male"] and loaded.condition_dim == 3
