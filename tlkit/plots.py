"""Matplotlib figures made from a run's data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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
