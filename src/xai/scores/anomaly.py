"""Anomaly localisation with a VAE trained on normal data only ([Liu2020], "Towards Visually
Explaining Variational Autoencoders"), the reconstruction baselines, and the scores that rate
anomaly maps against ground-truth masks.

Maps. Every anomaly map is `fn(model, inputs [B, C, H, W], **options) -> [B, H, W]` (larger =
more anomalous, at the input's size), registered in `ANOMALY_MAPS` and run by name with
`anomaly_map(name, model, inputs, **options)`:

  attention          [Liu2020]: Grad-CAM at `layer` (default model.cam_layer) of the one scalar
                     sum_i mu_i(x) per sample, M = ReLU(sum_c alpha_c A_c), upsampled;
  deviation          Grad-CAM of d(x) = sum_i ((mu_i(x) - m_i) / s_i)^2, the standardised distance
                     of the code from the normal data's codes (`LatentStatistics` m, s): [FACT2021]'s
                     "normal_diff" (its eq. 4) - what makes the code abnormal;
  per_dimension      [Liu2020]'s per-dimension view: the Grad-CAM map of every mu_i, weighted by that
                     dimension's ((mu_i - m_i) / s_i)^2 and summed (uniform weights 1/D without
                     statistics: the mean of the per-dimension maps);
  latent_smoothgrad  SmoothGrad (|gradient| averaged over noisy copies, max over channels) of d(x),
                     or without statistics the mean of the per-dimension SmoothGrad maps of mu;
  recon_error        the per-pixel reconstruction error of x_hat = decode(mu(x)), summed over
                     channels: squared (l2, default), absolute (l1) or Bernoulli NLL (bce);
  recon_ssim         1 - SSIM(x, x_hat) per pixel (Gaussian window 11, sigma 1.5, [Wang2004]),
                     averaged over channels.

Image scores (`image_scores`): the negative ELBO, the reconstruction error, the KL, the deviation
d(x) and the attention map's mass, one [B] each (larger = more anomalous).

Localisation scores on maps [N, H, W] against masks [N, H, W] (all pooled over the test set, as
the reimplementation and MVTec AD do): `pixel_auroc` (one ROC over every pixel of every image),
`best_iou` (IoU of the thresholded, globally min-max scaled maps, best of equally spaced
thresholds), `pro` (per-region overlap up to a false-positive rate, [Bergmann2021]) and
`image_auroc` for image-level scores; `localisation_scores` gives the first three.

Call `model.eval()` first: BatchNorm in train mode mixes the samples of a batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.base.gaussian import kl_standard_normal
from src.base.maps import min_max_scale
from src.xai import targets
from src.xai.methods.attribution import smoothgrad
from src.xai.methods.gradcam import gradcam
from src.xai.scores.ground_truth import auroc

__all__ = [
    "ANOMALY_MAPS",
    "DEFAULT_MAPS",
    "LatentStatistics",
    "anomaly_map",
    "attention_map",
    "best_iou",
    "deviation_map",
    "score_anomalies",
    "image_auroc",
    "image_scores",
    "latent_smoothgrad_map",
    "latent_statistics",
    "localisation_scores",
    "per_dimension_map",
    "pixel_auroc",
    "pro",
    "recon_error_map",
    "recon_ssim_map",
    "ssim_map",
]


# -- the normal data's codes ---------------------------------------------------------------------------

SPREADS = ("mu", "posterior")


@dataclass(frozen=True)
class LatentStatistics:
    """The posterior means' statistics over the normal (training) images: `mean` [D], `std` [D]."""

    mean: torch.Tensor
    std: torch.Tensor

    def standardise(self, mu: torch.Tensor) -> torch.Tensor:
        """[B, D] (mu - mean) / std."""
        return (mu - self.mean.to(mu.device, mu.dtype)) / self.std.to(mu.device, mu.dtype)

    def deviation(self, mu: torch.Tensor) -> torch.Tensor:
        """[B, 1] sum_i ((mu_i - mean_i) / std_i)^2: a target for the explanation methods."""
        return self.standardise(mu).pow(2).sum(1, keepdim=True)


