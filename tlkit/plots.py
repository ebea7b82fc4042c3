"""Matplotlib figures made from a run's data."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: drawing into files leaves the user's plotting backend alone
from matplotlib.ticker import MaxNLocator

from tlkit.config import CURVE_SMOOTHING
from tlkit.io import atomic_write


def smooth(values: list[float], factor: float) -> list[float]:
    """Exponential moving average: ``s[0] = v[0]``, ``s[t] = factor * s[t-1] + (1 - factor) * v[t]``."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else factor * smoothed[-1] + (1 - factor) * value)
    return smoothed


@dataclass
class Curves:
    """What :func:`plot_curves` draws, on one epoch axis across phases (epochs counted from 1).

    Attributes:
        epochs: The x value of every epoch of every phase.
        series: ``{"accuracy"|"val_accuracy"|"loss"|"val_loss": (raw, smoothed)}`` over ``epochs``.
        boundaries: x positions between phases.
        best_epoch: x of the epoch with the lowest validation loss in the last phase (the kept weights
            when early stopping restored the best epoch).
    """

    epochs: list[int]
    series: dict[str, tuple[list[float], list[float]]]
    boundaries: list[float]
    best_epoch: int


def curves(phases: list[dict], smoothing: float) -> Curves:
    """The series of a run's ``history.json`` phases, each smoothed within its phase."""
    epochs, boundaries, series = [], [], {}
    for phase in phases:
        history = phase["history"]
        start = len(epochs)
        epochs.extend(range(start + 1, start + len(history["loss"]) + 1))
        for metric in ("accuracy", "val_accuracy", "loss", "val_loss"):
            raw, smoothed = series.setdefault(metric, ([], []))
            raw.extend(history[metric])
            smoothed.extend(smooth(history[metric], smoothing))
        boundaries.append(len(epochs) + 0.5)
    last = phases[-1]["history"]["val_loss"]
    best = len(epochs) - len(last) + int(np.argmin(last)) + 1
    return Curves(epochs, series, boundaries[:-1], best)


def plot_curves(phases: list[dict], path: str | Path, smoothing: float = CURVE_SMOOTHING) -> None:
    """Training vs validation accuracy and loss per epoch, every phase on one epoch axis.

    Raw values are drawn faint, their exponential moving average (``smoothing``; 0 draws raw values
    only) solid; phase boundaries are dotted lines, the best epoch a dashed one.

    Args:
        phases: ``[{"name": ..., "history": {"accuracy": [...], "val_accuracy": [...], ...}}, ...]``
            as in a run's ``history.json``.
        path: The PNG to write (atomically).
        smoothing: The moving average's factor, in [0, 1).
    """
    drawn = curves(phases, smoothing)
    names = " then ".join(phase["name"] for phase in phases)
    cuts = [0, *(int(b) for b in drawn.boundaries), len(drawn.epochs)]
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for colour, (key, label) in enumerate(((metric, "training"), (f"val_{metric}", "validation"))):
            raw, smoothed = drawn.series[key]
            label = f"{label} (smoothed {smoothing:g})" if smoothing else label
            for start, stop in zip(cuts, cuts[1:]):  # each phase its own line: the average restarts there
                epochs = drawn.epochs[start:stop]
                if smoothing:
                    axis.plot(epochs, raw[start:stop], "o-", color=f"C{colour}", alpha=0.3, markersize=3,
                              linewidth=1)
                axis.plot(epochs, smoothed[start:stop], "-", color=f"C{colour}", linewidth=2,
                          label=label if start == 0 else None)
        for boundary in drawn.boundaries:
            axis.axvline(boundary, color="grey", linestyle=":")
        axis.axvline(drawn.best_epoch, color="C2", linestyle="--", label=f"best epoch ({drawn.best_epoch})")
        axis.set_title(f"{metric.capitalize()}: {names}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: str | Path) -> None:
    """The confusion matrix twice, side by side: counts, and each row divided by its total.

    Rows are true classes, columns predicted ones; every cell is written in figures too.

    Args:
        matrix: Counts, ``matrix[true][predicted]``.
        class_names: Names of the rows and columns.
        path: The PNG to write (atomically).
    """
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(confusion_png(matrix, class_names)))


def confusion_png(matrix: list[list[int]], class_names: list[str]) -> bytes:
    """:func:`plot_confusion`'s picture, as PNG bytes."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = 3 + 0.5 * len(class_names)
    figure = Figure(figsize=(2 * side + 1, side))
    axes = figure.subplots(1, 2)
    for axis, values, title, form in ((axes[0], counts, "counts", "{:.0f}"),
                                      (axes[1], normalized, "row-normalised", "{:.2f}")):
        axis.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, form.format(value), ha="center", va="center",
                      color="white" if value > values.max() / 2 else "black")
        # parse_math=False: a class named "$5 bills" is a name, not mathtext
        axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", parse_math=False)
        axis.set_yticks(range(len(class_names)), class_names, parse_math=False)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"Confusion matrix, {title}")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, dpi=100, format="png")
    return png.getvalue()
