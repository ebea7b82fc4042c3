"""What a setting may be: the documented range of every numeric one, the memory a configuration needs
at least, and the folders this machine offers (a home, hence a cache folder).

:class:`Bounds` sits in a config field's metadata (beside its help text and choices): the CLI shows it
in ``--help`` and :mod:`tlkit.config` refuses a value outside it, or one that is not finite (``inf``,
``nan``), whether it comes from a flag, a config file or the library. :func:`memory_floor` is a lower
bound of what training with a configuration allocates; :func:`check_memory` refuses a configuration
whose floor exceeds this machine's memory, before anything is allocated.

Importing this module imports no ML framework.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError

#: Channels of VGG16's last feature map, and by how much its five poolings shrink the image side.
FEATURE_CHANNELS = 512
FEATURE_STRIDE = 32
#: Copies of the head's weights that training holds: the weights, their gradients, two optimizer slots.
HEAD_COPIES = 4
#: Bytes per float32 value.
FLOAT_BYTES = 4
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric setting: finite, between ``low`` and ``high`` (each included
    unless open); ``text`` says it in words where the plain form would not."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    text: str | None = None

    def holds(self, value: float) -> bool:
        """Whether ``value`` is finite and within the bounds."""
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, kind: str) -> str:
        """The bounds in words, e.g. ``an integer >= 1 and <= 100000``."""
        if self.text is not None:
            return self.text
        noun = "an integer" if kind == "int" else "a number"
        return f"{noun} {'>' if self.low_open else '>='} {self.low} and {'<' if self.high_open else '<='} {self.high}"

    def interval(self) -> str:
        """The bounds as ``--help`` shows them, e.g. ``0<x<=10``."""
        return f"{self.low}{'<' if self.low_open else '<='}x{'<' if self.high_open else '<='}{self.high}"


def feature_size(image_size: int, pooling: str) -> int:
    """Length of the feature vector VGG16's base gives the head."""
    side = image_size // FEATURE_STRIDE
    return FEATURE_CHANNELS * (side * side if pooling == "flatten" else 1)


def memory_floor(image_size: int, batch_size: int, head_units: int, pooling: str) -> dict[str, int]:
    """Bytes that training allocates at the very least: one batch of float32 images, and the head's first
    dense layer with its gradients and optimizer slots. VGG16's activations come on top."""
    return {"batch": image_size * image_size * 3 * FLOAT_BYTES * batch_size,
            "head": head_units * feature_size(image_size, pooling) * FLOAT_BYTES * HEAD_COPIES}


def machine_memory() -> int | None:
    """This machine's memory in bytes (its container's limit where lower), or ``None`` if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in _CGROUP_LIMITS:
        try:
            total = min(total, int(limit.read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return total if total > 0 else None


def check_memory(image_size: int, batch_size: int, head_units: int, pooling: str) -> None:
    """Refuse settings whose :func:`memory_floor` exceeds this machine's memory.

    Raises:
        TlkitError: Saying what takes the memory and what to lower.
    """
    floor = memory_floor(image_size, batch_size, head_units, pooling)
    available = machine_memory()
    if available is None or sum(floor.values()) <= available:
        return
    gib = {name: f"{size / 2**30:.1f} GiB" for name, size in {**floor, "here": available}.items()}
    raise TlkitError(f"these settings need more memory than this machine has ({gib['here']}): a batch of "
                     f"{batch_size} images of {image_size}x{image_size} takes {gib['batch']}, a head of {head_units} "
                     f"units on {pooling} features {gib['head']}; lower batch_size, image_size or head_units")


def usable_home() -> Path | None:
    """``$HOME`` when it names a folder (an absolute path other than ``/``); ``None`` when unset or empty."""
    home = os.environ.get("HOME", "")
    return Path(home) if os.path.isabs(home) and Path(home) != Path("/") else None


def fallback_cache_dir() -> str:
    """The feature-cache folder used when neither ``TLKIT_CACHE`` nor ``HOME`` gives one."""
    return str(Path(tempfile.gettempdir()) / f"tlkit-cache-{os.getuid()}")