def _images(batch) -> torch.Tensor:
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, tuple | list):  # (images, labels) from a plain TensorDataset
        return batch[0]
    return batch


@torch.no_grad()
def latent_statistics(
    model: nn.Module,
    batches: torch.Tensor | Iterable,
    c: torch.Tensor | None = None,
    *,
    spread: str = "mu",
    min_std: float = 1e-6,
) -> LatentStatistics:
    """The mean and spread of mu over the normal images `batches`: one [N, C, H, W] tensor (with
    its condition `c` for a CVAE), or an iterable of image batches (tensors, dicts with "image" or
    (images, ...) tuples; unconditional). Accumulated in float64.

    spread: 'mu' - the standard deviation of mu over the images (population, a Mahalanobis
    distance with a diagonal covariance); 'posterior' - exp(0.5 * mean logvar), the posterior's
    own average width. Spreads below `min_std` (collapsed dimensions) are raised to it."""
    if spread not in SPREADS:
        raise ValueError(f"unknown spread {spread!r}; choose one of {SPREADS}")
    items = [(batches, c)] if isinstance(batches, torch.Tensor) else ((_images(b), None) for b in batches)
    n, total, squares, logvars = 0, None, None, None
    for x, cond in items:
        mu, logvar = model.encode(x, cond) if cond is not None else model.encode(x)
        mu, logvar = mu.double(), logvar.double()
        if total is None:
            total, squares, logvars = mu.sum(0), mu.pow(2).sum(0), logvar.sum(0)
        else:
            total, squares, logvars = total + mu.sum(0), squares + mu.pow(2).sum(0), logvars + logvar.sum(0)
        n += mu.shape[0]
    if n == 0:
        raise ValueError("latent_statistics needs at least one image")
    mean = total / n
    if spread == "mu":
        std = (squares / n - mean.pow(2)).clamp_min(0).sqrt()
    else:
        std = torch.exp(0.5 * logvars / n)
    dtype = torch.get_default_dtype()
    return LatentStatistics(mean=mean.to(dtype), std=std.clamp_min(min_std).to(dtype))


# -- anomaly maps -------------------------------------------------------------------------------------


def _sum_of_mu(mu: torch.Tensor) -> torch.Tensor:
    return mu.sum(1, keepdim=True)


def attention_map(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, H, W] [Liu2020]'s attention: Grad-CAM (`method`, one of src.base.cam.VARIANTS) at `layer`
    of sum_i mu_i per sample, upsampled (not normalised: `anomaly_map(..., normalize=True)`)."""
    cam = gradcam(model, inputs, _sum_of_mu, layer=layer, forward=targets.latent_mean(model, c), method=method)
    return cam.upsampled()[:, 0]


def deviation_map(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    stats: LatentStatistics,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, H, W] Grad-CAM of the deviation sum_i ((mu_i - m_i) / s_i)^2 from the normal codes."""
    cam = gradcam(model, inputs, stats.deviation, layer=layer, forward=targets.latent_mean(model, c), method=method)
    return cam.upsampled()[:, 0]


def per_dimension_map(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    stats: LatentStatistics | None = None,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, H, W] sum_i w_i M_i: the upsampled Grad-CAM map M_i of every latent mean mu_i (one
    batched call), weighted per sample by w_i = ((mu_i - m_i) / s_i)^2 with `stats`, else 1/D."""
    forward = targets.latent_mean(model, c)
    cam = gradcam(model, inputs, targets.select(None), layer=layer, forward=forward, method=method)
    maps = cam.upsampled()  # [B, D, H, W]
    if stats is None:
        return maps.mean(1)
    with torch.no_grad():
        weights = stats.standardise(forward(inputs)).pow(2).to(maps.dtype)
    return torch.einsum("bd,bdhw->bhw", weights, maps)


def latent_smoothgrad_map(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    stats: LatentStatistics | None = None,
    dims: list[int] | None = None,
    samples: int = 8,
    noise: float = 0.15,
    seed: int = 0,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, H, W] SmoothGrad maps (max |mean gradient| over channels; `samples`, `noise`, `seed` as
    attribution.smoothgrad's). With `stats`: of the deviation over `dims` (None = all dimensions),
    one scalar per sample. Without: of each mu_i, i in `dims` (None = all), averaged over i."""
    forward = targets.latent_mean(model, c)
    if stats is not None:
        cols = None if dims is None else torch.as_tensor(list(dims), dtype=torch.long)

        def target(mu: torch.Tensor) -> torch.Tensor:
            z = stats.standardise(mu)
            return z.pow(2).sum(1, keepdim=True) if cols is None else z[:, cols.to(mu.device)].pow(2).sum(1, True)

    else:
        target = targets.select(dims)
    result = smoothgrad(model, inputs, target, samples=samples, noise=noise, seed=seed, forward=forward)
    return result.maps.mean(1)


