import math

import numpy as np
import pytest
import torch

from src.testing.tolerance import assert_close_scaled, relative_bound
from src.xai.morph.path_mask import (
    Blends,
    PathMaskConfig,
    _mask_gains,
    anchored_gain_estimate,
    blend_gains_and_grads,
    entropy_window,
    gain_proposal,
    path_gain_estimate,
    path_gradients,
    path_mask,
    pearson,
)
from src.xai.morph.pipeline import MorphConfig, morph_path
from src.xai.morph.semantic import (
    class_norm_means,
    linear_path,
    morph_targets,
    radial_path,
    semantic_morph,
    starting_code,
    two_class_entropy,
)


def test_radial_path_keeps_the_norm_of_orthogonal_equal_norm_endpoints():
    c0 = torch.tensor([[3.0, 0.0, 0.0]])
    c1 = torch.tensor([[0.0, 0.0, 3.0]])
    radial, line = radial_path(c0, c1, 11), linear_path(c0, c1, 11)
    torch.testing.assert_close(radial.norm(dim=-1), torch.full((11, 1), 3.0))
    torch.testing.assert_close(radial[0], c0)
    torch.testing.assert_close(radial[-1], c1)
    assert line.norm(dim=-1)[5, 0] == pytest.approx(3 / math.sqrt(2))  # the straight line sags
    # random high-dimensional codes of equal norm are nearly orthogonal: the norm barely moves
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 100, generator=g), torch.randn(8, 100, generator=g)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    ratio = radial_path(a, b, 50).norm(dim=-1) / a.norm(dim=1)
    assert (ratio - 1).abs().max() < 0.15


def test_norm_means_entropy_and_targets_by_hand():
    means = class_norm_means(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2]), 3)
    assert means[0] == 2.0 and torch.isnan(means[1]) and means[2] == 5.0
    logits = torch.tensor([[2.0, 2.0, -5.0], [20.0, 0.0, 1.0]])
    h = two_class_entropy(logits, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert h[0] == pytest.approx(1.0) and h[1] < 1e-6
    a, o = morph_targets(torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 2.0]]), labels=torch.tensor([1, 1]))
    assert a.tolist() == [1, 0] and o.tolist() == [2, 1]  # second class; the true class when wrong


W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]) * 4  # 3 classes read a 2-D code


def classify(x):
    return x.flatten(1) @ W.T


def decode(c):
    return c.view(-1, 1, 1, 2)


def test_morph_reaches_the_target_and_stops_on_the_criterion():
    start = torch.tensor([[2.0, 0.0], [1.5, 0.5], [3.0, -1.0]])
    a, o = torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])
    norm_means = torch.tensor([2.0, 2.0, 2.0])
    out = semantic_morph(decode, classify, start, a, o, norm_means, alpha_lk=0.1, lr=0.05, max_steps=2000)
    assert out.converged.all()
    logits = classify(decode(out.codes))
    assert (logits.argmax(1) == o).all()
    assert (two_class_entropy(logits, a, o) < 0.01).all()
    torch.testing.assert_close(out.entropy, two_class_entropy(logits, a, o))
    # it stopped at the first step meeting the criterion: one step fewer and it has not converged
    for i in range(3):
        short = semantic_morph(
            decode,
            classify,
            start[i : i + 1],
            a[i : i + 1],
            o[i : i + 1],
            norm_means,
            alpha_lk=0.1,
            lr=0.05,
            max_steps=int(out.steps[i]) - 1,
        )
        assert not short.converged.any()


def test_batched_morphing_equals_each_sample_alone():
    g = torch.Generator().manual_seed(1)
    start = torch.randn(5, 2, generator=g) + torch.tensor([2.0, 0.0])
    a, o = torch.zeros(5, dtype=torch.long), torch.tensor([1, 1, 2, 1, 2])
    norm_means = torch.tensor([2.0, 2.5, 1.0])
    batch = semantic_morph(decode, classify, start, a, o, norm_means, alpha_lk=1.0, lr=0.05, max_steps=400)
    assert batch.converged.sum() >= 3 and len(set(batch.steps.tolist())) > 1  # they stop at different steps
    for i in range(5):
        alone = semantic_morph(
            decode,
            classify,
            start[i : i + 1],
            a[i : i + 1],
            o[i : i + 1],
            norm_means,
            alpha_lk=1.0,
            lr=0.05,
            max_steps=400,
        )
        assert alone.steps.item() == batch.steps[i].item()
        # 1 row vs 5 in each step's matmuls (other kernels); a step's ~10 terms (2-D code, 3 logits,
        # softmax, norm), errors carried through up to 400 steps
        assert_close_scaled(alone.codes[0], batch.codes[i], terms=400 * 10, scale=batch.codes)


