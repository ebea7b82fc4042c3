"""What differs between Keras's backends, each in its own module: the devices a job runs on
(:mod:`~tlkit.backends.devices`), and TensorFlow's, JAX's and PyTorch's own calls (gradients,
device lists, several processes). Nothing else in tlkit asks which backend it runs on, except the
exporters, whose formats belong to TensorFlow and PyTorch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from types import ModuleType


def current() -> ModuleType:
    """The module of the backend Keras runs on: :mod:`tlkit.backends.tensorflow`, ``.jax`` or ``.torch``."""
    import keras

    return importlib.import_module(f"tlkit.backends.{keras.backend.backend()}")


def gradient(function, x):
    """``d sum(function(x)) / dx`` with the backend's own autodiff."""
    return current().gradient(function, x)


def load_quietly() -> None:
    """Import Keras and start its backend without the C++ start-up lines (absl, CUDA probing, oneDNN)
    that TensorFlow writes to the terminal, unless the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves.

    What the start-up wrote is dropped; if it fails, it is written out before the error is raised.

    Raises:
        TlkitError: If ``KERAS_BACKEND`` names a backend that is not installed.
    """
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing notes
    try:
        _load_keras_quietly()
    except ModuleNotFoundError as exc:
        chosen = os.environ.get("KERAS_BACKEND", "")
        if not chosen or (exc.name or "").split(".")[0] != chosen:
            raise
        from tlkit.errors import TlkitError

        raise TlkitError(f"KERAS_BACKEND={chosen} but {chosen} is not installed: pip install {chosen}, "
                         "or unset KERAS_BACKEND") from None


def _load_keras_quietly() -> None:
    import tlkit

    if "keras" in sys.modules or tlkit.TF_LOG_CHOSEN:
        import keras  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # probes CUDA, which says it found none
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
