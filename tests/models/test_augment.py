import torch
from torchvision.transforms.v2.functional import gaussian_blur

from src.models.augment import random_blur
from src.testing.tolerance import assert_close_scaled


def test_blur_matches_torchvision_and_leaves_unchosen_images_alone():
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    chosen = torch.rand(6, generator=g) < 0.5
    sigma = torch.rand(6, generator=g) * 2.0 * chosen
    out = random_blur(x, 2.0, p=0.5, generator=torch.Generator().manual_seed(1))
    assert chosen.any() and (~chosen).any()
    for i in range(6):
        if not chosen[i]:
            torch.testing.assert_close(out[i], x[i])
        else:  # torchvision's blur with the same sigma and kernel size 2 * ceil(3 * 2.0) + 1 = 13
            expected = gaussian_blur(x[i : i + 1], kernel_size=[13, 13], sigma=[float(sigma[i])] * 2)[0]
            # two separable 13-tap passes, kernels normalised (13 terms) in their own order: of x's size
            assert_close_scaled(out[i], expected, terms=3 * 13, scale=x[i])
    assert torch.equal(random_blur(x, 0.0), x)
