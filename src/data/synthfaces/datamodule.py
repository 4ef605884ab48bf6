"""The synthetic-faces datamodule: generated once under `data_dir`, then read as CelebAMask-HQ."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from src.base.errors import ConfigError, DataError
from src.data.celebamask_hq import (
    CelebAMaskHQDataModule,
)
from src.data.in_memory import fit_images, to_float
from src.data.synthfaces.factors import FACTOR_NAMES, FACTOR_SIZES, discretize_factors, factor_parameters, factor_table
from src.data.synthfaces.files import dataset_folder, write_dataset
from src.data.synthfaces.parameters import ATTRIBUTES, sample_parameters
from src.data.synthfaces.render import render

log = logging.getLogger(__name__)


class SynthFacesDataModule(CelebAMaskHQDataModule):
    """Synthetic faces (see module doc), generated once under `data_dir` and then read by the
    CelebAMask-HQ reader; `root` is derived from (size, count, seed) unless given. Batches also
    carry 'factors': long [B, F] generating-factor indices (FACTOR_NAMES / FACTOR_SIZES, derived
    from the generator's parameters, not stored), and `render_factors` draws faces of any factors."""

    name = "SynthFaces"
    all_attributes = tuple(ATTRIBUTES)
    batch_fields = ("image", "mask", "attributes", "factors")
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(
        self,
        data_dir: str = "data",
        count: int = 20000,
        generate_size: int | None = None,
        generator_seed: int = 0,
        root: str | None = None,
        **kwargs,
    ) -> None:
        if count < 10:
            raise ConfigError("data.count", count, "generate at least 10 faces")
        self.generate_size = generate_size or kwargs.get("image_size", 64)
        self.count = count
        self.generator_seed = generator_seed
        folder = Path(root) if root else dataset_folder(data_dir, self.generate_size, count, generator_seed)
        if kwargs.get("mask_size") is None:
            kwargs["mask_size"] = self.generate_size
        super().__init__(root=str(folder), **kwargs)

    def generate(self) -> Path:
        folder = Path(self.root_arg)
        if not (folder / "synthfaces.json").is_file():
            log.info("SynthFaces: rendering %d faces at %dpx into %s (once)", self.count, self.generate_size, folder)
            write_dataset(folder, self.generate_size, self.count, self.generator_seed, workers=self.build_workers)
        return folder

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()

    def index(self) -> tuple[list[int], list[str], torch.Tensor | None]:
        ids, names, values = super().index()
        self.ids = ids  # the reader's rows: file numbers, which are sample_parameters' rows
        return ids, names, values

    def load(self):
        folder = self.generate()
        tensors, splits = super().load()
        meta = json.loads((folder / "synthfaces.json").read_text())
        ids = torch.tensor(self.ids)
        if ids.min() < 0 or ids.max() >= meta["count"]:
            raise DataError(f"{folder}: image numbers outside 0..{meta['count'] - 1} (synthfaces.json's count)")
        params = {k: v[ids] for k, v in sample_parameters(meta["count"], meta["seed"]).items()}
        for j, name in enumerate(self.attribute_names):  # the files and the parameters must agree
            if name in params and not torch.equal(tensors["attributes"][:, j], params[name].float()):
                raise DataError(
                    f"{folder}: attribute {name} does not match the generator's parameters "
                    f"(count {meta['count']}, seed {meta['seed']}); delete the folder to regenerate"
                )
        tensors["factors"] = discretize_factors(factor_table(params)[1])
        return tensors, splits

    def render_factors(self, indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """float [N, C, S, S] in [0, 1]: factor indices [N, F] rendered at the generation size and
        resized like the stored images (which are also JPEG-compressed; these are not)."""
        images, _ = render(factor_parameters(indices, seed), self.generate_size)
        return to_float(fit_images(images, self.image_size, self.channels))
