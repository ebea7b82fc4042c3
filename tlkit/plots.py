"""Matplotlib figures made from a run's data."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tlkit.files import atomic_write  # noqa: E402


def plot_curves(phases: list[dict], path: str | Path) -> None:
    """Training vs validation accuracy and loss per epoch, every phase on one epoch axis.

    Args:
        phases: ``[{"name": ..., "history": {"accuracy": [...], "val_accuracy": [...], ...}}, ...]``
            as in a run's ``history.json``.
        path: The PNG to write (atomically).
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        offset = 0
        for number, phase in enumerate(phases):
            history = phase["history"]
            epochs = range(offset + 1, offset + len(history.get(metric, [])) + 1)
            suffix = f" [{phase['name']}]" if len(phases) > 1 else ""
            axis.plot(epochs, history.get(metric, []), "o", color=f"C{2 * number}", label=f"training{suffix}")
            axis.plot(epochs, history.get(f"val_{metric}", []), "-", color=f"C{2 * number + 1}",
                      label=f"validation{suffix}")
            offset += len(history.get(metric, []))
            if number < len(phases) - 1:
                axis.axvline(offset + 0.5, color="grey", linestyle=":")
        axis.set_title(f"Training and validation {metric}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: str | Path) -> None:
    """The confusion matrix twice, side by side: counts, and each row divided by its total.

    Rows are true classes, columns predicted ones; every cell is written in figures too.

    Args:
        matrix: Counts, ``matrix[true][predicted]``.
        class_names: Names of the rows and columns.
        path: The PNG to write (atomically).
    """
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = 3 + 0.5 * len(class_names)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for axis, values, title, form in ((axes[0], counts, "counts", "{:.0f}"),
                                      (axes[1], normalized, "row-normalised", "{:.2f}")):
        axis.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, form.format(value), ha="center", va="center",
                      color="white" if value > values.max() / 2 else "black")
        axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        axis.set_yticks(range(len(class_names)), class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"Confusion matrix, {title}")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)