def test_stopped_samples_are_no_longer_classified():
    g = torch.Generator().manual_seed(1)
    start = torch.randn(5, 2, generator=g) + torch.tensor([2.0, 0.0])
    a, o = torch.zeros(5, dtype=torch.long), torch.tensor([1, 1, 2, 1, 2])
    norm_means = torch.tensor([2.0, 2.5, 1.0])
    sizes = []

    def counting(x):
        sizes.append(len(x))
        return classify(x)

    out = semantic_morph(decode, counting, start, a, o, norm_means, alpha_lk=1.0, lr=0.05, max_steps=400)
    # step t classifies exactly the samples that had not stopped before t
    expected = [int((out.steps >= t).sum()) for t in range(int(out.steps.max()) + 1)]
    assert sizes == expected and sizes[0] == 5 and sizes[-1] < 5


def test_bf16_morph_runs_the_models_under_autocast_and_keeps_the_codes_float32():
    start = torch.tensor([[2.0, 0.0], [1.5, 0.5], [3.0, -1.0]])
    a, o = torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])
    seen = []

    def recording(x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return classify(x)

    out = semantic_morph(
        decode,
        recording,
        start,
        a,
        o,
        torch.tensor([2.0, 2.0, 2.0]),
        alpha_lk=0.1,
        lr=0.05,
        max_steps=2000,
        autocast=torch.bfloat16,
    )
    assert set(seen) == {torch.bfloat16} and out.codes.dtype == torch.float32
    assert out.converged.all() and (classify(decode(out.codes)).argmax(1) == o).all()
    with pytest.raises(ValueError, match="unknown morphing precision '16'"):
        morph_path(classify, start, vae=None, norm_means=torch.ones(3), morph=MorphConfig(precision="16"))


def test_starting_code_is_the_nearest_draw_that_keeps_the_top_two():
    mu = torch.tensor([[2.0, 0.5], [0.2, 0.1]])

    def encode(x):
        return mu, torch.full_like(mu, math.log(0.5))

    x = decode(mu)
    codes, kept = starting_code(encode, decode, classify, x, samples=30, seed=3)
    eps = torch.randn((30, 2, 2), generator=torch.Generator().manual_seed(3))
    z = mu[None] + eps * math.sqrt(0.5)
    top2 = classify(x).topk(2, dim=1).indices
    for b in range(2):
        ok = [s for s in range(30) if torch.equal(classify(decode(z[s, b]))[0].topk(2).indices, top2[b])]
        best = min(ok, key=lambda s: float((decode(z[s, b]) - x[b]).norm()))
        assert kept[b] and torch.equal(codes[b], z[best, b])


def test_entropy_window_and_pearson():
    entropy = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    win = entropy_window(entropy)
    assert win["mean"].item() == 1.5 and win["std"].item() == pytest.approx(0.5)
    assert win["low"].item() == pytest.approx(1.5 - 0.98) and win["high"].item() == pytest.approx(1.5 + 0.98)
    u, v = torch.randn(20, 3), torch.randn(20, 3)
    for b in range(3):  # float32 against numpy's float64: means, products, norms over 20 samples; |terms| <= 1
        assert pearson(u, v)[b].item() == pytest.approx(np.corrcoef(u[:, b], v[:, b])[0, 1], abs=relative_bound(60))


def test_path_mask_finds_the_region_that_flips_the_class():
    """Class 1 reads only the top-left 3x3 block; along the path every pixel changes, but only the
    block's change matters, so the mask should cover it and little else."""
    region = torch.zeros(1, 1, 8, 8)
    region[..., :3, :3] = 1.0

    def clf(x):
        s = (x * region).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.zeros(2, 1, 8, 8), torch.rand(2, 1, 8, 8, generator=g) + 0.5
    path = torch.stack([x0 + t * (x1 - x0) for t in torch.linspace(0, 1, 6)])
    out = path_mask(clf, path, torch.tensor([1, 1]), PathMaskConfig(steps=400, lr=0.05))
    mask = out.mask
    inside, outside = mask[:, 0, :2, :2].mean(), mask[:, 0, 5:, 5:].mean()
    assert inside > 0.8 and outside < 0.2, (inside, outside)
    torch.testing.assert_close(out.signed, mask * (x1 - x0))
    # the gains are p_o of the blends minus p_o of the path images, under the final mask
    p = torch.sigmoid((path * region).flatten(2).sum(2))  # p_1 = softmax([0, s])_1
    blend = path[:-1] * (1 - mask) + path[1:] * mask
    torch.testing.assert_close(out.gains, torch.sigmoid((blend * region).flatten(2).sum(2)) - p[:-1])
    assert out.loss.shape == (400, 2) and out.loss[-50:].mean() < out.loss[:50].mean()
    # batched: each sample's mask is what it gets alone from the same initial parameters
    init = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    for i in range(2):
        alone = path_mask(
            clf, path[:, i : i + 1], torch.tensor([1]), PathMaskConfig(steps=400, lr=0.05), init=init[i : i + 1]
        )
        # 1 sample vs 2 (other kernels): each step's 64-pixel sums, errors carried through 400 Adam steps
        assert_close_scaled(alone.mask[0], mask[i], terms=400 * 64, scale=1.0)  # a mask in [0, 1]


def test_path_gradients_match_the_softmax_gradient_in_closed_form():
    g = torch.Generator().manual_seed(2)
    images = 0.2 * torch.randn(4, 3, 1, 1, 2, generator=g)  # [S, B, C, H, W]
    cls = torch.tensor([0, 2, 1])
    logits, got = path_gradients(classify, images, cls, chunk=5)
    # the logits of the same pass are each image's own (chunks of 5 cut across samples and steps);
    # 2-term dot products, which another batch size may round differently
    assert_close_scaled(logits, torch.stack([classify(images[s]) for s in range(4)]), terms=2)
    for s in range(4):
        for b in range(3):
            p = torch.softmax(classify(images[s, b : b + 1]), 1)[0]
            grad = p[cls[b]] * (W[cls[b]] - p @ W)  # d p_a / d x for logits W x
            # autograd vs the closed form: 3-class sums, terms up to p_a * 2 max|W| (W_a - p W cancels)
            scale = float(p[cls[b]] * 2 * W.abs().max())
            assert_close_scaled(got[s, b], grad.norm(), terms=4 * W.numel(), scale=scale)


def _region_problem(b=3, s=12, size=8):
    region = torch.zeros(1, 1, size, size)
    region[..., :3, :3] = 1.0

    def clf(x):
        t = (x * region).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(t), t], 1)

    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.zeros(b, 1, size, size), torch.rand(b, 1, size, size, generator=g) + 0.5
    path = torch.stack([x0 + t * (x1 - x0) for t in torch.linspace(0, 1, s)])
    return clf, path, torch.ones(b, dtype=torch.long)


