"""Fetch dataset files from their official source, atomically (no half-written files left)."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path


def fetch(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through a temporary file; raise OSError on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
