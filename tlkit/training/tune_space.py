"""What ``tlkit tune`` searches: the ``[tune]`` table of a config file, its defaults and checks, and the
settings that score a trial. It imports no ML framework (the command line checks a table before loading one);
:func:`hyperparameters` imports KerasTuner when called.

A ``[tune]`` table names the hyperparameters to search, each with its range: ``[low, high]`` for the
continuous ones (:data:`CONTINUOUS`; log-uniform for those of :data:`LOG_SCALE`, uniform otherwise), a
list of choices for the others. A hyperparameter the table leaves out is not searched: it keeps the value
of its own section. Without a table, :data:`DEFAULT_SPACE` is searched.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from tlkit.config import COPY_OPTIONS, OWNER, Config
from tlkit.errors import TlkitError

#: The space searched when the config file has no ``[tune]`` table (README, tlkit tune).
DEFAULT_SPACE: dict[str, list] = {
    "learning_rate": [1e-4, 1e-2],  # log-uniform: the classic head's 1e-3 in the middle
    "head_units": [64, 128, 256, 512],  # choices
    "dropout": [0.0, 0.6],  # uniform
    "l2": [1e-6, 1e-2],  # log-uniform (leave l2 out of [tune] to keep fit's own, 0 by default)
    "label_smoothing": [0.0, 0.2],  # uniform
    "optimizer": ["rmsprop", "adam"],  # choices
    "batch_size": [16, 32, 64],  # choices
}
#: Trials a search runs unless ``--trials`` says otherwise (a rerun continues up to it).
TUNE_TRIALS = 20
#: Folds each trial is scored on (``tlkit cv`` defaults to 5; 3 keeps a trial at 3 head trainings).
TUNE_FOLDS = 3
#: Where ``tlkit tune`` keeps its search (resumed from there) and writes tune.json and best.toml.
TUNE_DIR = "tune"
#: KerasTuner's oracles ``--algorithm`` chooses from (bayesian needs scikit-learn).
ALGORITHMS = ("random", "bayesian")
#: Hyperparameters searched over a range; the others take a list of choices.
CONTINUOUS = ("learning_rate", "dropout", "l2", "label_smoothing")
#: Continuous hyperparameters drawn log-uniformly (their ranges must start above 0).
LOG_SCALE = ("learning_rate", "l2")
#: The settings a trial's score depends on: the searched ones, and the others cv's heads use.
SCORED_SETTINGS = ("labels", "image_size", "test_split", "seed", "weights", "epochs", "batch_size", "optimizer",
                   "learning_rate", "lr_schedule", "lr_warmup_epochs", "lr_floor", "lr_drop", "lr_drop_every",
                   "lr_patience", "label_smoothing", "l2", "pooling", "head_units", "dropout", "precision",
                   "class_weight", *COPY_OPTIONS)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def read_table(config_file: str | Path | None) -> dict[str, Any] | None:
    """The ``[tune]`` table of a JSON or TOML config file (``None`` without a file or a table).

    Raises:
        TlkitError: If the file cannot be read or parsed, or its ``tune`` entry is not a table.
    """
    if config_file is None:
        return None
    path = Path(config_file)
    try:
        text = path.read_text(encoding="utf-8-sig")
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise TlkitError(f"cannot read config file {path}: {exc}") from None
    table = raw.get("tune") if isinstance(raw, dict) else None
    if table is not None and not isinstance(table, dict):
        raise TlkitError(f"[tune] in {path} must be a table of hyperparameter ranges, got {table!r}")
    return table


def check_space(table: dict[str, Any], config: Config) -> dict[str, list]:
    """``table`` checked: known names, well-formed ranges and choices, every value one ``config`` accepts,
    and the largest batch and head within this machine's memory. Returns the space, in a stable order.

    Raises:
        TlkitError: In one line naming the entry at fault.
    """
    if not table:
        raise TlkitError("[tune] names nothing to search; give ranges, e.g. learning_rate = [1e-4, 1e-2]")
    unknown = [name for name in table if name not in DEFAULT_SPACE]
    if unknown:
        raise TlkitError(f"unknown name {unknown[0]!r} in [tune]; known: {', '.join(DEFAULT_SPACE)}")
    space = {name: list(table[name]) if isinstance(table[name], (list, tuple)) else table[name]
             for name in DEFAULT_SPACE if name in table}
    for name, values in space.items():
        _check_entry(name, values, config)
    trial_config(config, {name: max(space[name]) for name in ("head_units", "batch_size") if name in space}
                 ).check_memory()
    return space


def _check_entry(name: str, values: Any, config: Config) -> None:
    if name in CONTINUOUS:
        numbers = isinstance(values, list) and len(values) == 2 and all(_is_number(value) for value in values)
        if not numbers or not values[0] < values[1]:
            raise TlkitError(f"[tune] {name} must be a range [low, high] of two numbers, low < high, got {values!r}")
        if name in LOG_SCALE and values[0] <= 0:
            raise TlkitError(f"[tune] {name} is searched on a log scale: its range must start above 0, got "
                             f"{values!r} (leave {name} out of [tune] to keep one value)")
    else:
        kind = str if name == "optimizer" else int
        if (not isinstance(values, list) or not values or len(set(values)) < len(values)
                or not all(isinstance(value, kind) and not isinstance(value, bool) for value in values)):
            raise TlkitError(f"[tune] {name} must be a list of distinct {kind.__name__} choices, got {values!r}")
    for value in values:
        try:
            trial_config(config, {name: value})
        except TlkitError as exc:
            raise TlkitError(f"[tune] {name}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_config(config: Config, values: dict[str, Any]) -> Config:
    """``config`` with a trial's hyperparameter ``values`` (``{name: value}``) in their sections."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        sections.setdefault(OWNER[name], {})[name] = value
    return config.replace(**sections)


def fixed_settings(config: Config, space: dict[str, list]) -> dict[str, Any]:
    """The settings of ``config`` that score a trial and are not searched: ``{name: value}``."""
    return {name: getattr(getattr(config, OWNER[name]), name) for name in SCORED_SETTINGS if name not in space}


def hyperparameters(space: dict[str, list]):
    """The KerasTuner ``HyperParameters`` of a checked space (see :func:`check_space`)."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, values in space.items():
        if name in CONTINUOUS:
            hp.Float(name, float(values[0]), float(values[1]), sampling="log" if name in LOG_SCALE else "linear")
        else:
            hp.Choice(name, values)
    return hp


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``1.5h``.

    Raises:
        TlkitError: If ``text`` is not such a duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", text.lower())
    if not match:
        raise TlkitError(f"invalid time budget: {text!r}; expected seconds, or a number with s, m or h (30m, 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def toml_text(config: Config, comment: str) -> str:
    """``config``'s run settings (no machine settings: a file to share) as TOML, after a ``# comment`` line."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for section, values in config.run_settings().items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # finite: every setting is bounded
    return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML's
