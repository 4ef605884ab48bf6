"""Summarise the quality runs (scripts/quality_runs.sh) as markdown: one line per run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ["test/acc", "test/miou", "test/loss", "val/acc", "val/miou", "epochs"]


def main(root: str = "outputs/quality") -> None:
    print("| run | " + " | ".join(KEYS) + " | wall time |")
    print("|---" * (len(KEYS) + 2) + "|")
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        cells = [f"{metrics[k]:.4f}" if isinstance(metrics.get(k), float) else str(metrics.get(k, "")) for k in KEYS]
        log = Path(root) / f"{folder.name}.log"
        wall = ""
        if log.is_file() and (folder / ".hydra" / "config.yaml").is_file():
            wall = f"{(log.stat().st_mtime - (folder / '.hydra' / 'config.yaml').stat().st_mtime) / 60:.1f} min"
        print(f"| {folder.name} | " + " | ".join(cells) + f" | {wall} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
