"""Lightning's CSVLogger, keeping the columns already in metrics.csv.

Lightning's writer knows only the columns it has seen itself. Under `trainer=ddp_spawn` the
workers of `trainer.test` get a copy of the logger from before `fit`, so their first save
rewrote metrics.csv with the test columns only and failed on the rows `fit` had written. This
writer starts from the file's header, so every save keeps what is already there."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _HeaderKeepingWriter(ExperimentWriter):
    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys.extend(k for k in header if k not in self.metrics_keys)
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HeaderKeepingWriter(log_dir=self.log_dir)
        return self._experiment
