"""Disentanglement metrics per epoch on data with known generating factors (dSprites, synthfaces),
and how much the latent dimensions' attention maps overlap."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from src.base.contracts import ConditionalModel
from src.base.errors import ConfigError
from src.base.gaussian import kl_per_dimension
from src.callbacks.base import ImageCallback, method_spec
from src.data.in_memory import seeded_positions
from src.viz.plots import matrix_image
from src.xai import METHODS, get_method, targets
from src.xai.latent.sweeps import rank_dimensions
from src.xai.scores.disentanglement import METRICS, attention_overlap_matrix, score_disentanglement


class Disentanglement(ImageCallback):
    """Every `every_n_epochs`: MIG, SAP and DCI of the posterior means of `num_codes` validation
    images against their factors, the FactorVAE and beta-VAE scores from images the datamodule
    renders with one factor fixed (`render_factors`), and the attention-overlap matrix of the
    `num_attention_dims` dimensions with the most KL ([Liu2020]'s AD term between their `method` maps
    on the probes: 1 = the same pixels, 0 = disjoint) as an image. Logs a `summary` (the metrics
    and the mean off-diagonal overlap, curves in W&B / TensorBoard)."""

    def __init__(
        self,
        name: str = "disentanglement",
        metrics: list[str] | None = None,
        num_codes: int = 2000,
        num_votes: int = 200,
        vote_batch: int = 64,
        num_attention_dims: int = 8,
        method: str | dict = "gradcam",
        num_probes: int = 32,
        every_n_epochs: int = 1,
        batch_size: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(name, num_probes=num_probes, every_n_epochs=every_n_epochs, **kwargs)
        self.metrics = tuple(metrics or METRICS)
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ConfigError(f"explain.{name}.metrics", unknown, f"choose from {list(METRICS)}")
        self.method, self.options = method_spec(method, f"explain.{name}.method", METHODS)
        self.num_codes, self.num_votes, self.vote_batch = int(num_codes), int(num_votes), int(vote_batch)
        self.num_attention_dims, self.batch_size = int(num_attention_dims), int(batch_size)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if not hasattr(data, "factor_sizes") or not hasattr(data, "render_factors"):
            raise ConfigError(
                "explain",
                self.name,
                f"{type(data).__name__} has no generating factors; use it with "
                "data=dsprites or data=synthfaces (or drop explain.disentanglement)",
            )
        if isinstance(pl_module, ConditionalModel):
            raise ConfigError("explain", self.name, "the disentanglement scores take an unconditional VAE")

    def codes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [N, D], factors [N, F]) of the first `num_codes` validation samples in a seeded order."""
        dataset = trainer.datamodule.val_set
        rows = seeded_positions(len(dataset), self.num_codes, self.seed, in_order=False).tolist()
        codes, factors = [], []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                batch = dataset.__getitems__(rows[start : start + self.batch_size])
                codes.append(pl_module.encode(batch["image"].to(pl_module.device))[0].cpu())
                factors.append(batch["factors"])
        return torch.cat(codes), torch.cat(factors)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule, probes: dict[str, torch.Tensor]) -> None:
        data = trainer.datamodule

        @torch.no_grad()
        def represent(factors: np.ndarray) -> np.ndarray:
            images = data.render_factors(torch.as_tensor(factors, dtype=torch.long)).to(pl_module.device)
            return pl_module.encode(images)[0].cpu().numpy()

        codes, factors = self.codes(trainer, pl_module)
        scores = score_disentanglement(
            codes,
            factors,
            represent=represent,
            factor_sizes=data.factor_sizes,
            metrics=self.metrics,
            seed=self.seed,
            votes=self.num_votes,
            batch_size=self.vote_batch,
        )
        x = probes["image"]
        with torch.no_grad():
            mu, logvar = pl_module.encode(x)
        dims = rank_dimensions(kl_per_dimension(mu, logvar), self.num_attention_dims)
        result = get_method(self.method)(
            pl_module, x, targets.select(dims), forward=targets.latent_mean(pl_module), **self.options
        )
        matrix = attention_overlap_matrix(result.maps.abs())
        off_diagonal = matrix[~np.eye(len(dims), dtype=bool)]
        scores["attention_overlap"] = float(off_diagonal.mean()) if off_diagonal.size else float("nan")
        epoch, step = trainer.current_epoch, trainer.global_step
        labels = [f"z{d}" for d in dims]
        image = matrix_image(
            matrix, labels, title=f"{self.method} map overlap, epoch {epoch}", xlabel="dimension", ylabel="dimension"
        )
        self.log_grid(
            trainer,
            "attention_overlap",
            image,
            f"AD overlap of the top-{len(dims)} KL dimensions",
            {"matrix": torch.as_tensor(matrix), "dims": torch.tensor(dims)},
        )
        self.sinks(trainer).log_summary(
            self.name,
            "summary",
            {"epoch": epoch, **scores, "dims": dims, "overlap": matrix.round(4).tolist()},
            epoch,
            step,
        )
