"""A model trained with trainer=ddp's sync_batchnorm (nn.SyncBatchNorm layers) is explained as its
BatchNorm twin: in eval mode the two compute the same function, so every registered method gives
the same maps (LRP and excitation backprop included), and folding folds its norms."""

import copy

import pytest
import torch
from torch import nn

from src import xai
from src.models.classifier import build_cnn
from src.xai import targets
from src.xai.folding import folded

FAST = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "mask_perturbation": {"steps": 3},
    "scorecam": {"chunk_size": 2},
}


def twins() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    features, head = build_cnn(1, 12, 3, [{"conv": 4, "padding": 1}, {"pool": 2}, {"conv": 6, "padding": 1}], [8])
    plain = nn.Sequential(features, head)
    g = torch.Generator().manual_seed(3)
    for m in plain.modules():  # statistics and affine parameters that change the function
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))  # converts in place
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    return plain.eval(), synced.eval()


@pytest.mark.parametrize("name", sorted(xai.METHODS))
def test_every_method_explains_a_sync_batchnorm_model_as_its_batchnorm_twin(name):
    plain, synced = twins()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    target = targets.classes(torch.tensor([[0, 2], [1, 0], [2, 1]]))
    torch.manual_seed(5)
    want = xai.explain(name, plain, x, target, **FAST.get(name, {})).maps
    torch.manual_seed(5)
    got = xai.explain(name, synced, x, target, **FAST.get(name, {})).maps
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_folding_folds_sync_batchnorm():
    plain, synced = twins()
    fast_plain, fast_synced = folded(plain, synced)
    norms = [m for m in fast_synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not norms  # every norm follows a conv and is folded into it
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(fast_synced(x), fast_plain(x), rtol=0, atol=0)  # the same folding
