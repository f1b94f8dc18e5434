"""Heatmaps for run reports: the accuracy matrix and expert usage (DESIGN.md §4).

Figures are built with the object-oriented matplotlib API on an Agg canvas: nothing touches
``pyplot``'s global state, nothing is ever shown, and a figure is freed once it is unreferenced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_accuracy_matrix", "plot_expert_usage"]

_MAX_ANNOTATED_CELLS = 900  # beyond this the numbers are unreadable; the colours remain
_DPI = 100


def _to_numpy(values: Any) -> np.ndarray:
    """A float64 copy of a numpy array, nested sequence or torch tensor."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor, without importing torch
        values = values.detach().cpu().numpy()
    return np.array(values, dtype=np.float64)


def _new_figure(rows: int, cols: int) -> Figure:
    """A figure sized for a ``rows x cols`` heatmap with a colour bar, on an Agg canvas."""
    width = min(max(5.0, 1.6 + 0.55 * cols), 24.0)
    height = min(max(3.0, 1.2 + 0.45 * rows), 18.0)
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _compact(value: float) -> str:
    """Short label for a count: ``7``, ``12.5``, ``3.4k``, ``1.2M``."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _annotate(ax: Any, data: np.ndarray, labels: np.ndarray, darkness: np.ndarray) -> None:
    """Writes ``labels[r, c]`` in every non-NaN cell: white where ``darkness`` > 0.5, else black."""
    rows, cols = data.shape
    if rows * cols > _MAX_ANNOTATED_CELLS:
        return
    fontsize = 9 if max(rows, cols) <= 12 else 7
    for r in range(rows):
        for c in range(cols):
            if np.isnan(data[r, c]):
                continue
            color = "white" if darkness[r, c] > 0.5 else "black"
            ax.text(c, r, labels[r, c], ha="center", va="center", fontsize=fontsize, color=color)


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=_DPI)


def plot_accuracy_matrix(
    A: Any,
    path: str | Path | None = None,
    title: str = "Accuracy matrix (row t: after training task t)",
) -> Figure:
    """Heatmap of an accuracy matrix with each evaluated entry written in its cell.

    Accuracies in ``[0, 1]`` are annotated as percentages with one decimal; other values (e.g. a
    matrix already in percent) as they are. NaN entries (not evaluated) are left blank.

    Args:
        A: accuracy matrix ``(T, T')``: ``A[t, i]`` = accuracy on task ``i`` after training task
            ``t``; numpy array, nested list or torch tensor.
        path: if given, the figure is also written there as a PNG (parent folders are created).
        title: figure title.

    Returns:
        The matplotlib ``Figure`` (Agg canvas; never shown).

    Raises:
        ValueError: ``A`` is not 2-D or is empty.
    """
    data = _to_numpy(A)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"accuracy matrix must be a non-empty 2-D array, got shape {data.shape}")
    rows, cols = data.shape
    finite = data[np.isfinite(data)]
    fractions = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
    shown = data * 100.0 if fractions else data
    vmin, vmax = (0.0, 100.0) if fractions else (float(finite.min()), float(finite.max()))
    if vmax <= vmin:
        vmax = vmin + 1.0

    fig = _new_figure(rows, cols)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)" if fractions else "value")
    labels = np.vectorize(lambda v: f"{v:.1f}")(shown)
    _annotate(ax, data, labels, 1.0 - (shown - vmin) / (vmax - vmin))  # viridis: dark when low
    ax.set_xticks(range(cols), [str(i) for i in range(cols)])
    ax.set_yticks(range(rows), [str(t) for t in range(rows)])
    ax.set_xlabel("evaluated task i")
    ax.set_ylabel("after training task t")
    ax.set_title(title, fontsize=10)
    _save(fig, path)
    return fig


def plot_expert_usage(
    counts: Any,
    layers: Sequence[int | str] | None = None,
    path: str | Path | None = None,
    title: str = "Expert usage",
) -> Figure:
    """Heatmap of how often each expert was selected, one row per prompted layer.

    Args:
        counts: selection counts shaped ``(layers, heads, experts)`` (summed over heads here) or
            ``(layers, experts)``; numpy array, nested list or torch tensor.
        layers: labels of the rows (e.g. the indices of the prompted ViT blocks); default
            ``0 .. layers-1``.
        path: if given, the figure is also written there as a PNG (parent folders are created).
        title: figure title.

    Returns:
        The matplotlib ``Figure`` with one panel of shape ``(layers, experts)`` (Agg canvas).

    Raises:
        ValueError: ``counts`` is not 2-D or 3-D, is empty, or ``layers`` has the wrong length.
    """
    data = _to_numpy(counts)
    if data.ndim == 3:
        data = data.sum(axis=1)  # (layers, heads, experts) -> (layers, experts)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(
            f"counts must be shaped (layers, heads, experts) or (layers, experts), got {_to_numpy(counts).shape}"
        )
    rows, cols = data.shape
    row_labels = [str(i) for i in range(rows)] if layers is None else [str(v) for v in layers]
    if len(row_labels) != rows:
        raise ValueError(f"layers has {len(row_labels)} labels but counts has {rows} layers")
    finite = data[np.isfinite(data)]
    vmin = 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin or not math.isfinite(vmax):
        vmax = vmin + 1.0

    fig = _new_figure(rows, cols)
    ax = fig.add_subplot()
    cmap = colormaps["magma_r"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label="selections")
    labels = np.vectorize(_compact)(np.nan_to_num(data))
    _annotate(ax, data, labels, (data - vmin) / (vmax - vmin))  # magma_r: dark when high
    ax.set_xticks(range(cols), [str(e) for e in range(cols)])
    ax.set_yticks(range(rows), row_labels)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    _save(fig, path)
    return fig
