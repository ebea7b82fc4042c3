"""Matplotlib figures made from a run's data."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: drawing into files leaves the user's plotting backend alone
from matplotlib.ticker import MaxNLocator

from tlkit.config import CURVE_SMOOTHING
from tlkit.io import atomic_write
from tlkit.outputs import check_output
from tlkit.runs import best_epoch


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
            when early stopping restored the best epoch): its overall number, as metrics.json's ``best_epoch``.
        best_label: That epoch as tlkit names it everywhere (``phase 2 epoch 2 (epoch 12 overall)``).
        learning_rates: The rate each epoch trained at, where every phase recorded it (runs of tlkit
            before learning-rate schedules did not).
    """

    epochs: list[int]
    series: dict[str, tuple[list[float], list[float]]]
    boundaries: list[float]
    best_epoch: int
    best_label: str
    learning_rates: list[float] | None = None


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
    best = best_epoch(phases)
    label = f"phase {best['best_phase_number']} epoch {best['best_phase_epoch']} (epoch {best['best_epoch']} overall)"
    rates = None
    if all("learning_rate" in phase["history"] for phase in phases):
        rates = [rate for phase in phases for rate in phase["history"]["learning_rate"]]
    return Curves(epochs, series, boundaries[:-1], best["best_epoch"], label, rates)


def plot_curves(phases: list[dict], path: str | Path, smoothing: float = CURVE_SMOOTHING) -> None:
    """Training vs validation accuracy and loss per epoch, every phase on one epoch axis, and under them
    the learning rate each epoch trained at (where the run recorded it).

    Raw values are drawn faint, their exponential moving average (``smoothing``; 0 draws raw values
    only) solid; phase boundaries are dotted lines, each phase named at its start, the best epoch a
    dashed one, named by phase and epoch as the console and metrics.json name it.

    Args:
        phases: ``[{"name": ..., "history": {"accuracy": [...], "val_accuracy": [...], ...}}, ...]``
            as in a run's ``history.json``.
        path: The PNG to write (atomically).
        smoothing: The moving average's factor, in [0, 1).
    """
    drawn = curves(phases, smoothing)
    names = " then ".join(phase["name"] for phase in phases)
    cuts = [0, *(int(b) for b in drawn.boundaries), len(drawn.epochs)]
    figure = Figure(figsize=(11, 4 if drawn.learning_rates is None else 6))
    grid = figure.add_gridspec(1 if drawn.learning_rates is None else 2, 2, height_ratios=(
        None if drawn.learning_rates is None else (3, 1.3)))
    axes = [figure.add_subplot(grid[0, column]) for column in range(2)]
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
        for number, start in enumerate(cuts[:-1], start=1):
            axis.text(start + 1, 0.99, f"phase {number}", transform=axis.get_xaxis_transform(), color="grey",
                      fontsize=8, va="top", clip_on=True, in_layout=False)  # at the phase's first epoch
        axis.axvline(drawn.best_epoch, color="C2", linestyle="--", label=f"best: {drawn.best_label}")
        axis.set_title(f"{metric.capitalize()}: {names}")
        axis.set_xlabel("epoch (overall)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.legend()
    if drawn.learning_rates is not None:
        _plot_rates(figure.add_subplot(grid[1, :]), drawn)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))


def _plot_rates(axis, drawn: Curves) -> None:
    """The learning rate per epoch (log scale unless a rate is 0), phase boundaries dotted."""
    axis.plot(drawn.epochs, drawn.learning_rates, "o-", color="C3", markersize=3, linewidth=1.5)
    if min(drawn.learning_rates) > 0:
        axis.set_yscale("log")
    for boundary in drawn.boundaries:
        axis.axvline(boundary, color="grey", linestyle=":")
    axis.set_title("Learning rate")
    axis.set_xlabel("epoch (overall)")
    axis.set_ylabel("learning rate")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


