import torch

from src.xai import targets
from src.xai.latent.attribute_control import attribute_control


class Toy:
    """A CVAE stand-in: the code is two pixels, `decode` draws the condition."""

    def __init__(self, decode):
        self.decode = decode

    def encode(self, x, c):
        return encode(x, c)


def encode(x, c):
    return x.flatten(1)[:, :2], None


def obedient_decode(z, c):
    """Pixel (0, 0) shows attribute 0, pixel (0, 1) attribute 1."""
    out = torch.zeros(len(z), 1, 4, 4)
    out[:, 0, 0, 0] = c[:, 0]
    out[:, 0, 0, 1] = c[:, 1]
    return out


def deaf_decode(z, c):
    return torch.zeros(len(z), 1, 4, 4)  # ignores the condition: always "off"


def judge(x):
    return (x[:, 0, 0, :2] - 0.5) * 10  # logits for the two attributes


def test_an_obedient_generator_scores_one():
    images = obedient_decode(torch.zeros(6, 2), torch.tensor([[1.0, 0]] * 3 + [[0, 1.0]] * 3))
    conditions = torch.tensor([[1.0, 0]] * 3 + [[0, 1.0]] * 3)
    result = attribute_control(
        Toy(obedient_decode), images, targets.judged(judge, [0, 1]), conditions=conditions, attributes={"a": 0, "b": 1}
    )
    assert result["a"] == {"acc_off": 1.0, "acc_on": 1.0, "acc": 1.0, "judge_acc_real": 1.0, "judge_acc_recon": 1.0}
    assert result["b"]["acc"] == 1.0


def test_a_generator_that_ignores_the_condition_scores_half():
    conditions = torch.tensor([[1.0, 0]] * 4)
    images = obedient_decode(torch.zeros(4, 2), conditions)
    result = attribute_control(
        Toy(deaf_decode), images, targets.judged(judge, [0]), conditions=conditions, attributes={"a": 0}
    )
    assert result["a"]["acc_on"] == 0.0 and result["a"]["acc_off"] == 1.0 and result["a"]["acc"] == 0.5


def test_judge_is_fed_its_own_size():
    seen = []

    def sized_judge(x):
        seen.append(x.shape[-1])
        return torch.zeros(len(x), 1)

    attribute_control(
        Toy(obedient_decode),
        torch.zeros(2, 1, 4, 4),
        targets.judged(sized_judge, [0], size=2),
        conditions=torch.zeros(2, 2),
        attributes={"a": 0},
    )
    assert seen == [2, 2, 2, 2]  # real images, reconstructions, off, on


def test_intervene_mends_the_condition_before_decoding():
    seen = []

    def recording_decode(z, c):
        seen.append(c.clone())
        return obedient_decode(z, c)

    def exclusive(c, name, value):  # a and b cannot both be on
        out = c.clone()
        out[:, {"a": 0, "b": 1}[name]] = value
        if value:
            out[:, 1 - {"a": 0, "b": 1}[name]] = 0.0
        return out

    conditions = torch.tensor([[0.0, 1.0]] * 2)
    images = obedient_decode(torch.zeros(2, 2), conditions)
    result = attribute_control(
        Toy(recording_decode),
        images,
        targets.judged(judge, [0]),
        conditions=conditions,
        attributes={"a": 0},
        intervene=exclusive,
    )
    assert torch.equal(seen[0], conditions)  # the unedited reconstruction
    assert torch.equal(seen[2], torch.tensor([[1.0, 0.0]] * 2))  # "a on" switched b off
    assert torch.equal(seen[1], conditions * torch.tensor([0.0, 1.0]))  # "a off" left b alone
    assert result["a"]["acc"] == 1.0