RECON_KINDS = ("l2", "l1", "bce")


def _decode_mu(model: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) and the pre-activation decoding of mu, without gradients: ((mu, logvar), logits)."""
    with torch.no_grad():
        mu, logvar = model.encode(x, c)
        return (mu, logvar), model.decode_logits(mu, c)


def recon_error_map(
    model: nn.Module, inputs: torch.Tensor, *, kind: str = "l2", c: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, H, W] the per-pixel error of x_hat = decode(mu(x)) (no sampling), summed over channels:
    l2 (x - x_hat)^2, l1 |x - x_hat|, or bce the Bernoulli NLL of x under the decoder's logits
    (a sigmoid decoder's own loss; not 0 for a perfect reconstruction of non-binary pixels)."""
    if kind not in RECON_KINDS:
        raise ValueError(f"unknown reconstruction error {kind!r}; choose one of {RECON_KINDS}")
    with torch.no_grad():
        if kind == "bce":
            _, logits = _decode_mu(model, inputs, c)
            return F.binary_cross_entropy_with_logits(logits, inputs, reduction="none").sum(1)
        diff = inputs - model.reconstruct(inputs, c)
        return (diff.pow(2) if kind == "l2" else diff.abs()).sum(1)


def ssim_map(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """[B, C, H, W] the SSIM index of a and b at every pixel [Wang2004]: torchmetrics' full
    SSIM image under a Gaussian window of `window` px (sigma `sigma`), reflect-padded so the map
    has the images' size; C1 = (k1 data_range)^2, C2 = (k2 data_range)^2."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim_map takes two [B, C, H, W] images of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if window < 1 or window % 2 == 0 or window // 2 >= min(a.shape[-2:]):
        raise ValueError(
            f"the SSIM window must be an odd size under twice the image's, got {window} for {tuple(a.shape)}"
        )
    _, full = structural_similarity_index_measure(
        a,
        b,
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=window,
        data_range=data_range,
        k1=k1,
        k2=k2,
        return_full_image=True,
        reduction="none",
    )
    return full


def recon_ssim_map(model: nn.Module, inputs: torch.Tensor, *, c: torch.Tensor | None = None, **ssim) -> torch.Tensor:
    """[B, H, W] 1 - SSIM(x, decode(mu(x))) per pixel, averaged over channels; `ssim`: `ssim_map`'s
    options (window, sigma, data_range, k1, k2)."""
    with torch.no_grad():
        x_hat = model.reconstruct(inputs, c)
        return 1 - ssim_map(inputs, x_hat, **ssim).mean(1)


ANOMALY_MAPS: dict[str, Callable[..., torch.Tensor]] = {
    "attention": attention_map,
    "deviation": deviation_map,
    "per_dimension": per_dimension_map,
    "latent_smoothgrad": latent_smoothgrad_map,
    "recon_error": recon_error_map,
    "recon_ssim": recon_ssim_map,
}


def anomaly_map(
    name: str, model: nn.Module, inputs: torch.Tensor, *, normalize: bool = False, **options
) -> torch.Tensor:
    """[B, H, W] the anomaly map `ANOMALY_MAPS[name](model, inputs, **options)`; with `normalize`
    each image's map min-max scaled to [0, 1] ([Liu2020]'s display; a constant map becomes 0).
    Pooled scores (`pixel_auroc`) compare raw maps across images, so they take them unscaled."""
    if name not in ANOMALY_MAPS:
        raise ValueError(f"unknown anomaly map {name!r}; choose one of {sorted(ANOMALY_MAPS)}")
    maps = ANOMALY_MAPS[name](model, inputs, **options)
    return min_max_scale(maps) if normalize else maps


# -- image-level scores ------------------------------------------------------------------------------------


def image_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    stats: LatentStatistics | None = None,
    c: torch.Tensor | None = None,
    *,
    layer: str | nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """One [B] score per image each, larger = more anomalous, all at z = mu (no sampling):

      elbo            the model's own objective per image: recon_weight * reconstruction loss (its
                      loss_cfg's kind, bce or mse, summed over pixels) + beta * KL - the negative
                      ELBO when recon_weight = beta = 1; what `loss_terms` averages in eval mode;
      recon_error     sum of (x - decode(mu))^2 (whatever the model's loss kind);
      kl              KL(q(z|x) || N(0, I)) summed over dimensions;
      deviation       sum_i ((mu_i - m_i) / s_i)^2 (only with `stats`);
      attention_mass  the sum of the attention map (`attention_map`, at `layer`).

    The model's `loss_cfg` (a VAE's `VAELoss`) gives the reconstruction kind and the weights."""
    cfg = model.loss_cfg
    with torch.no_grad():
        (mu, logvar), logits = _decode_mu(model, inputs, c)
        decoded = model.decode(mu, c)
        if cfg.reconstruction == "bce":
            recon = F.binary_cross_entropy_with_logits(logits, inputs, reduction="none").flatten(1).sum(1)
        elif cfg.reconstruction == "mse":
            recon = (decoded - inputs).pow(2).flatten(1).sum(1)
        else:
            raise ValueError(f"unknown reconstruction loss {cfg.reconstruction!r}; choose bce or mse")
        kl = kl_standard_normal(mu, logvar).sum(1)
        scores = {
            "elbo": float(cfg.recon_weight) * recon + float(cfg.beta) * kl,
            "recon_error": (decoded - inputs).pow(2).flatten(1).sum(1),
            "kl": kl,
        }
        if stats is not None:
            scores["deviation"] = stats.deviation(mu)[:, 0]
    scores["attention_mass"] = attention_map(model, inputs, layer=layer, c=c).flatten(1).sum(1)
    return scores


# -- localisation scores ---------------------------------------------------------------------------------


def _check_pair(maps: torch.Tensor, masks: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.shape != masks.shape:
        raise ValueError(f"{what} takes maps and masks of one shape, got {tuple(maps.shape)} and {tuple(masks.shape)}")
    return maps.detach().flatten().double(), masks.detach().flatten().bool()


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """The area under ONE ROC curve over all pixels of all images pooled (maps [N, H, W], masks
    [N, H, W] bool; images without anomaly add negatives only): the probability that an anomalous
    pixel scores above a normal one, ties counting 1/2 (`ground_truth.auroc`). NaN without
    positives or negatives."""
    scores, truth = _check_pair(maps, masks, "pixel_auroc")
    return float(auroc(scores[None], truth[None])[0])


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The area under the ROC of image scores [N] against labels [N] (True = anomalous)."""
    scores, truth = _check_pair(scores, labels, "image_auroc")
    return float(auroc(scores[None], truth[None])[0])


