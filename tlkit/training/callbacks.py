"""The Keras callbacks that steer a phase: its learning-rate schedule, early stopping, and the guard that
stops a diverged fit. The schedule and early stopping start from the state a checkpoint saved, so a resumed
phase goes on exactly as the uninterrupted one would have.

Learning-rate schedules (``--lr-schedule`` for the head's phases, ``--finetune-lr-schedule`` once the base is
unfrozen), made of Keras's own schedule classes and callbacks; epochs count from 0 within a phase:

- ``constant``: the phase's rate ``lr`` throughout.
- ``step``: ``lr * drop ** floor((1 + epoch) / every)``, the classic notes' step decay (Keras's staircase
  ``ExponentialDecay`` read at step ``epoch + 1``).
- ``cosine``: ``warmup`` epochs of linear warm-up (epoch ``e`` at ``lr * (e + 1) / (warmup + 1)``), then
  Keras's ``CosineDecay`` from ``lr`` down to ``lr * floor`` on the phase's last epoch.
- ``plateau``: Keras's ``ReduceLROnPlateau`` on ``val_loss``: the rate times ``drop`` after ``patience``
  epochs without a better one (its counters are checkpointed, the rate itself is an optimizer variable).

Every schedule writes the rate each epoch trained at into its logs as ``learning_rate``: history.json,
history.csv and TensorBoard carry it.
"""

from __future__ import annotations

import math

import keras

from tlkit.config import FitConfig
from tlkit.errors import TlkitError


def epoch_schedule(name: str, learning_rate: float, epochs: int, fit: FitConfig):
    """``epoch -> rate`` of a ``constant``, ``step`` or ``cosine`` schedule over a phase of ``epochs`` epochs."""
    if name == "constant":
        return lambda epoch: learning_rate
    if name == "step":
        decay = keras.optimizers.schedules.ExponentialDecay(learning_rate, fit.lr_drop_every, fit.lr_drop,
                                                            staircase=True)
        return lambda epoch: float(keras.ops.convert_to_numpy(decay(epoch + 1)))
    if name == "cosine":
        warmup, cosine_decay = fit.lr_warmup_epochs, keras.optimizers.schedules.CosineDecay
        if warmup:
            cosine = cosine_decay(learning_rate / (warmup + 1), decay_steps=max(1, epochs - 1 - warmup),
                                  alpha=fit.lr_floor, warmup_target=learning_rate, warmup_steps=warmup)
        else:
            cosine = cosine_decay(learning_rate, decay_steps=max(1, epochs - 1), alpha=fit.lr_floor)
        return lambda epoch: float(keras.ops.convert_to_numpy(cosine(epoch)))
    raise ValueError(f"{name} is not an epoch schedule")


def rate_callback(name: str, learning_rate: float, epochs: int, fit: FitConfig,
                  saved: dict | None = None) -> keras.callbacks.Callback:
    """The callback that sets (and logs) a phase's rate each epoch; ``saved``: a plateau's checkpointed state."""
    if name == "plateau":
        return Plateau(fit.lr_drop, fit.lr_patience, saved)
    return keras.callbacks.LearningRateScheduler(epoch_schedule(name, learning_rate, epochs, fit))


def rate_state(callback: keras.callbacks.Callback | None) -> dict | None:
    """What a checkpoint keeps of a rate callback (a plateau's counters; the others depend on the epoch only)."""
    return callback.state() if isinstance(callback, Plateau) else None


class Plateau(keras.callbacks.ReduceLROnPlateau):
    """Keras's ``ReduceLROnPlateau`` on ``val_loss``, able to start from a checkpointed state."""

    def __init__(self, factor: float, patience: int, saved: dict | None = None) -> None:
        super().__init__(monitor="val_loss", factor=factor, patience=patience)
        self.saved = saved

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if self.saved is not None:
            self.wait, self.best, self.cooldown_counter = (self.saved["wait"], self.saved["best"],
                                                           self.saved["cooldown"])

    def state(self) -> dict:
        """The counters a resumed phase needs: ``{"wait", "best", "cooldown"}``."""
        best = None if self.best is None or not math.isfinite(self.best) else float(self.best)
        return {"wait": int(self.wait), "best": best, "cooldown": int(self.cooldown_counter)}


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's ``EarlyStopping`` on ``val_loss`` keeping the best weights, able to start from a saved state."""

    def __init__(self, patience: int, saved: dict | None = None) -> None:
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.saved = saved

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if self.saved is not None:
            self.wait, self.best, self.best_epoch = self.saved["wait"], self.saved["best"], self.saved["best_epoch"]
            self.best_weights = self.saved.get("best_weights")


class Diverged(TlkitError):
    """The loss became NaN or infinite: nothing of the fit is worth keeping or resuming."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops a fit at once, with :class:`Diverged`, when its loss becomes NaN or infinite (before the
    epoch is checkpointed: no diverged weights are ever kept)."""

    def __init__(self, phase: int, option: str, learning_rate: float) -> None:
        super().__init__()
        self.phase, self.option, self.learning_rate = phase, option, learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._check((logs or {}).get("loss"))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._check((logs or {}).get("val_loss"))

    def _check(self, value: float | None) -> None:
        if value is not None and not math.isfinite(float(value)):
            raise Diverged(f"loss became {float(value)} at phase {self.phase + 1} epoch {self.epoch + 1}: lower "
                             f"{self.option} (it is {self.learning_rate:g}); training stopped and no run was saved")