#: Up to this many classes, every cell of a confusion matrix is written in figures and every class named;
#: past it (the drawing would grow with the square of the classes) the cells are colour only, every k-th class
#: is named, and the most frequent confusions are listed under the picture.
LABELLED_CLASSES = 30
#: Largest side of one confusion-matrix panel, in inches (100 pixels each), however many classes.
CONFUSION_SIDE = 12
#: Confusions listed where a matrix is too large to read cell by cell.
TOP_CONFUSIONS = 10


def top_confusions(matrix: list[list[int]], class_names: list[str],
                   count: int = TOP_CONFUSIONS) -> list[tuple[str, str, int, float]]:
    """The most frequent mistakes: ``(true class, predicted class, images, share of the true class's images)``
    for the ``count`` largest cells off the diagonal that are not zero, largest first (ties: in matrix order)."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    mistakes = counts.copy()
    np.fill_diagonal(mistakes, 0)
    totals = counts.sum(axis=1)
    found = []
    for index in np.argsort(-mistakes, axis=None, kind="stable")[:count]:
        row, column = divmod(int(index), len(class_names))
        if mistakes[row, column] == 0:
            break
        found.append((class_names[row], class_names[column], int(mistakes[row, column]),
                      float(mistakes[row, column] / totals[row])))
    return found


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: str | Path) -> None:
    """The confusion matrix twice, side by side: counts, and each row divided by its total.

    Rows are true classes, columns predicted ones; up to :data:`LABELLED_CLASSES` classes every cell is
    written in figures too, past it the most frequent confusions are listed instead. The time taken does
    not grow with the number of cells beyond that of colouring them.

    Args:
        matrix: Counts, ``matrix[true][predicted]``.
        class_names: Names of the rows and columns.
        path: The PNG to write (atomically; checked before drawing).
    """
    path = check_output(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(confusion_png(matrix, class_names)))


def confusion_png(matrix: list[list[int]], class_names: list[str]) -> bytes:
    """:func:`plot_confusion`'s picture, as PNG bytes."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    classes = len(class_names)
    labelled = classes <= LABELLED_CLASSES
    step = math.ceil(classes / LABELLED_CLASSES)  # name every step-th class
    confusions = [] if labelled else top_confusions(matrix, class_names)
    caption = 0.2 * (len(confusions) + 1) + 0.3 if confusions else 0  # inches under the panels for the list
    side = min(3 + 0.5 * classes, CONFUSION_SIDE)
    figure = Figure(figsize=(2 * side + 1, side + caption))
    axes = figure.subplots(1, 2)
    named = range(0, classes, step)
    for axis, values, title, form in ((axes[0], counts, "counts", "{:.0f}"),
                                      (axes[1], normalized, "row-normalised", "{:.2f}")):
        axis.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9), interpolation="nearest")
        if labelled:
            for (row, column), value in np.ndenumerate(values):
                axis.text(column, row, form.format(value), ha="center", va="center",
                          color="white" if value > values.max() / 2 else "black")
        names = [class_names[i] for i in named]
        # parse_math=False: a class named "$5 bills" is a name, not mathtext
        axis.set_xticks(named, names, rotation=45, ha="right", parse_math=False)
        axis.set_yticks(named, names, parse_math=False)
        axis.set_xlabel("predicted" if labelled else f"predicted ({len(named)} of {classes} classes named)")
        axis.set_ylabel("true")
        axis.set_title(f"Confusion matrix, {title}")
    if confusions:
        lines = [f"{true} taken for {predicted}: {images} image(s), {share:.1%} of {true}"
                 for true, predicted, images, share in confusions]
        figure.text(0.01, (caption - 0.3) / (side + caption), "\n".join(["Most frequent confusions:", *lines]),
                    va="top", fontsize=10, parse_math=False)
    figure.tight_layout(rect=(0, caption / (side + caption), 1, 1))
    png = io.BytesIO()
    figure.savefig(png, dpi=100, format="png")
    return png.getvalue()