def best_iou(maps: torch.Tensor, masks: torch.Tensor, thresholds: int = 100) -> dict[str, float]:
    """The best pooled IoU over `thresholds` thresholds t = 0, 1/T, ..., (T-1)/T: maps min-max scaled
    to [0, 1] over the whole set, IoU(t) = sum |(map > t) & mask| / sum |(map > t) | mask| over all
    images. Returns {"iou": best IoU, "threshold": its t (the smallest, among ties)}. Exact counts
    for every threshold from one sort (no loop). NaN where nothing is predicted or marked."""
    v, truth = _check_pair(maps, masks, "best_iou")
    v = min_max_scale(v, dims=tuple(range(v.dim())))
    t = torch.arange(int(thresholds), dtype=torch.float64, device=v.device) / int(thresholds)
    everything, inside = v.sort().values, v[truth].sort().values
    above = everything.numel() - torch.searchsorted(everything, t, right=True)  # |map > t|
    hits = inside.numel() - torch.searchsorted(inside, t, right=True)  # |(map > t) & mask|
    union = (above + inside.numel() - hits).double()
    iou = torch.where(union > 0, hits.double() / union.clamp_min(1), torch.full_like(union, float("nan")))
    if bool(iou.isnan().all()):
        return {"iou": float("nan"), "threshold": float("nan")}
    best = int(iou.nan_to_num(-1.0).argmax())
    return {"iou": float(iou[best]), "threshold": float(t[best])}


