"""Ctrl-C during a fit, turned into a :class:`KeyboardInterrupt` that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. During a JAX fit
that is mostly inside ``np.array(jax_array)`` (Keras waiting for a step's logs), and numpy swallows
exceptions raised there: the fit went on to its last epoch as if nothing had been pressed.
:class:`CtrlC` records the first Ctrl-C and raises at the next batch or epoch end, from plain Python
code, after that epoch's checkpoint (or when the fit returns, if it was pressed after its last batch); a
second Ctrl-C interrupts at once, as before.
"""

from __future__ import annotations

import signal
import threading

import keras


class CtrlC(keras.callbacks.Callback):
    """While entered (``with CtrlC() as stop: fit(callbacks=[..., stop])``): Ctrl-C stops the fit at the
    next batch or epoch end with ``KeyboardInterrupt``.

    Give it last among the callbacks, so that an epoch that ended is checkpointed before it raises. It
    changes nothing outside the main thread (the only one that may handle signals) or where SIGINT
    already has a handler other than Python's default.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pressed = False
        self._previous = None

    def __enter__(self) -> CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._press)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.pressed and exc_type is None:  # pressed after the last batch: still a stop
            raise KeyboardInterrupt

    def _press(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def _stop_if_pressed(self, *args, **kwargs) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_pressed
