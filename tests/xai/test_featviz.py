import numpy as np
import pytest
import torch
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import nn

from src.models.classifier import build_cnn
from src.viz.plots import scatter_image
from src.xai.methods.featviz import (
    activation_maximisation,
    deconv_projections,
    embed,
    first_layer_filters,
    nearest_neighbours,
    receptive_field,
    top_patches,
    tsne,
    unit_objective,
    zoom,
)


def cnn():
    torch.manual_seed(0)
    features, head = build_cnn(1, 12, 3, [{"conv": 4, "padding": 1}, {"pool": 2}, {"conv": 6}], [8])
    return nn.Sequential(features, head).eval()


def test_first_layer_filters_are_the_scaled_weights():
    model = cnn()
    f = first_layer_filters(model)
    w = model[0][0].conv.weight.detach()
    assert f.shape == w.shape and f.amin() == 0 and f.amax() == 1
    expected = (w[2] - w[2].min()) / (w[2].max() - w[2].min())
    torch.testing.assert_close(f[2], expected)


def test_activation_maximisation_of_a_linear_unit_points_along_its_weights():
    """max w.x over the box [-1, 1]^n with an L2 penalty: the optimum is along w (sign pattern of w)."""
    w = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))

    def objective(x):
        return (x * w).flatten(1).sum(1)

    x = activation_maximisation(objective, (1, 2, 6, 6), steps=300, lr=0.05, l2=0.0, value_range=(-1.0, 1.0))
    cos = torch.nn.functional.cosine_similarity(x.flatten(), w.flatten(), dim=0)
    assert torch.equal(x.sign(), w.sign()) and cos > 0.75  # at the box corner sign(w): cos = |w|_1 / (sqrt(n) |w|)
    start = activation_maximisation(objective, (1, 2, 6, 6), steps=0, value_range=(-1.0, 1.0))
    assert objective(x) > objective(start) + 10


def test_activation_maximisation_with_regularisers_raises_a_class_logit_and_a_channel():
    model = cnn()
    for layer, unit in ((None, 1), ("0.2.conv", 3)):
        objective = unit_objective(model, layer, unit)
        start = activation_maximisation(objective, (2, 1, 12, 12), steps=0)
        x = activation_maximisation(objective, (2, 1, 12, 12), steps=60, tv=0.1, jitter=1, scale=0.1, blur_every=10)
        assert x.shape == (2, 1, 12, 12) and x.min() >= 0 and x.max() <= 1
        assert (objective(x) > objective(start)).all()
    assert all(p.grad is None for p in model.parameters())


def test_receptive_field_of_a_conv_pool_conv_stack():
    model = cnn()  # conv3 (pad 1) -> pool 2 -> conv3: 8x8 window of the input for an interior unit
    assert receptive_field(model, "0.2.conv", (1, 12, 12), (2, 2)) == (3, 3, 11, 11)  # input rows 2r-1 .. 2r+6
    assert receptive_field(model, "0.2.conv", (1, 12, 12), (0, 0)) == (0, 0, 7, 7)  # clipped at the border
    assert receptive_field(model, "0.0.conv", (1, 12, 12), (5, 5)) == (4, 4, 7, 7)


def test_top_patches_are_the_highest_activations_and_their_crops():
    model = cnn()
    images = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    crops, values, where = top_patches(model, "0.2.conv", images, channel=2, k=3)
    acts = embed(model, "0.2.conv", images).view(10, 6, 4, 4)[:, 2]
    torch.testing.assert_close(values, acts.flatten().topk(3).values)
    assert crops.shape == (3, 1, 8, 8)
    for crop, (idx, r, c) in zip(crops, where.tolist()):
        top, left, bottom, right = receptive_field(model, "0.2.conv", (1, 12, 12), (r, c))
        dr = 8 - (bottom - top) if top == 0 else 0  # cut off at the top / left: content sits low / right
        dc = 8 - (right - left) if left == 0 else 0
        torch.testing.assert_close(
            crop[:, dr : dr + bottom - top, dc : dc + right - left], images[idx, :, top:bottom, left:right]
        )


def test_nearest_neighbours_against_brute_force():
    g = torch.Generator().manual_seed(2)
    pool, queries = torch.randn(30, 5, generator=g), torch.randn(4, 5, generator=g)
    nn_idx = nearest_neighbours(queries, pool, k=3)
    for q in range(4):
        d = [(float((queries[q] - pool[i]).norm()), i) for i in range(30)]
        assert nn_idx[q].tolist() == [i for _, i in sorted(d)[:3]]


