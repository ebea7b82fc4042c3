"""How a setting is declared (its help text, allowed values, and whether it describes the machine), checked
when its section is built, and converted from a config file's value. :mod:`tlkit.config` declares them all."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from tlkit.errors import TlkitError
from tlkit.limits import Bounds


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
           bounds: Bounds | None = None, machine: bool = False, factory=None) -> Any:
    """A config field with its help text, its allowed values (``choices``, or numeric ``bounds``), and
    whether it describes the ``machine`` rather than the run (such a setting may differ on resume)."""
    metadata = {"help": help, "choices": choices, "bounds": bounds, "machine": machine}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Section:
    """Checks every field that has ``choices`` or ``bounds`` on construction; sections add their own checks."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            choices, bounds, value = spec.metadata["choices"], spec.metadata["bounds"], getattr(self, spec.name)
            check(choices is None or value in choices, spec.name, value, f"one of {', '.join(choices or ())}")
            if bounds is not None:
                check(not isinstance(value, bool) and isinstance(value, (int, float)) and bounds.holds(value),
                      spec.name, value, bounds.describe(spec.type))


def coerce(section: str, spec: dataclasses.Field, value: Any) -> Any:
    """Convert a config file's value to its field's type (ints stay ints, floats accept ints).

    Raises:
        TlkitError: If the value is not of the field's kind.
    """
    kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise TlkitError(f"option {section}.{spec.name} must be {kind}, got {value!r}") from None


def check(ok: bool, name: str, value: Any, expected: str) -> None:
    """Refuse (:class:`TlkitError`) a setting that is not as ``expected``."""
    if not ok:
        raise TlkitError(f"invalid {name}: {value!r}; expected {expected}")
