"""Semantic morphing paths during training or on checkpoints ([PathMaskThesis]):
why does the classifier say a rather than o? Morph each probe into o through the VAE's latent
space, walk the radial path, show where the decision flips and which pixels flip it."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import numpy as np
import torch

from src.base.errors import ConfigError
from src.callbacks.base import ImageCallback, as_config
from src.data.in_memory import seeded_positions
from src.models.classifier import Classifier
from src.models.vae import VAE
from src.run.checkpoints import load_module
from src.run.progress import progress
from src.viz.grid import as_rgb, header_labels, table_grid
from src.viz.morph import enlarge, path_mask_rows
from src.viz.plots import curves_image, entropy_gradient_image, norm_histogram_image, path_norm_image
from src.xai import targets
from src.xai.morph.path_mask import PathMaskConfig
from src.xai.morph.pipeline import MorphConfig, concat, morph_path, norm_statistics, with_path_mask
from src.xai.morph.semantic import class_norm_means

# the callback's path masks when none are configured: the anchored estimate over 2 drawn blends a
# step, with the convergence stop (conf/explain/morph_path.yaml shows the same)
FAST_MASK = PathMaskConfig(num_blends=2, tol=1e-3)


class _Chunks:
    """A sized iterable of (images on `device`, labels) over chunks of dataset positions."""

    def __init__(self, dataset, chunks, device) -> None:
        self.dataset, self.chunks, self.device = dataset, chunks, device

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        for chunk in self.chunks:
            batch = self.dataset.__getitems__(chunk.tolist())
            yield batch["image"].to(self.device), batch["label"]


def _in_chunk(phase, rows: slice, total: int):
    """`phase` for the morph of one chunk of probes: the phase names say which probes."""
    last = min(rows.stop, total) - 1
    return lambda name: phase(f"{name} (probes {rows.start}-{last} of {total})")


class MorphPathCallback(ImageCallback):
    """Needs a classifier and a VAE trained on the same data: the module being trained (or
    explained) is one of them, the other comes from `classifier_ckpt` / `vae_ckpt`.

    Every `every_n_epochs`, for fixed probes (`indices` = positions in the `split`, or
    `num_probes` seeded ones): the per-class code-norm statistics over the training set (the
    [PathMaskThesis] norm_means, with histograms; over `num_norm_images` seeded ones, or all);
    each probe's starting code, semantic morph into o (the second most likely class, or the true
    class when the prediction is wrong), radial path and its 2-class entropy / input-gradient
    analysis, as `morph` says (`MorphConfig`); path-mask attribution for the first `num_masks`,
    as `mask` says (`PathMaskConfig`). Writes: `morph_paths` (original | reconstruction |
    `num_strip` path images | morphed), `entropy_NN` curves, `path_mask` panels (mask in green,
    signed change red = brighter on the way to o / blue = darker) with their gain and loss curves,
    `latent_norms` and `path_norms` plots, the `results` table (one row per probe) and `summary`
    (error rate, convergence, time per sample, Pearson correlations; also summary.json). Each is
    written as soon as it exists; `chunk` probes are morphed at a time (null: all at once, the
    fastest), each chunk's paths and entropy curves (`morph_paths_probes_FFF-LLL`,
    `entropy_probes_FFF-LLL_NN`) written when it is done. The starting-code draws are seeded per
    chunk, so a chunked run draws other codes."""

    def __init__(
        self,
        name: str = "morph_path",
        classifier_ckpt: str | None = None,
        vae_ckpt: str | None = None,
        split: str = "val",
        indices: list[int] | None = None,
        num_probes: int = 8,
        every_n_epochs: int = 10,
        morph: MorphConfig | Mapping | None = None,
        mask: PathMaskConfig | Mapping | None = None,
        num_masks: int = 4,
        num_strip: int = 8,
        num_norm_images: int | None = None,
        chunk: int | None = None,
        use_labels: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        if split not in ("train", "val", "test"):
            raise ConfigError(f"explain.{name}.split", split, "use train, val or test")
        self.classifier_ckpt, self.vae_ckpt, self.split, self.indices = classifier_ckpt, vae_ckpt, split, indices
        if chunk is not None and int(chunk) < 1:
            raise ConfigError(f"explain.{name}.chunk", chunk, "use a number of probes >= 1, or null for all at once")
        self.morph = as_config(MorphConfig, morph, f"explain.{name}.morph")
        self.mask = as_config(PathMaskConfig, FAST_MASK if mask is None else mask, f"explain.{name}.mask")
        self.num_masks, self.num_strip, self.num_norm_images = int(num_masks), int(num_strip), num_norm_images
        self.chunk = None if chunk is None else int(chunk)
        self.use_labels = use_labels
        self._other: L.LightningModule | None = None
        self.last_summary: dict[str, float] | None = None  # MorphPath.summary() of the last render

    # -- models and probes ---------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Load the other model and check the pair against the data up front, so a wrong path or
        a model trained on other data fails before any training."""
        if self._other is None:
            if isinstance(pl_module, VAE):
                self._other = load_module(
                    self.classifier_ckpt,
                    Classifier,
                    f"explain.{self.name}.classifier_ckpt",
                    "morph_path explains a classifier",
                )
            else:
                self._other = load_module(
                    self.vae_ckpt,
                    VAE,
                    f"explain.{self.name}.vae_ckpt",
                    "morph_path morphs through a VAE's latent space",
                )
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None:
            self.check_pair(datamodule, *self.models(pl_module))

    def check_pair(self, datamodule, vae: VAE, clf: Classifier) -> None:
        """Both models read the data's image shape, and the classifier's classes are the data's."""
        channels, height, width = datamodule.image_shape
        for model, key in ((vae, "vae_ckpt"), (clf, "classifier_ckpt")):
            hp = model.hparams
            size, in_channels = hp.get("image_size"), hp.get("in_channels")
            if (size, in_channels) != (height, channels) or height != width:
                raise ConfigError(
                    f"explain.{self.name}.{key}",
                    getattr(self, key),
                    f"this {type(model).__name__} reads {in_channels}x{size}x{size} images but the data "
                    f"gives {channels}x{height}x{width}; use one trained on this data",
                )
        names = list(getattr(datamodule, "class_names", None) or [])
        if names and len(clf.classes) != len(names):
            raise ConfigError(
                f"explain.{self.name}.classifier_ckpt",
                self.classifier_ckpt,
                f"the classifier has {len(clf.classes)} classes, the data {len(names)}",
            )
        if names and list(clf.classes) != names:
            raise ConfigError(
                f"explain.{self.name}.classifier_ckpt",
                self.classifier_ckpt,
                f"the classifier was trained on classes {list(clf.classes)}, the data has {names}; "
                "morph with a classifier trained on this data",
            )

    def models(self, pl_module: L.LightningModule) -> tuple[VAE, Classifier]:
        if self._other is None:
            self.setup(None, pl_module, "fit")  # type: ignore[arg-type]
        other = self._other.to(pl_module.device).eval()
        return (pl_module, other) if isinstance(pl_module, VAE) else (other, pl_module)  # type: ignore[return-value]

    def probes(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        if self._probes is None:
            dataset = getattr(trainer.datamodule, f"{self.split}_set")
            if self.indices is not None:
                bad = [i for i in self.indices if not 0 <= int(i) < len(dataset)]
                if bad:
                    hint = f"positions must lie in 0..{len(dataset) - 1} of the {self.split} split"
                    raise ConfigError(f"explain.{self.name}.indices", bad, hint)
                positions = [int(i) for i in self.indices]
            else:
                positions = seeded_positions(len(dataset), self.num_probes, self.seed, in_order=False).tolist()
            self._probes = dataset.__getitems__(positions) | {"position": torch.as_tensor(positions)}
        return self._probes

    def norm_batches(self, trainer: L.Trainer, vae: VAE) -> list:
        """The training set (or `num_norm_images` seeded images of it) as (images, labels) chunks of
        2048, each read when its turn comes: the images the code-norm statistics are taken over."""
        dataset = trainer.datamodule.train_set
        positions = torch.arange(len(dataset))
        if self.num_norm_images is not None and self.num_norm_images < len(dataset):
            positions = seeded_positions(len(dataset), self.num_norm_images, self.seed, in_order=False)
        return _Chunks(dataset, positions.split(2048), vae.device)

    # -- rendering -------------------------------------------------------------------------------

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        """Each panel is written as soon as what it shows exists: the code norms after the norm
        statistics, each chunk's paths and entropy curves after its morph, the path masks after
        the mask phase, the tables and summary at the end."""
        vae, clf = self.models(pl_module)
        x, labels = probes["image"], probes.get("label")
        names = list(getattr(trainer.datamodule, "class_names", None) or clf.classes)
        epoch, step, sinks, cb = trainer.current_epoch, trainer.global_step, self.sinks(trainer), self.name
        chunk = len(x) if self.chunk is None else self.chunk
        with progress(self.name, trainer) as steps:  # a bar per phase; stops between steps on a signal
            norms, norm_labels = norm_statistics(
                vae.encode, self.norm_batches(trainer, vae), steps.phase("norm statistics")
            )
            sinks.log_images(
                cb,
                "latent_norms",
                [norm_histogram_image(norms.numpy(), norm_labels.numpy(), names)],
                epoch,
                step,
                captions=[f"||mu|| over {len(norms)} training images"],
            )
            norm_means = class_norm_means(norms, norm_labels, len(names))
            parts = []
            for first in range(0, len(x), chunk):
                rows = slice(first, first + chunk)
                target = targets.runner_up(labels[rows] if self.use_labels and labels is not None else None)
                phase = steps.phase if chunk >= len(x) else _in_chunk(steps.phase, rows, len(x))
                part = morph_path(
                    clf,
                    x[rows],
                    target,
                    vae=vae,
                    norm_means=norm_means,
                    morph=self.morph,
                    seed=self.seed,
                    progress=phase,
                )
                suffix = "" if chunk >= len(x) else f"_probes_{first:03d}-{first + len(part.o) - 1:03d}"
                self._log_paths(part, x[rows], names, sinks, epoch, step, suffix)
                parts.append(part)
            out = concat(parts)
            if self.num_masks > 0:
                phase = steps.phase("path mask")
                out = with_path_mask(
                    clf, out, self.num_masks, self.mask, fold=self.morph.fold, seed=self.seed, progress=phase
                )
        radial, linear = out.path_norms()
        plot = path_norm_image(radial.cpu().numpy(), linear.cpu().numpy())
        caption = "code norm along the radial and the linear path from start to morphed code"
        sinks.log_images(cb, "path_norms", [plot], epoch, step, captions=[caption])
        if out.mask is not None:
            self._log_mask(out, x, names, sinks, epoch, step)
        self._log_tables(out, probes, names, sinks, epoch, step)
        if self.save_tensors:
            tensors = {
                "image": x,
                "start": out.start,
                "morphed_code": out.morph.codes,
                "path_codes": out.codes,
                "path_images": out.images,
                "entropy": out.entropy,
                "gradient": out.gradient,
                "a": out.a,
                "o": out.o,
                "steps": out.morph.steps,
                "converged": out.morph.converged,
                "final_class": out.final_class,
                "norm_means": norm_means,
            }
            if out.mask is not None:
                tensors |= {
                    "mask": out.mask.mask,
                    "signed": out.mask.signed,
                    "mask_gains": out.mask.gains,
                    "mask_loss": out.mask.loss,
                }
            sinks.save_tensors(cb, "morph_path", tensors, epoch)

    def _log_paths(self, out, x, names, sinks, epoch, step, suffix: str) -> None:
        """The morph paths and entropy curves of the probes in `out` (a chunk's, `suffix` names it)."""
        steps, probs = len(out.codes), out.probabilities
        a, o = out.a.tolist(), out.o.tolist()
        picks = np.linspace(0, steps - 1, self.num_strip + 2).round().astype(int)[1:-1]
        rows, labs = [], []
        for b in range(len(x)):
            tiles = [x[b], out.images[0, b], *[out.images[i, b] for i in picks], out.images[-1, b]]
            rows.append(list(enlarge(as_rgb(torch.stack(tiles)))))
            p = probs[:, b]
            labs.append(
                [
                    f"{names[a[b]]}",
                    f"p_a {p[0, a[b]]:.2f}",
                    *[f"p_o {p[i, o[b]]:.2f}" for i in picks],
                    f"{names[out.final_class[b]]} {p[-1, out.final_class[b]]:.2f}",
                ]
            )
        heads = ["original", "recon", *[f"a={i / (steps - 1):.2f}" for i in picks], "morphed"]
        pairs = ", ".join(f"{names[a[b]]}->{names[o[b]]}" for b in range(len(x)))
        sinks.log_images(
            self.name,
            f"morph_paths{suffix}",
            [table_grid(rows, labs)],
            epoch,
            step,
            captions=[" | ".join(heads) + "; rows: " + pairs],
        )
        curves = []
        for b in range(len(x)):
            win = {k: float(v[b]) for k, v in out.window.items()}
            entropy, gradient = out.entropy[:, b].cpu().numpy(), out.gradient[:, b].cpu().numpy()
            title = f"{names[a[b]]} -> {names[o[b]]}"
            curves.append(entropy_gradient_image(entropy, gradient, win, float(out.pearson[b]), title))
        sinks.log_images(
            self.name,
            f"entropy{suffix}",
            curves,
            epoch,
            step,
            captions=[
                f"probe {b}: 2-class entropy along the path, window mean +- 1.96 std, |grad p_a|" for b in range(len(x))
            ],
        )

    def _log_mask(self, out, x, names, sinks, epoch, step) -> None:
        mask = out.mask
        k = len(mask.mask)
        rows = path_mask_rows(x[:k], out.images[0, :k], out.images[-1, :k], mask.mask, mask.signed)
        heads = ["original", "recon", "morphed", "mask", "signed"]
        names_ = [f"{names[out.a[b]]}->{names[out.o[b]]}" for b in range(k)]
        sinks.log_images(
            self.name,
            "path_mask",
            [table_grid(rows, header_labels(names_, heads))],
            epoch,
            step,
            captions=[
                "mask (green) over the reconstruction; signed = mask * (morphed - recon): red "
                "brightens, blue darkens on the way to o"
            ],
        )
        images = [
            curves_image(
                {"loss": mask.loss[:, b].cpu().numpy(), "gain in p_o per path step": mask.gains[:, b].cpu().numpy()},
                "step",
                names_[b],
            )
            for b in range(k)
        ]
        sinks.log_images(
            self.name,
            "path_mask_curves",
            images,
            epoch,
            step,
            captions=[f"{n}: optimisation loss; where along the path the mask gains" for n in names_],
        )

    def _log_tables(self, out, probes, names, sinks, epoch, step) -> None:
        columns = [
            "position",
            "index",
            "label",
            "a",
            "o",
            "start_kept_top2",
            "converged",
            "steps",
            "final_class",
            "error",
            "entropy_at_stop",
            "window_mean",
            "window_low",
            "window_high",
            "pearson",
        ]
        rows = []
        for b in range(len(out.a)):
            label = names[int(probes["label"][b])] if "label" in probes else ""
            rows.append(
                [
                    int(probes["position"][b]),
                    int(probes["index"][b]),
                    label,
                    names[out.a[b]],
                    names[out.o[b]],
                    bool(out.kept[b]),
                    bool(out.morph.converged[b]),
                    int(out.morph.steps[b]),
                    names[out.final_class[b]],
                    bool(out.error[b]),
                    round(float(out.morph.entropy[b]), 5),
                    *[round(float(out.window[k][b]), 2) for k in ("mean", "low", "high")],
                    round(float(out.pearson[b]), 4),
                ]
            )
        sinks.log_table(self.name, "results", columns, rows, epoch, step)
        summary = out.summary()
        sinks.log_table(self.name, "summary", ["metric", "value"], [[k, v] for k, v in summary.items()], epoch, step)
        sinks.log_summary(self.name, "summary", summary, epoch, step)
        self.last_summary = summary
