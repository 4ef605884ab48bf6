"""The long xai loops call progress(done, total) once per step, give the same results with it as
without it, and stop where it raises."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from src.xai import explain, mask_perturbation, targets
from src.xai.methods.featviz import activation_maximisation
from src.xai.morph.path_mask import PathMaskConfig, path_gradients, path_mask
from src.xai.morph.pipeline import MorphConfig, morph_path
from src.xai.morph.semantic import semantic_morph, starting_code
from tests.xai.test_morph import classify, decode


class Stop(Exception):
    pass


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if done == self.stop_at:
            raise Stop


def steps(n: int) -> list[tuple[int, int]]:
    return [(i, n) for i in range(1, n + 1)]


def assert_same(a, b) -> None:
    for name in a.__dataclass_fields__:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True)


def encode(x):
    mu = x.flatten(1)[:, :2] * 0.5
    return mu, torch.full_like(mu, -2.0)


START = torch.tensor([[2.0, 0.0], [1.5, 0.5]])
PRED, TARGET = torch.tensor([0, 0]), torch.tensor([1, 1])
NORMS = torch.tensor([2.0, 2.0, 2.0])


def test_semantic_morph_reports_every_step_and_stops_where_progress_raises():
    args = (decode, classify, START, PRED, TARGET, NORMS)
    plain = semantic_morph(*args, lr=0.01, max_steps=6, entropy_tol=0.0)  # never converges: all 6 steps
    seen = Recorder()
    assert_same(semantic_morph(*args, lr=0.01, max_steps=6, entropy_tol=0.0, progress=seen), plain)
    assert seen.calls == steps(6)
    stopper = Recorder(stop_at=3)
    with pytest.raises(Stop):
        semantic_morph(*args, lr=0.01, max_steps=6, entropy_tol=0.0, progress=stopper)
    assert stopper.calls == steps(6)[:3]


def test_path_mask_starting_code_and_gradients_report_their_steps():
    path = torch.linspace(0, 1, 5).view(5, 1, 1, 1, 1) * torch.rand(
        1, 2, 1, 4, 4, generator=torch.Generator().manual_seed(0)
    )

    def clf(x):
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)

    plain = path_mask(clf, path, TARGET, PathMaskConfig(steps=4, lr=0.05))
    seen = Recorder()
    assert_same(path_mask(clf, path, TARGET, PathMaskConfig(steps=4, lr=0.05), progress=seen), plain)
    assert seen.calls == steps(4)
    with pytest.raises(Stop):
        path_mask(clf, path, TARGET, PathMaskConfig(steps=4, lr=0.05), progress=Recorder(stop_at=2))

    x = decode(START)
    seen = Recorder()
    codes, kept = starting_code(encode, decode, classify, x, samples=5, seed=1, progress=seen)
    plain_codes, plain_kept = starting_code(encode, decode, classify, x, samples=5, seed=1)
    assert torch.equal(codes, plain_codes) and torch.equal(kept, plain_kept) and seen.calls == steps(5)

    images = torch.randn(4, 3, 1, 1, 2, generator=torch.Generator().manual_seed(2))  # 12 images, chunks of 5
    seen = Recorder()
    got = path_gradients(classify, images, torch.tensor([0, 2, 1]), chunk=5, progress=seen)
    plain = path_gradients(classify, images, torch.tensor([0, 2, 1]), chunk=5)
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    assert seen.calls == steps(3)


def test_morph_path_gives_each_phase_its_own_progress():
    x = decode(START)
    morph = MorphConfig(max_steps=3, entropy_tol=0.0, num_start_samples=2, path_steps=4)
    kwargs = dict(morph=morph, num_masks=1, mask=PathMaskConfig(steps=2), seed=0)
    vae = SimpleNamespace(encode=encode, decode=decode)
    plain = morph_path(classify, x, vae=vae, norm_means=NORMS, **kwargs)
    phases: dict[str, Recorder] = {}

    def phase(name: str) -> Recorder:
        phases[name] = Recorder()
        return phases[name]

    out = morph_path(classify, x, vae=vae, norm_means=NORMS, progress=phase, **kwargs)
    for name in ("a", "o", "start", "kept", "codes", "images", "entropy", "gradient", "pearson", "logits"):
        torch.testing.assert_close(getattr(out, name), getattr(plain, name), rtol=0, atol=0, equal_nan=True)
    assert_same(out.morph, plain.morph)
    assert_same(out.mask, plain.mask)
    assert {name: r.calls for name, r in phases.items()} == {
        "starting codes": steps(2),
        "semantic morph": steps(3),
        "path gradients": steps(1),
        "path mask": steps(2),
    }


def test_activation_maximisation_and_mask_perturbation_report_their_steps():
    def objective(x):
        return x.mean(dim=(1, 2, 3))

    options = dict(steps=5, lr=0.05, tv=0.1, jitter=1, scale=0.1, blur_every=2, seed=3)
    seen = Recorder()
    got = activation_maximisation(objective, (2, 1, 8, 8), progress=seen, **options)
    assert torch.equal(got, activation_maximisation(objective, (2, 1, 8, 8), **options)) and seen.calls == steps(5)
    with pytest.raises(Stop):
        activation_maximisation(objective, (2, 1, 8, 8), progress=Recorder(stop_at=1), **options)

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = Recorder()
    got = mask_perturbation(model, x, targets.classes(1), progress=seen, steps=4).attributions
    assert torch.equal(got, mask_perturbation(model, x, targets.classes(1), steps=4).attributions)
    assert seen.calls == steps(4)
    with pytest.raises(Stop):
        mask_perturbation(model, x, targets.classes(1), progress=Recorder(stop_at=2), steps=4)
    unused = Recorder()
    explain("saliency", model, x, targets.classes(1), progress=unused)  # no loop to report
    assert unused.calls == []