def test_fast_path_mask_with_every_blend_and_no_stop_is_the_exact_method():
    clf, path, o = _region_problem()
    exact = path_mask(clf, path, o, PathMaskConfig(steps=60, lr=0.05), seed=3)
    every = path_mask(
        clf, path, o, PathMaskConfig(steps=60, lr=0.05, num_blends=path.shape[0] - 1, proposal="uniform"), seed=3
    )
    for a, b in ((exact.mask, every.mask), (exact.gains, every.gains), (exact.loss, every.loss)):
        assert torch.equal(a, b)
    assert exact.steps.tolist() == [60, 60, 60]
    # anchored at every step, the draws only correct the anchor by 0: the exact method, up to the
    # float order of its sums (gradients summed over 11 blends of 64 pixels, through 60 Adam steps)
    anchored = path_mask(
        clf, path, o, PathMaskConfig(steps=60, lr=0.05, num_blends=2, proposal="gain", refresh=1), seed=3
    )
    assert_close_scaled(anchored.mask, exact.mask, terms=60 * 11 * 64, scale=1.0)


def test_path_gain_estimate_is_unbiased():
    """Mean over many subsets = the full sum, within 5 standard errors of sampling without
    replacement: Var = S'^2 (1 - k / S') sigma^2 / k per draw, sigma^2 the blends' variance."""
    clf, path, o = _region_problem(b=2, s=15)
    mask = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x_i, x_next = path[:-1], path[1:]
    oo = o.repeat(14).view(-1, 1)
    base = torch.softmax(clf(x_i.flatten(0, 1)), 1).gather(1, oo).view(14, 2)
    gains = _mask_gains(clf, mask, x_i, x_next, base, oo).double()  # [14, 2]
    k, draws = 4, 1500
    g = torch.Generator().manual_seed(5)
    estimates = torch.stack(
        [path_gain_estimate(clf, mask, Blends(x_i, x_next, base, o), k, g) for _ in range(draws)]
    ).double()
    variance = 14**2 * (1 - k / 14) * gains.var(0) / k
    assert ((estimates.mean(0) - gains.sum(0)).abs() < 5 * (variance / draws).sqrt()).all()
    assert estimates.std(0).min() > 0  # a real estimate, not the full sum every time


