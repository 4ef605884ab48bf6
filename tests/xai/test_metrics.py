import copy

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from src.testing.tolerance import relative_bound
from src.xai import deletion, insertion, region_scores, targets
from src.xai.scores.metrics import (
    PerturbationCurve,
    cascading_randomization,
    map_similarity,
    parametric_layers,
    perturbation_curve,
    spearman,
)


def perturbation_scores(model, x, rel, t, **options):
    """[B, steps + 1] the curve of `perturbation_curve` through the one call shape."""
    return perturbation_curve(model, x, targets.classes(t), explanation=rel, **options).scores


class LinearScore(nn.Module):
    """logit 0 = sum(w * x), logit 1 = 0."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_curve_closed_form():
    w = torch.tensor([[[[4.0, -1.0], [2.0, 0.5]]]])
    x = torch.ones(1, 1, 2, 2)
    model = LinearScore(w)
    rel = w * x  # perfect relevance: order 4, 2, 0.5, -1
    t = torch.tensor([0])
    curve = perturbation_scores(model, x, rel, t, steps=4, score="logit")
    torch.testing.assert_close(curve, torch.tensor([[5.5, 1.5, -0.5, -1.0, 0.0]]))
    lerf = perturbation_scores(model, x, rel, t, steps=4, score="logit", order="lerf")
    torch.testing.assert_close(lerf, torch.tensor([[5.5, 6.5, 6.0, 4.0, 0.0]]))
    ins = perturbation_scores(model, x, rel, t, steps=4, score="logit", mode="insertion")
    torch.testing.assert_close(ins, torch.tensor([[0.0, 4.0, 6.0, 6.5, 5.5]]))
    with pytest.raises(ValueError, match="morf"):
        perturbation_scores(model, x, rel, t, order="best")
    # deletion / insertion: the same curves through the methods' call shape
    torch.testing.assert_close(
        deletion(model, x, targets.classes(0), explanation=rel, steps=4, score="logit").scores, curve
    )
    torch.testing.assert_close(
        insertion(model, x, targets.classes(0), explanation=rel, steps=4, score="logit").scores, ins
    )


def test_perfect_map_beats_random_beats_inverted():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 8, 8, generator=g)
    model = LinearScore(w)
    x = torch.rand(16, 1, 8, 8, generator=g)
    t = torch.zeros(16, dtype=torch.long)
    perfect = w * x
    scores = {}
    for name, rel in {"perfect": perfect, "random": torch.rand(16, 1, 8, 8, generator=g), "inverted": -perfect}.items():
        metric = PerturbationCurve(steps=16, score="logit")
        metric.update(model, x[:8], rel[:8], t[:8])
        metric.update(model, x[8:], rel[8:], t[8:])  # accumulates over batches
        scores[name] = metric.compute()
        assert scores[name]["n"] == 16 and scores[name]["curve"].shape == (17,)
    assert scores["perfect"]["aopc"] > scores["random"]["aopc"] > scores["inverted"]["aopc"]
    assert scores["perfect"]["auc"] < scores["random"]["auc"] < scores["inverted"]["auc"]


def test_pointing_game_and_mass_inside_by_hand():
    rel = torch.tensor([[[0.0, 3.0], [1.0, -2.0]], [[5.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[[0, 1], [0, 0]], [[0, 0], [1, 1]], [[0, 0], [0, 0]]]).bool()  # third: empty
    out = region_scores(rel, mask)
    assert out["pointing"][:2].tolist() == [1.0, 0.0]  # first: max (3.0) inside; second: max (5.0) outside
    assert out["mass_inside"][:2].tolist() == pytest.approx([3 / 4, 1 / 6])
    assert out["pointing"][2].isnan() and out["mass_inside"][2].isnan()


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (3, 40), generator=g).float()
    b = torch.randn(3, 40, generator=g)
    ours = spearman(a, b)
    for i in range(3):  # float32 vs scipy's float64: means, products, norms of 40 ranks; |terms| / norms <= 1
        assert ours[i].item() == pytest.approx(spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=relative_bound(120))
    assert spearman(torch.ones(1, 5), torch.arange(5.0)[None]).item() == 0.0
    same = map_similarity(torch.rand(2, 12, 12), torch.rand(2, 12, 12) * 0)
    assert same["spearman"] == 0.0


def test_cascading_randomization_decorrelates_gradients_and_leaves_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 1, 10, 10)
    assert parametric_layers(model) == ["0", "3"]
    rows = cascading_randomization(model, x, targets.classes(1), method="saliency").rows()
    assert [r["layer"] for r in rows] == ["3", "0"]
    assert rows[-1]["spearman"] < 0.5 and rows[-1]["ssim"] < 0.9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # unrelated maps are uncorrelated; a map against itself scores 1
    same = map_similarity(torch.rand(2, 10, 10).add(1), torch.rand(2, 10, 10).add(1))
    assert same["spearman"] < 0.5
    x_map = torch.rand(2, 10, 10)
    # SSIM's 9x9 window sums of x * x and x * y run as separate images; var = E[x^2] - mean^2 cancels
    # ~4x for uniform values (1/3 - 1/4)
    ssim_bound = 4 * relative_bound(81)
    assert map_similarity(x_map, x_map) == {"spearman": pytest.approx(1.0), "ssim": pytest.approx(1.0, abs=ssim_bound)}
