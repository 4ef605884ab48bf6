"""Each model kind meets the contracts its docstring declares (src/base/contracts.py), and no others
that would change how it is explained."""

import pytest
from torch import nn

from src.base.contracts import Classifier, ConditionalModel, GenerativeModel, Segmenter, kind
from src.models.classifier import Classifier as ClassifierModel
from src.models.cvae import CVAE
from src.models.segmentation import SegVAE, UNet
from src.models.vae import VAE

PROTOCOLS = {
    "generative": GenerativeModel,
    "conditional": ConditionalModel,
    "classifier": Classifier,
    "segmenter": Segmenter,
}

# name -> (small instance, the protocols it meets, kind()). A segmenter also has `classes` and
# returns logits from model(x), so it meets Classifier structurally too: kind() tries Segmenter first.
MODELS = {
    "vae": (
        lambda: VAE(image_size=8, in_channels=1, latent_dim=2, encoder={"channels": [4]}),
        {"generative"},
        "generative",
    ),
    "cvae": (
        lambda: CVAE(condition_dim=3, image_size=8, in_channels=1, latent_dim=2, encoder={"channels": [4]}),
        {"generative", "conditional"},
        "conditional",
    ),
    "seg_vae": (
        lambda: SegVAE(image_size=8, latent_dim=2, encoder={"channels": [4]}),
        {"segmenter", "generative", "classifier"},
        "segmenter",
    ),
    "unet": (
        lambda: UNet(in_channels=3, num_classes=1, encoder_depth=3, image_size=8),
        {"segmenter", "classifier"},
        "segmenter",
    ),
    "classifier": (
        lambda: ClassifierModel(num_classes=3, image_size=8, in_channels=1, layers=[{"conv": 4}]),
        {"classifier"},
        "classifier",
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_meet_exactly_their_contracts(name):
    build, meets, expected_kind = MODELS[name]
    model = build()
    met = {p for p, proto in PROTOCOLS.items() if isinstance(model, proto)}
    assert met == meets
    assert kind(model) == expected_kind
    assert kind(type(model)) == expected_kind, "the class's declared kind is not its instances'"


def test_kind_names_the_type_of_a_model_meeting_no_contract():
    with pytest.raises(ValueError, match="Linear"):
        kind(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Linear declares no `kind`"):
        kind(nn.Linear)
