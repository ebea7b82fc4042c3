"""PyTorch's own calls: gradients. Keras has no multi-device training for PyTorch: one device."""

from __future__ import annotations

import torch

from tlkit.backends.devices import Devices
from tlkit.errors import TlkitError

#: Whether a training step holding ``keras.ops.image.affine_transform`` compiles with XLA:
#: nothing to refuse.
AFFINE_TRANSFORM_COMPILES = True


def local_devices(mode: str) -> Devices:
    """One device (``auto``); anything else is refused."""
    if mode != "auto":
        raise TlkitError(f"--distribute {mode} is not available on the PyTorch backend (Keras has no "
                         "multi-device training for it); use KERAS_BACKEND=jax or tensorflow")
    return Devices("none", ("default",))


def gradient(function, x):
    """``d sum(function(x)) / dx``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (result,) = torch.autograd.grad(function(x).sum(), x)
    return result
