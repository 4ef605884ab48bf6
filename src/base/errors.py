"""Project exceptions: each says which path or key is at fault and what to do about it."""

from __future__ import annotations


class LatentLensError(Exception):
    """Base class for errors the command line reports as one clear message (no traceback).
    `every_rank`: raised by every DDP rank together with the same message, which only global rank
    0 prints."""

    every_rank: bool = False


class ConfigError(LatentLensError):
    """A configuration key holds a value that cannot work."""

    def __init__(self, key: str, value: object, hint: str) -> None:
        self.key, self.value, self.hint = key, value, hint
        super().__init__(f"config key '{key}' = {value!r}: {hint}")


class DataError(LatentLensError):
    """A dataset is missing, incomplete or malformed on disk."""


class TrainingFault(LatentLensError):
    """Training cannot go on (e.g. a non-finite loss); what is on disk is kept as it was."""
