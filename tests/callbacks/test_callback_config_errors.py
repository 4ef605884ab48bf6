"""Explanation callbacks refuse a method name or option the registry does not know, with a
ConfigError naming the key (the CLI turns it into one message and exit 2)."""

import pytest

from src.base.errors import ConfigError
from src.callbacks.attribution import AttributionComparison
from src.callbacks.gradcam import GradCamGrid
from src.callbacks.ground_truth import LatentGroundTruth
from src.callbacks.morph import MorphPathCallback
from src.xai.morph.path_mask import PathMaskConfig
from src.xai.morph.pipeline import MorphConfig


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: GradCamGrid(method="hirescam2"), "explain.gradcam.method"),
        (lambda: GradCamGrid(compare="smoothgrd"), "explain.gradcam.compare"),
        (lambda: GradCamGrid(latent="median"), "explain.gradcam.latent"),
        (lambda: AttributionComparison(methods=["saliency", "sailency"]), "explain.attribution.methods"),
        (
            lambda: LatentGroundTruth(methods={"x": {"method": "gradcamm"}}),
            "explain.latent_ground_truth.methods.x.method",
        ),
        (lambda: MorphPathCallback(morph={"max_step": 3}), "explain.morph_path.morph.max_step"),
        (lambda: GradCamGrid(compare={"method": "smoothgrd"}), "explain.gradcam.compare.method"),
        (lambda: GradCamGrid(compare={"method": "smoothgrad", "option": {}}), "explain.gradcam.compare.option"),
        (lambda: AttributionComparison(options={"sailency": {}}), "explain.attribution.options.sailency"),
        (lambda: GradCamGrid(method="grad_cam"), "explain.gradcam.method"),
        (lambda: LatentGroundTruth(methods={"x": "gradcamm"}), "explain.latent_ground_truth.methods.x"),
        (lambda: MorphPathCallback(mask={"refresh": None}), "explain.morph_path.mask"),
        (lambda: MorphPathCallback(morph={"precision": "16"}), "explain.morph_path.morph"),
        (lambda: MorphPathCallback(mask={"proposal": "gains"}), "explain.morph_path.mask"),
    ],
)
def test_unknown_names_are_config_errors_naming_the_key(make, key):
    with pytest.raises(ConfigError) as error:
        make()
    assert error.value.key == key


def test_known_names_are_accepted_and_the_pre_release_ones_refused():
    assert GradCamGrid(method="scorecam", compare="integrated_gradients").method == "scorecam"
    with pytest.raises(ConfigError, match=r"explain\.gradcam\.method"):
        GradCamGrid(method="gradcam++")
    with pytest.raises(TypeError, match="target"):
        GradCamGrid(target="sampled")  # now `latent`


def test_the_morph_callback_holds_its_settings_as_typed_configs():
    callback = MorphPathCallback(morph={"max_steps": 3, "precision": "bf16"}, mask={"num_blends": 2, "tol": 1e-3})
    assert callback.morph == MorphConfig(max_steps=3, precision="bf16")
    assert callback.mask == PathMaskConfig(num_blends=2, tol=1e-3)
    assert MorphPathCallback().mask == PathMaskConfig(num_blends=2, tol=1e-3)  # the config file's default


def test_a_method_with_options_has_one_shape():
    grid = GradCamGrid(method={"method": "gradcampp"}, compare={"method": "smoothgrad", "options": {"samples": 3}})
    assert (grid.method, grid.compare, grid.compare_options) == ("gradcampp", "smoothgrad", {"samples": 3})
    listed = AttributionComparison(methods=["saliency", "smoothgrad"], options={"smoothgrad": {"samples": 2}})
    labelled = AttributionComparison(methods={"saliency": {}, "smoothgrad": {"options": {"samples": 2}}})
    assert (
        listed.methods
        == labelled.methods
        == {"saliency": ("saliency", {}), "smoothgrad": ("smoothgrad", {"samples": 2})}
    )