def test_gain_proposal_mixes_uniform_and_gain_shares():
    gains = torch.tensor([[0.0, 0.0], [-3.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    q = gain_proposal(gains)
    # half of 1/4 each, plus half of |g| / sum |g| = (0, 3/4, 1/4, 0); all zero gains: uniform
    expected = torch.tensor([[0.125, 0.25], [0.5, 0.25], [0.25, 0.25], [0.125, 0.25]])
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-7)


def _gain_problem():
    clf, path, o = _region_problem(b=2, s=15)
    x_i, x_next = path[:-1], path[1:]
    oo = o.repeat(14).view(-1, 1)
    base = torch.softmax(clf(x_i.flatten(0, 1)), 1).gather(1, oo).view(14, 2)
    return clf, x_i, x_next, base, o, oo


def test_blend_gains_and_grads_are_each_blends_own():
    clf, x_i, x_next, base, o, oo = _gain_problem()
    mask = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    gains, grads = blend_gains_and_grads(clf, mask, Blends(x_i, x_next, base, o), rows=6)  # chunks of 3 blends
    for i in range(14):  # the oracle: autograd of one blend's gain w.r.t. the mask
        m = mask.clone().requires_grad_(True)
        g = _mask_gains(clf, m, x_i[i : i + 1], x_next[i : i + 1], base[i : i + 1], o.view(-1, 1))[0]
        (dm,) = torch.autograd.grad(g.sum(), m)
        # the same softmax of a 64-pixel sum, in a batch of 6 vs 2 (other kernels may sum in another order)
        assert_close_scaled(gains[i], g.detach(), terms=64, scale=1.0)
        # chain rule in another order (blend gradient x (x_next - x_i) summed over channels vs through the mask)
        assert_close_scaled(grads[i], dm, terms=64, scale=dm.abs().max())


def test_anchored_gain_estimate_is_exact_at_its_anchor_and_unbiased_elsewhere():
    """At the anchor every correction is 0: the full sum and gradient, whatever is drawn. Away
    from it, the mean over draws of the value and of the gradient (projected on a fixed direction)
    equals the full sum within 5 standard errors (estimated from the draws)."""
    clf, x_i, x_next, base, o, oo = _gain_problem()
    gen = torch.Generator().manual_seed(4)
    anchor, mask = torch.rand(2, 1, 8, 8, generator=gen), torch.rand(2, 1, 8, 8, generator=gen)
    direction = torch.randn(2, 1, 8, 8, generator=gen)

    def full(m):
        m = m.clone().requires_grad_(True)
        value = _mask_gains(clf, m, x_i, x_next, base, oo).sum(0)
        (g,) = torch.autograd.grad(value.sum(), m)
        return value.detach(), (g * direction).flatten(1).sum(1)

    def estimate(m, a_gain, a_grad, q, g):
        m = m.clone().requires_grad_(True)
        value = anchored_gain_estimate(clf, m, Blends(x_i, x_next, base, o), q, a_gain, a_grad, 3, g)
        (grad,) = torch.autograd.grad(value.sum(), m)
        return value.detach(), (grad * direction).flatten(1).sum(1)

    a_gain, a_grad = blend_gains_and_grads(clf, anchor, Blends(x_i, x_next, base, o))
    q = gain_proposal(a_gain)
    g = torch.Generator().manual_seed(5)
    at_anchor, exact_anchor = estimate(anchor, a_gain, a_grad, q, g), full(anchor)
    for got, want in zip(at_anchor, exact_anchor, strict=True):  # sums of 14 float32 terms of size <= 1
        assert_close_scaled(got, want, terms=14 * 64, scale=1.0)
    draws = [estimate(mask, a_gain, a_grad, q, g) for _ in range(1500)]
    for n, want in enumerate(full(mask)):
        values, want = torch.stack([d[n] for d in draws]).double(), want.double()
        assert values.std(0).min() > 0  # a real estimate
        assert ((values.mean(0) - want).abs() < 5 * values.std(0) / len(draws) ** 0.5).all()


def test_path_mask_with_the_gain_proposal_learns_the_exact_mask():
    clf, path, o = _region_problem()
    init = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    exact = path_mask(clf, path, o, PathMaskConfig(steps=300, lr=0.05), init=init)
    fast = path_mask(
        clf, path, o, PathMaskConfig(steps=300, lr=0.05, num_blends=3, proposal="gain", refresh=10), init=init
    )
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:3, :3] = True
    for m in (exact.mask, fast.mask):  # both open the region the classifier reads and close the rest
        assert (m[:, 0, region].amin(1) > m[:, 0, ~region].amax(1)).all()
    assert (fast.mask - exact.mask).abs().max() < 0.1


def test_a_sample_stops_when_its_mask_settles_and_keeps_its_mask():
    clf, path, o = _region_problem()
    init = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    out = path_mask(clf, path, o, PathMaskConfig(steps=400, lr=0.05, tol=2e-3, patience=20), init=init)
    assert (out.steps < 400).sum() >= 2  # two settle within the budget, one runs to the end
    for i in range(3):  # the same stop, alone, from the same start: the masks are per sample
        alone = path_mask(
            clf,
            path[:, i : i + 1],
            o[:1],
            PathMaskConfig(steps=400, lr=0.05, tol=2e-3, patience=20),
            init=init[i : i + 1],
        )
        assert alone.steps[0] == out.steps[i]
        # 1 sample vs 3 (other kernels): each step's 64-pixel sums through the steps taken
        assert_close_scaled(alone.mask[0], out.mask[i], terms=int(out.steps[i]) * 64, scale=1.0)
    # no loss is recorded for a sample after it stopped
    first = int(out.steps.min())
    stopped = int(out.steps.argmin())
    assert (out.loss[first:, stopped] == 0).all() and out.loss.shape[0] == int(out.steps.max())


class _BNVae(torch.nn.Module):
    """A float64 conv VAE with batch norm (eval mode, running statistics away from the identity)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.enc = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6)
        )
        self.dec = nn.Sequential(
            nn.Linear(3, 4 * 4 * 4, bias=False),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Unflatten(1, (4, 4, 4)),
            nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )

    def encode(self, x):
        return self.enc(x).chunk(2, dim=1)

    def decode(self, c):
        return self.dec(c)


def test_morph_path_on_folded_models_equals_the_modules_as_they_are():
    torch.manual_seed(0)
    nn = torch.nn
    vae = _BNVae()
    clf = nn.Sequential(
        nn.Conv2d(1, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 8 * 8, 3)
    )
    for m in [*vae.modules(), *clf.modules()]:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    vae, clf = vae.double().eval(), clf.double().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    morph = dict(max_steps=30, lr=0.1, entropy_tol=1.0, num_start_samples=6, path_steps=7)
    kwargs = dict(num_masks=2, mask=PathMaskConfig(steps=4), seed=0)
    plain = morph_path(
        clf, x, vae=vae, norm_means=torch.full((3,), 1.5), morph=MorphConfig(**morph, fold=False), **kwargs
    )
    fast = morph_path(clf, x, vae=vae, norm_means=torch.full((3,), 1.5), morph=MorphConfig(**morph), **kwargs)
    assert isinstance(clf[1], nn.BatchNorm2d) and isinstance(vae.dec[5], nn.BatchNorm2d)  # untouched
    assert torch.equal(fast.kept, plain.kept) and torch.equal(fast.morph.steps, plain.morph.steps)
    # the stopping rule at work (entropy_tol 1 bit: stop once o wins): two stop, two run to the limit
    assert fast.morph.converged.tolist() == [False, False, True, True]
    # float64; a unit sums at most 320 products (the classifier's linear layer), 7 layers, through
    # 30 Adam steps (a step's size lr * m / sqrt(v) follows the gradient's rounding) and 4 mask steps
    terms = 7 * 320 * 34
    for name in ("start", "codes", "images", "logits", "gradient", "entropy"):
        assert_close_scaled(getattr(fast, name), getattr(plain, name), terms=terms, dtype=torch.float64, msg=name)
    assert_close_scaled(fast.mask.mask, plain.mask.mask, terms=terms, dtype=torch.float64)


class _TapsClassifier(torch.nn.Module):
    """Reads its Sequential layer by layer and adds the conv's own output: folding the norm into the
    conv would change what it computes."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        conv = self.seq[0](x)
        return self.head((self.seq[1](conv) + conv).flatten(1))


def test_morph_path_keeps_models_that_folding_would_change():
    torch.manual_seed(0)
    vae, clf = _BNVae().double().eval(), _TapsClassifier().double().eval()
    clf.seq[1].running_mean.fill_(0.5)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    morph = dict(max_steps=3, num_start_samples=4, path_steps=5)
    plain = morph_path(clf, x, vae=vae, norm_means=torch.full((3,), 1.5), morph=MorphConfig(**morph, fold=False))
    with pytest.warns(UserWarning, match="do not compute what the models compute"):
        out = morph_path(clf, x, vae=vae, norm_means=torch.full((3,), 1.5), morph=MorphConfig(**morph))
    for name in ("start", "codes", "images", "logits", "gradient"):  # the models as they are: bit for bit
        assert torch.equal(getattr(out, name), getattr(plain, name)), name


def test_with_path_mask_and_concat_rebuild_morph_path_from_its_parts():
    """morph_path = its morph without masks, then with_path_mask; concat of per-chunk morphs holds
    each chunk's samples in order (the morph_path callback's chunked render)."""
    from src.xai.morph.pipeline import concat, with_path_mask

    torch.manual_seed(0)
    nn = torch.nn
    vae = _BNVae().double().eval()
    clf = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 8 * 8, 3)).double()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    morph = MorphConfig(max_steps=12, lr=0.1, entropy_tol=1.0, num_start_samples=3, path_steps=6, fold=False)
    kwargs = dict(morph=morph, seed=0)
    mask = PathMaskConfig(steps=4, lr=1e-3, reg=1.0, num_blends=2, tol=1e-3, patience=200, proposal="gain", refresh=100)
    whole = morph_path(clf, x, vae=vae, norm_means=torch.full((3,), 1.5), num_masks=2, mask=mask, **kwargs)
    bare = morph_path(clf, x, vae=vae, norm_means=torch.full((3,), 1.5), **kwargs)
    assert bare.mask is None
    again = with_path_mask(clf, bare, 2, mask, seed=0)
    for name in ("mask", "signed", "gains", "loss"):
        assert torch.equal(getattr(again.mask, name), getattr(whole.mask, name)), name
    parts = [
        morph_path(clf, x[rows], vae=vae, norm_means=torch.full((3,), 1.5), **kwargs)
        for rows in (slice(0, 2), slice(2, 5))
    ]
    joined = concat(parts)
    for name in ("a", "o", "start", "kept", "pearson"):
        assert torch.equal(getattr(joined, name), torch.cat([getattr(p, name) for p in parts])), name
    for name in ("codes", "images", "entropy", "gradient", "logits"):
        assert torch.equal(getattr(joined, name), torch.cat([getattr(p, name) for p in parts], 1)), name
    assert torch.equal(joined.morph.steps, torch.cat([p.morph.steps for p in parts]))
    assert torch.equal(joined.window["high"], torch.cat([p.window["high"] for p in parts]))
    assert joined.morph_seconds == pytest.approx(sum(p.morph_seconds for p in parts))
    assert joined.summary()["samples"] == 5
    with pytest.raises(ValueError, match="without path masks"):
        concat([again, bare])
