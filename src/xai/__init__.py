"""latent-lens explanations: pure torch, one call shape for every method.

    from src import xai
    result = xai.gradcam(model, x, xai.targets.classes(3))        # CamMaps: maps [B, 1, H, W]
    ig = xai.integrated_gradients(model, x, xai.targets.classes(y), baseline=xai.Baseline.blur(3.0))
    curve = xai.deletion(model, x, xai.targets.classes(y), explanation=ig)   # Curve: scores, aopc, auc
    same = xai.explain("integrated_gradients", model, x, xai.targets.classes(y))  # by registered name

`method(model, inputs, target, **options) -> result`; a target is a callable output -> [B, K]
(`xai.targets` builds them from classes, latent dimensions, regions, directions); a result has
`maps` [B, K, H, W] and what its method knows. See `src.xai.core` for the glossary (baseline,
map, registry) and `xai.METHODS` for every registered method. Two modules score what the maps
are for: `xai.anomaly` (anomaly maps of a VAE trained on normal data, pixel AUROC / best IoU / PRO,
image AUROC) and `xai.disentanglement` (MIG, SAP, DCI, FactorVAE and beta-VAE scores, the maps'
attention overlap).
"""

from src.xai import targets
from src.xai.core import (
    METHODS,
    Attribution,
    Baseline,
    Explanation,
    MaskAttribution,
    Unsupported,
    canonical_name,
    explain,
    get_method,
    register,
    to_map,
)
from src.xai.latent.attribute_control import attribute_control
from src.xai.latent.part_attention import PartAttention, part_attention
from src.xai.latent.sweeps import Sweep, attribute_sweep, latent_sweep
from src.xai.methods.attribution import (
    contrastive_excitation_backprop,
    deconvnet,
    excitation_backprop,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    lrp,
    mask_perturbation,
    occlusion,
    saliency,
    smoothgrad,
)
from src.xai.methods.gradcam import CamMaps, gradcam, gradcampp, hirescam, layercam, scorecam, xgradcam
from src.xai.morph.pipeline import MorphPath, morph_path
from src.xai.scores import anomaly, disentanglement
from src.xai.scores.ground_truth import (
    Agreement,
    DecoderAction,
    Encoding,
    agreement,
    auroc,
    condition_action,
    counterfactual_localisation,
    decoder_action,
    encoding,
    latent_agreement,
    latent_localisation,
    region_scores,
)
from src.xai.scores.metrics import (
    Curve,
    PerturbationCurve,
    Randomization,
    cascading_randomization,
    deletion,
    faithfulness,
    insertion,
    map_similarity,
    perturbation_curve,
)
from src.xai.scores.saliency_segmentation import SaliencySegmentation, saliency_segmentation

# the public API: every name imported above
__all__ = sorted(name for name in globals() if not name.startswith("_"))