def test_tsne_is_sklearns_and_renders():
    emb = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))
    # the same scikit-learn call on the same float64 input, on one OpenMP thread (so its reductions
    # add in one order): exact
    with threadpool_limits(1, user_api="openmp"):
        ours = tsne(emb, seed=0, perplexity=10)
        theirs = TSNE(n_components=2, perplexity=10, init="pca", random_state=0).fit_transform(emb.double().numpy())
    np.testing.assert_array_equal(ours, theirs)
    image = scatter_image(ours, np.arange(40) % 3, ["a", "b", "c"], size=3)
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8 and image.std() > 0


def test_border_patches_keep_their_content_where_it_was():
    model = cnn()
    images = torch.zeros(1, 1, 12, 12)
    images[0, 0, 0, 0] = 1.0
    crops, values, where = top_patches(model, "0.2.conv", images, channel=0, k=16)
    for crop, (_, r, c) in zip(crops, where.tolist()):
        top, left, bottom, right = receptive_field(model, "0.2.conv", (1, 12, 12), (r, c))
        if (r, c) == (0, 0):  # field rows / cols -1 .. 6: one missing row / col at the top-left
            assert (top, left) == (0, 0) and crop[0, 1, 1] == 1.0 and crop[0, 0].abs().sum() == 0


def test_scale_jitter_zooms():
    """With zoom only (no other regulariser), the objective sees a rescaled image: a centred blob's
    measured width changes with the zoom factor, so the gradient differs from the un-zoomed one."""
    seen = []

    def objective(x):
        seen.append(x.detach().clone())
        return x.mean(dim=(1, 2, 3))

    activation_maximisation(objective, (1, 1, 16, 16), steps=3, lr=0.0, scale=0.3, seed=4)
    base = activation_maximisation(lambda x: x.mean(dim=(1, 2, 3)), (1, 1, 16, 16), steps=0, seed=4)
    assert any(not torch.allclose(v, base, atol=1e-3) for v in seen)


def test_zoom_moves_an_off_centre_blob_away_from_the_centre_by_the_factor():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 22:26, 22:26] = 1.0  # centre of mass 23.5 +- 0.5 px from the image centre 15.5 -> offset 8

    def offset(img):
        rows = torch.arange(32.0).view(-1, 1)
        return float((img[0, 0] * rows).sum() / img[0, 0].sum()) - 15.5

    assert offset(x) == 8.0
    assert offset(zoom(x, 1.25)) == pytest.approx(10.0, abs=0.3)
    assert offset(zoom(x, 0.8)) == pytest.approx(6.4, abs=0.3)


def test_deconv_projection_of_a_planted_pattern_is_that_pattern_at_its_place():
    """One filter is the pattern P; each image holds P once (at its own place and contrast). The top
    activations of the layer after it are the planted places, and the deconvnet projects each one
    back to 2 P (the unit signal through the 1x1 layer's weight 2, then the filter transposed) at
    exactly that place and zero elsewhere: cut to the receptive field, the image's crop rescaled."""
    pattern = torch.tensor([[1.0, -1.0, 1.0], [0.0, 2.0, 0.0], [1.0, -1.0, 1.0]])
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(1, 1, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(pattern.view(1, 1, 3, 3))
        model[2].weight.fill_(2.0)
    places, contrast = [(2, 3), (6, 6), (4, 1), (7, 2)], [1.0, 0.9, 0.8, 0.7]
    images = torch.zeros(4, 1, 10, 10)
    for i, ((r, c), a) in enumerate(zip(places, contrast, strict=True)):
        images[i, 0, r - 1 : r + 2, c - 1 : c + 2] = a * pattern
    crops, values, where = top_patches(model, "2", images, channel=0, k=4)
    assert where.tolist() == [[i, r, c] for i, (r, c) in enumerate(places)]  # the plants, by contrast
    full, cut = deconv_projections(model, "2", images, 0, where)
    for i, (r, c) in enumerate(places):
        expected = torch.zeros(10, 10)
        expected[r - 1 : r + 2, c - 1 : c + 2] = 2.0 * pattern  # the 1x1 layer's 2, then the filter transposed
        assert torch.equal(full[i, 0], expected)
        torch.testing.assert_close(cut[i], crops[i] * 2.0 / contrast[i], rtol=0, atol=1e-6)
    with torch.inference_mode():  # as `python -m src.explain` renders (Lightning's validation loop)
        again_crops, _, again_where = top_patches(model, "2", images, channel=0, k=4)
        again = deconv_projections(model, "2", images, 0, again_where)[0]
    assert torch.equal(again_crops, crops) and torch.equal(again, full)
    # at a place without the pattern the ReLU is closed: a deconvnet passes the positive signal anyway
    blank = deconv_projections(model, "2", torch.zeros(1, 1, 10, 10), 0, torch.tensor([[0, 5, 5]]))[0]
    assert torch.equal(blank[0, 0, 4:7, 4:7], 2.0 * pattern)
