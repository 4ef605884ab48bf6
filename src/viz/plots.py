"""Matplotlib figures rendered to uint8 arrays (headless)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def figure_to_array(fig) -> np.ndarray:
    """Render and close a figure: uint8 [H, W, 3]."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def confusion_matrix_image(matrix: np.ndarray, classes: list[str], title: str = "") -> np.ndarray:
    """Counts [K, K] (rows true, columns predicted) as an annotated heatmap, rows normalised."""
    matrix = np.asarray(matrix, dtype=float)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_title(title, fontsize=9)
    return figure_to_array(fig)