def _trapezoid_to(x: torch.Tensor, y: torch.Tensor, x_max: float) -> float:
    """The area under the polyline (x, y) (x ascending) from x[0] to x_max, y interpolated
    linearly at x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    area = float(torch.trapezoid(ys, xs)) if xs.numel() > 1 else 0.0
    nxt = int(keep.sum())
    if nxt < x.numel() and float(xs[-1]) < x_max:
        x0, y0, x1, y1 = float(xs[-1]), float(ys[-1]), float(x[nxt]), float(y[nxt])
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


def pro(
    maps: torch.Tensor, masks: torch.Tensor, max_fpr: float = 0.3, steps: int | None = None, connectivity: int = 8
) -> float:
    """The normalised area under the per-region-overlap curve up to `max_fpr` ([Bergmann2021],
    "The MVTec Anomaly Detection Dataset", IJCV 2021), maps [N, H, W] against masks [N, H, W] bool.

    Regions are the connected components of each mask (`connectivity` 8, as the MVTec AD
    evaluation, or 4). For a threshold t, PRO(t) = the mean over all regions of all images of
    |region & (map >= t)| / |region| - every region counts alike, however small - and FPR(t) =
    |normal pixels with map >= t| / |normal pixels|, pooled over the set. The curve runs from
    (0, 0) (t above every score) through every distinct score (steps=None: exact, tied pixels
    enter together and the curve is linear between) or through `steps` thresholds equally spaced
    over the maps' range; its area up to FPR = max_fpr (trapezoids, PRO interpolated at max_fpr)
    divided by max_fpr is the score: 1 for a map that ranks every anomalous pixel above every
    normal one. NaN without regions or normal pixels."""
    from scipy import ndimage

    if maps.shape != masks.shape or maps.dim() != 3:
        raise ValueError(
            f"pro takes maps and masks of one shape [N, H, W], got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity is 4 or 8, got {connectivity}")
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    truth = masks.detach().bool().cpu()
    weight = torch.zeros(truth.shape, dtype=torch.float64)  # 1 / |region| on each region's pixels
    regions = 0
    for i, mask in enumerate(truth.numpy()):
        labels, count = ndimage.label(mask, structure=structure)
        if count:
            labels = torch.from_numpy(labels).long()
            sizes = torch.bincount(labels.flatten(), minlength=count + 1).double()
            weight[i] = torch.where(labels > 0, 1.0 / sizes[labels], torch.zeros(()).double())
        regions += count
    negatives = int((~truth).sum())
    if regions == 0 or negatives == 0:
        return float("nan")
    v = maps.detach().double().cpu().flatten()
    order = torch.argsort(v, descending=True, stable=True)
    v = v[order]
    # the curve after taking the top j pixels, j = 0 .. P
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), (~truth.flatten()[order]).double().cumsum(0) / negatives])
    overlap = torch.cat([torch.zeros(1, dtype=torch.float64), weight.flatten()[order].cumsum(0) / regions])
    if steps is None:
        # the points where a run of tied scores ends: all pixels >= that score are in
        ends = torch.nonzero(torch.cat([v[1:] != v[:-1], torch.ones(1, dtype=torch.bool)])).flatten() + 1
    else:
        lo, hi = float(v[-1]), float(v[0])
        t = torch.linspace(hi, lo, int(steps), dtype=torch.float64)
        ends = torch.searchsorted(-v, -t, right=True)  # |map >= t|, t descending
    idx = torch.cat([torch.zeros(1, dtype=torch.long), ends])
    x, y = fpr[idx], overlap[idx]
    return _trapezoid_to(x, y, float(max_fpr)) / float(max_fpr)


def localisation_scores(
    maps: torch.Tensor, masks: torch.Tensor, *, thresholds: int = 100, max_fpr: float = 0.3
) -> dict[str, float]:
    """{pixel_auroc, best_iou, iou_threshold, pro} of maps [N, H, W] against masks [N, H, W] bool,
    pooled over the set (see each function)."""
    iou = best_iou(maps, masks, thresholds)
    return {
        "pixel_auroc": pixel_auroc(maps, masks),
        "best_iou": iou["iou"],
        "iou_threshold": iou["threshold"],
        "pro": pro(maps, masks, max_fpr=max_fpr),
    }


# -- a whole evaluation: maps and image scores of a test set against its truth ---------------------------

DEFAULT_MAPS = ("attention", "deviation", "latent_smoothgrad", "recon_error", "recon_ssim")


def score_anomalies(
    model: nn.Module,
    normal: torch.Tensor | Iterable,
    inputs: torch.Tensor,
    anomalous: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    maps: Iterable[str] = DEFAULT_MAPS,
    options: Mapping[str, Mapping] | None = None,
    batch_size: int = 64,
    thresholds: int = 100,
    max_fpr: float = 0.3,
    keep_maps: bool = False,
) -> dict:
    """Scores every anomaly map in `maps` and every image score on a test set.

    normal: the normal (training) images whose codes give `LatentStatistics` (a tensor or an
    iterable of batches); inputs [N, C, H, W] the test images; anomalous [N] bool which of them
    are anomalies; masks [N, H, W] bool the anomalous pixels (None: no pixel truth, image scores
    only). `options[name]` goes to that map's function (statistics are passed to those that take
    them). Maps are computed `batch_size` images at a time.

    Returns {"pixel": {map: localisation_scores(...) + image_auroc of the map's mass}, "image":
    {score: image AUROC}, "counts": {...}, "maps": {map: [N, H, W]} (only with keep_maps)}."""
    options = dict(options or {})
    unknown = sorted(set(maps) - set(ANOMALY_MAPS))
    if unknown:
        raise ValueError(f"unknown anomaly map(s) {unknown}; choose from {sorted(ANOMALY_MAPS)}")
    anomalous = anomalous.bool().cpu()
    stats = latent_statistics(model, normal)
    computed: dict[str, list[torch.Tensor]] = {name: [] for name in maps}
    scores: dict[str, list[torch.Tensor]] = {}
    for chunk in inputs.split(batch_size):
        for name in maps:
            fn = ANOMALY_MAPS[name]
            extra = {"stats": stats} if "stats" in inspect.signature(fn).parameters else {}
            computed[name].append(fn(model, chunk, **extra, **dict(options.get(name, {}))).detach().cpu())
        layer = dict(options.get("attention", {})).get("layer")  # attention_mass: the attention map's layer
        for key, value in image_scores(model, chunk, stats, layer=layer).items():
            scores.setdefault(key, []).append(value.detach().cpu())
    out: dict = {"pixel": {}, "image": {}, "counts": {"images": len(inputs), "anomalous": int(anomalous.sum())}}
    for name, parts in computed.items():
        m = torch.cat(parts)
        row = {"image_auroc": image_auroc(m.flatten(1).sum(1), anomalous)}
        if masks is not None:
            row.update(localisation_scores(m, masks.bool().cpu(), thresholds=thresholds, max_fpr=max_fpr))
        out["pixel"][name] = row
        if keep_maps:
            out.setdefault("maps", {})[name] = m
    out["image"] = {key: image_auroc(torch.cat(parts), anomalous) for key, parts in scores.items()}
    if masks is not None:
        out["counts"]["anomalous_pixel_share"] = float(masks.float().mean())
    return out
