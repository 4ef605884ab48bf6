"""Lightning's CSVLogger, keeping the history already in metrics.csv.

Lightning's writer deletes an existing metrics.csv when it starts, so a resumed run lost every
row before the stop; and it knows only the columns it has seen itself (under `trainer=ddp_spawn`
the workers of `trainer.test` get a copy of the logger from before `fit`, whose first save
rewrote metrics.csv with the test columns only). This writer keeps the file, starts from its
header, and on a resume drops the rows logged after the checkpoint it resumes from (the resumed
run logs those steps again)."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class _HistoryKeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Lightning's warns and deletes metrics.csv here; the history stays."""

    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys.extend(k for k in header if k not in self.metrics_keys)
        return super()._record_new_keys()

    def keep_rows_before(self, step: int) -> None:
        """Drop the rows of metrics.csv at `step` or later (atomically: a new file replaces it)."""
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        partial = f"{path}.partial-{os.getpid()}"
        with open(partial, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(partial, path)


class CSVLogger(_CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def keep_history_before(self, step: int) -> None:
        """A resume from a checkpoint saved at global step `step`: the rows logged at that step or
        later by the run that was stopped go (the resumed run logs them again)."""
        self.experiment.keep_rows_before(step)
