import pytest
import torch
from torch import nn

from src.xai import targets
from src.xai.scores.saliency_segmentation import grabcut_masks, mask_iou, saliency_segmentation, threshold_masks


def blob_problem(size: int = 32, top: int = 10, left: int = 12, side: int = 8):
    """A grey image with a red square (plus noise), the square's mask, and a saliency map that is
    high on the square and low (noise) elsewhere."""
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(size, size, dtype=torch.bool)
    truth[top : top + side, left : left + side] = True
    image = 0.5 + 0.03 * torch.randn(3, size, size, generator=g)
    image[:, truth] = torch.tensor([0.9, 0.1, 0.1])[:, None] + 0.03 * torch.randn(3, int(truth.sum()), generator=g)
    saliency = 0.2 * torch.rand(size, size, generator=g) + truth.float() * (
        0.8 + 0.2 * torch.rand(size, size, generator=g)
    )
    return image.clamp(0, 1), truth, saliency


def test_mask_iou_on_constructed_masks():
    a = torch.zeros(2, 6, 6, dtype=torch.bool)
    b = torch.zeros(2, 6, 6, dtype=torch.bool)
    a[0, :2, :3] = True  # 6 pixels
    b[0, 1:3, :3] = True  # 6 pixels, 3 shared: IoU 3 / 9
    b[1, 0, 0] = True  # nothing predicted: IoU 0
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([1 / 3, 0.0], dtype=torch.float64))
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0  # both empty: nothing to miss


def test_threshold_of_a_blob_map_is_the_blob():
    _, truth, saliency = blob_problem()
    share = float(truth.float().mean())
    assert mask_iou(threshold_masks(saliency, share), truth).item() == 1.0
    with pytest.raises(ValueError, match="share"):
        threshold_masks(saliency, 0.0)


def test_grabcut_seeded_inside_the_blob_returns_the_blob():
    """Seeds: the top 5 % of the map (51 of the square's 64 pixels) and its bottom 30 % (all
    outside); GrabCut's colour models give the square's 13 unseeded pixels to the foreground and
    the rest of the image to the background."""
    image, truth, saliency = blob_problem()
    got = grabcut_masks(image[None], saliency[None])
    assert mask_iou(got[0], truth).item() == 1.0
    # a threshold at the same 5 % misses the square's less salient pixels
    assert mask_iou(threshold_masks(saliency, 0.05), truth).item() < 1.0
    with pytest.raises(ValueError, match="quantiles"):
        grabcut_masks(image[None], saliency[None], foreground=0.3, background=0.5)


def test_saliency_segmentation_of_a_classifier_that_reads_one_region():
    """logit 0 = the sum of a 6 x 6 region's pixels, logit 1 = minus another region's: the saliency
    (max over channels of |gradient|) of each is exactly its region, and so is the top share."""
    regions = torch.zeros(2, 1, 16, 16)
    regions[0, :, 2:8, 3:9] = 1.0
    regions[1, :, 9:15, 8:14] = -1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(regions.flatten(1))
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    out = saliency_segmentation(model, x, targets.select([0, 1]), segmenter="threshold", share=36 / 256)
    assert out.masks.shape == (3, 2, 16, 16) and out.maps.shape == (3, 2, 16, 16)
    truth = regions[:, 0].abs().bool()
    assert (mask_iou(out.masks, truth.expand(3, -1, -1, -1)) == 1).all()
    # GrabCut on the same maps (0 off the region: 86 % of each map ties at its minimum, every seed
    # quantile inside a tie): seeded, not empty, and the region's pixels are foreground
    cut = saliency_segmentation(model, x, targets.select([0, 1]), segmenter="grabcut")
    assert ((cut.masks & truth).flatten(-2).sum(-1) > 0).all()
    with pytest.raises(ValueError, match="unknown segmenter"):
        saliency_segmentation(model, x, targets.select([0]), segmenter="watershed")
