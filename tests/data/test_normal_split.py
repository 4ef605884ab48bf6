"""The anomaly protocol's split (`data.normal`): train / val hold normal samples only, test holds all."""

import pytest
import torch

from src.base.errors import ConfigError
from src.data.digits import DigitsDataModule
from src.data.synthfaces.datamodule import SynthFacesDataModule
from src.data.synthfaces.parameters import ATTRIBUTES, sample_parameters


def rows(dataset):
    return dataset.indices


def test_one_class_split_on_digits():
    plain = DigitsDataModule(seed=3)
    plain.setup()
    dm = DigitsDataModule(seed=3, normal={"classes": [4]})
    dm.setup()
    labels = dm.train_set.fields["label"]
    for name in ("train", "val"):
        kept, before = rows(getattr(dm, f"{name}_set")), rows(getattr(plain, f"{name}_set"))
        # exactly the class-4 rows of the same seeded split, nothing else
        assert torch.equal(kept, before[labels[before] == 4])
    assert torch.equal(rows(dm.test_set), rows(plain.test_set))  # the test split is untouched
    batch = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    assert torch.equal(batch["anomalous"], batch["label"] != 4)
    assert batch["anomalous"].dtype == torch.bool and 0 < batch["anomalous"].float().mean() < 1


def test_faces_without_attributes(tmp_path):
    kwargs = dict(data_dir=str(tmp_path), count=60, image_size=32, cache_dir=str(tmp_path / "cache"), build_workers=1)
    plain = SynthFacesDataModule(**kwargs)
    plain.setup()
    dm = SynthFacesDataModule(**kwargs, normal={"without_attributes": ["Eyeglasses", "Wearing_Hat"]})
    dm.setup()
    p = sample_parameters(60, 0)  # the generator's own parameters: an oracle independent of the reader
    has = (p["Eyeglasses"] > 0.5) | (p["Wearing_Hat"] > 0.5)
    for name in ("train", "val"):
        before = rows(getattr(plain, f"{name}_set"))
        assert torch.equal(rows(getattr(dm, f"{name}_set")), before[~has[before]])
    assert torch.equal(rows(dm.test_set), rows(plain.test_set))
    assert torch.equal(dm.test_set.fields["anomalous"], has)
    assert dm.attribute_names == ATTRIBUTES


@pytest.mark.parametrize(
    ("normal", "key"),
    [
        ({"klass": [1]}, "data.normal"),
        ({"classes": 3}, "data.normal.classes"),
        ({"classes": []}, "data.normal.classes"),
        ({"classes": [42]}, "data.normal"),  # leaves nothing to train on
    ],
)
def test_bad_normal_config_names_the_key(normal, key):
    with pytest.raises(ConfigError) as err:
        dm = DigitsDataModule(normal=normal)
        dm.setup()
    assert err.value.key == key


def test_attribute_filter_needs_the_attribute(tmp_path):
    dm = SynthFacesDataModule(
        data_dir=str(tmp_path),
        count=20,
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        build_workers=1,
        attributes=["Smiling"],
        normal={"without_attributes": ["Eyeglasses"]},
    )
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert err.value.key == "data.normal.without_attributes" and "data.attributes" in str(err.value)


def test_a_single_sample_last_training_batch_is_dropped():
    """BatchNorm cannot train on a batch of one: a filtered split whose size is 1 more than a
    multiple of the batch size loses that sample (a different one each epoch), evaluation none."""
    dm = DigitsDataModule(seed=3, normal={"classes": [4]})
    dm.setup()
    n = len(dm.train_set)
    dm.batch_size, dm.eval_batch_size = n - 1, n - 1  # n = 1 (mod batch size)
    sizes = [len(b["image"]) for b in dm.train_dataloader()]
    assert sizes == [n - 1]
    assert [len(b["image"]) for b in dm._loader(dm.train_set, False, n - 1)] == [n - 1, 1]
    dm.batch_size = n - 2  # a last batch of 2 is kept
    assert [len(b["image"]) for b in dm.train_dataloader()] == [n - 2, 2]
