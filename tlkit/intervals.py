"""How far to trust an accuracy: its 95% Wilson interval, and what chose the kept weights.

An accuracy measured on ``n`` images is an estimate. :func:`wilson` gives the 95% interval of a share of
right answers measured on that many images (Wilson 1927: it stays inside [0, 1] and behaves near 0 and 1,
where the plain normal interval does not): 0.922 on 153 images is 0.868-0.955, on 1,000 images
0.904-0.937. Every accuracy tlkit prints or writes carries it (``..._ci95`` in JSON). It imports no ML
framework.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: The standard normal quantile of a two-sided 95% interval.
Z_95 = 1.959963984540054
#: The suffix of the interval written beside an accuracy in JSON (``val_accuracy_ci95``).
CI_SUFFIX = "_ci95"


def wilson(accuracy: float, count: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of ``accuracy`` measured on ``count`` images (95% by
    default); ``(nan, nan)`` for no image."""
    if count <= 0:
        return (math.nan, math.nan)
    centre = accuracy + z * z / (2 * count)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count))
    scale = 1 + z * z / count
    return (max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale))


def interval_text(accuracy: float, count: int) -> str:
    """``"95% CI 0.868-0.955, 153 images"``: an accuracy's interval as tlkit prints it."""
    low, high = wilson(accuracy, count)
    return f"95% CI {low:.3f}-{high:.3f}, {count} images"


def with_intervals(figures: dict, images: Callable[[str], int | None]) -> dict:
    """``figures`` with the interval of each accuracy (a float under a key ending in ``accuracy``) beside it as
    ``{key}_ci95``, ``images(key)`` giving how many images it was measured on (``None``: no interval)."""
    out = {}
    for key, value in figures.items():
        out[key] = value
        count = images(key) if key.endswith("accuracy") and isinstance(value, float) else None
        if count is not None:
            out[key + CI_SUFFIX] = list(wilson(value, count))
    return out


def pooled_interval(folds: list[dict], images: int | None = None) -> tuple[float, float]:
    """The 95% interval of the held-out accuracy pooled over K-fold results (``val_accuracy`` and
    ``val_images`` each), counting each of the ``images`` once (default: the folds' images, as one repeat
    holds each out once): repeats score the same images again, which narrows nothing."""
    held_out = sum(fold["val_images"] for fold in folds)
    right = sum(fold["val_accuracy"] * fold["val_images"] for fold in folds)
    return wilson(right / held_out, held_out if images is None else images)


def selection_note(kept_best_epoch: bool, has_test: bool) -> str:
    """What the run's validation figures are worth: the kept epoch was chosen on the validation images (so
    they flatter the model), and a test split, when there is one, is the figure to trust."""
    if not kept_best_epoch:
        chosen = "the last epoch was kept, but the validation images watched the training"
    else:
        chosen = "the kept epoch was chosen on the validation images, so their figures are optimistic"
    trust = ("the test figures, on images nothing was chosen on, are the ones to trust" if has_test else
             "hold out a test split (--test-split, or a test/ folder) for a figure nothing was chosen on")
    return f"{chosen}; {trust}"
