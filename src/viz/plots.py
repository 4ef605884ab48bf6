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


def matrix_image(
    matrix: np.ndarray,
    rows: list[str],
    columns: list[str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "Blues",
) -> np.ndarray:
    """A [R, C] matrix as an annotated heatmap (values printed to 2 decimals; NaN left blank)."""
    matrix = np.asarray(matrix, dtype=float)
    columns = rows if columns is None else columns
    r, c = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * c, 0.8 + 0.5 * r), dpi=100)
    ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(c), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(r), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    middle = (vmin + vmax) / 2
    for i in range(r):
        for j in range(c):
            if np.isfinite(matrix[i, j]):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if matrix[i, j] > middle else "black",
                )
    ax.set_title(title, fontsize=9)
    return figure_to_array(fig)


def confusion_matrix_image(matrix: np.ndarray, classes: list[str], title: str = "") -> np.ndarray:
    """Counts [K, K] (rows true, columns predicted) as an annotated heatmap, rows normalised."""
    matrix = np.asarray(matrix, dtype=float)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    return matrix_image(rates, classes, title=title, xlabel="predicted", ylabel="true")


def norm_histogram_image(norms: np.ndarray, labels: np.ndarray, classes: list[str], bins: int = 60) -> np.ndarray:
    """Left: the histogram of ||mu|| over all images; right: one outline histogram per class with
    its mean (the [PathMaskThesis] per-class norm_means) marked."""
    norms, labels = np.asarray(norms, dtype=float), np.asarray(labels)
    edges = np.histogram_bin_edges(norms, bins=bins)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), dpi=100)
    left.hist(norms, bins=edges, color="0.4")
    left.set_title(f"||mu|| over {len(norms)} images (mean {norms.mean():.2f})", fontsize=9)
    left.set_xlabel("code norm")
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, name in enumerate(classes):
        values = norms[labels == k]
        if len(values) == 0:
            continue
        colour = colours(k % colours.N)
        right.hist(values, bins=edges, histtype="step", color=colour, label=f"{name} ({values.mean():.2f})")
        right.axvline(values.mean(), color=colour, linestyle="--", linewidth=0.8)
    right.set_title("per class (mean in brackets, dashed)", fontsize=9)
    right.set_xlabel("code norm")
    right.legend(fontsize=6, ncol=2)
    return figure_to_array(fig)


def path_norm_image(radial: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Code norm along radial and linear paths [S, B]: mean and 10-90 % band over the B paths."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for values, name, colour in ((radial, "radial", "tab:red"), (linear, "linear", "tab:blue")):
        values = np.asarray(values, dtype=float)
        t = np.linspace(0, 1, len(values))
        ax.plot(t, values.mean(1), color=colour, label=name)
        ax.fill_between(t, np.percentile(values, 10, 1), np.percentile(values, 90, 1), color=colour, alpha=0.2)
    ax.set_xlabel("a (start -> morphed)")
    ax.set_ylabel("||c||")
    ax.set_title(f"code norm along {np.asarray(radial).shape[1]} paths (mean, 10-90 %)", fontsize=9)
    ax.legend(fontsize=8)
    return figure_to_array(fig)


def entropy_gradient_image(
    entropy: np.ndarray, gradient: np.ndarray, window: dict[str, float], r: float, title: str = ""
) -> np.ndarray:
    """One path: 2-class entropy per step with the entropy-weighted mean step (red dashed) and the
    +-1.96 std window (black dashed), the input-gradient magnitude on the right axis, and the
    entropy/gradient scatter with its Pearson r."""
    fig, (ax, scatter) = plt.subplots(1, 2, figsize=(9, 2.8), dpi=100, layout="constrained")
    steps = np.arange(len(entropy))
    ax.plot(steps, entropy, color="tab:green", label="entropy (bits)")
    ax.axvline(window["mean"], color="red", linestyle="--", linewidth=1)
    for key in ("low", "high"):
        ax.axvline(window[key], color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, max(1.1 * float(np.max(entropy)), 0.02))
    ax.set_xlabel("path step (start -> morphed)")
    ax.set_ylabel("entropy", color="tab:green")
    twin = ax.twinx()
    twin.plot(steps, gradient, color="tab:purple", linewidth=0.9)
    twin.set_ylabel("||d p_a / d x||", color="tab:purple")
    ax.set_title(title, fontsize=9)
    scatter.scatter(entropy, gradient, s=6, color="tab:purple")
    scatter.set_xlabel("entropy")
    scatter.set_ylabel("gradient magnitude")
    scatter.set_title(f"Pearson r = {r:.3f}", fontsize=9)
    return figure_to_array(fig)


def curves_image(series: dict[str, np.ndarray], xlabel: str, title: str = "") -> np.ndarray:
    """Side-by-side line plots, one per named 1-D series."""
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 2.6), dpi=100, squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items(), strict=True):
        ax.plot(np.asarray(values, dtype=float), linewidth=0.9)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=9)
    return figure_to_array(fig)


def scatter_image(points: np.ndarray, labels: np.ndarray, names: list[str], size: int = 6) -> np.ndarray:
    """A 2-D scatter coloured by class with a legend, as an HxWx3 uint8 image."""
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for k, name in enumerate(names):
        sel = labels == k
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(k % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
