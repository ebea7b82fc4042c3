"""Every tlkit setting and its default, in one place.

A :class:`Config` holds three frozen sections: :class:`DataConfig` (how a folder
becomes images), :class:`AugmentConfig` (ImageDataGenerator-style augmentation)
and :class:`TrainConfig` (model and optimisation). The CLI takes its defaults from
here; ``--config FILE`` (JSON or TOML) and a run's own ``config.json`` load back
through :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError

MODES = ("features", "frozen", "finetune")
OPTIMIZERS = ("rmsprop", "adam", "sgd", "nadam")
POOLINGS = ("avg", "flatten")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
WARMUP_MODES = ("features", "frozen")
AUGMENT_ON = ("device", "cpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("none", "auto")
DISTRIBUTE = ("auto", "none", "mirrored", "multiworker")

#: Layers of VGG16's convolutional base that ``unfreeze_from`` may name.
VGG16_LAYERS = tuple(f"block{block}_{kind}" for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                     for kind in [*(f"conv{n}" for n in range(1, convs + 1)), "pool"])
#: Learning rate of the head (features, frozen, and the warm-up of finetune).
HEAD_LEARNING_RATE = 1e-3
#: Learning rate once the top of the base is unfrozen (finetune).
FINETUNE_LEARNING_RATE = 1e-5
#: Images decoded and predicted at a time by ``tlkit predict`` and ``tlkit evaluate``.
PREDICT_BATCH = 64
#: Factor of the exponential moving average drawn over learning curves (0: raw values only).
CURVE_SMOOTHING = 0.6
#: Shift of the shifted test-time augmentation views (``--tta``), as a fraction of the image side.
TTA_SHIFT = 0.1
#: Opacity of a Grad-CAM heatmap drawn over its image (0: the image alone, 1: the heatmap alone).
CAM_OPACITY = 0.4
#: The most confident mistakes ``tlkit evaluate`` lists.
TOP_LOSSES = 10
#: Folds of ``tlkit cv``: each is held out once per repeat while a head trains on the others.
CV_FOLDS = 5
#: Times ``tlkit cv`` deals its folds, shuffled anew each time (1: plain K-fold).
CV_REPEATS = 1
#: Where ``tlkit train`` puts run folders when ``--run-dir`` is not given.
DEFAULT_RUNS_DIR = "runs"
#: Environment variable that replaces the default ``weights="imagenet"``.
WEIGHTS_ENV = "TLKIT_WEIGHTS"
#: Environment variable that replaces the default feature-cache folder.
CACHE_ENV = "TLKIT_CACHE"


def default_weights() -> str:
    """``$TLKIT_WEIGHTS`` when set (offline machines), else ``"imagenet"``."""
    return os.environ.get(WEIGHTS_ENV) or "imagenet"


def default_cache_dir() -> str:
    """``$TLKIT_CACHE`` when set, else ``~/.cache/tlkit``."""
    return os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "tlkit")


@dataclass(frozen=True)
class DataConfig:
    """How a folder of class sub-folders becomes labelled, resized images.

    Attributes:
        image_size: Side of the square every image is resized to (VGG16 needs >= 32).
        val_split: Fraction of each class held out for validation when the folder
            has no ``validation/`` (or ``val/``) split of its own.
        test_split: Fraction of each class held out for testing, same condition.
        seed: Seed of the stratified split (and of weight initialisation).
        workers: Threads that decode images in parallel.
        cache_dir: Folder of the feature cache.
    """

    image_size: int = 150
    val_split: float = 0.2
    test_split: float = 0.0
    seed: int = 1337
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    cache_dir: str = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        _check(self.image_size >= 32, "image_size", self.image_size, "an integer >= 32 (VGG16's smallest input)")
        _check(0.0 <= self.val_split < 1.0, "val_split", self.val_split, "a fraction in [0, 1)")
        _check(0.0 <= self.test_split < 1.0, "test_split", self.test_split, "a fraction in [0, 1)")
        _check(self.val_split + self.test_split < 1.0, "val_split + test_split",
               self.val_split + self.test_split, "below 1 so that some images are left to train on")
        _check(self.workers >= 1, "workers", self.workers, "an integer >= 1")
        _check(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms of training images, with Keras ImageDataGenerator's meaning.

    The defaults are the classic recipe's (Deep Learning with Python, 5.2.5).
    Augmentation applies to ``frozen`` and ``finetune`` training only; extracted
    features are computed from the plain images.
    """

    rotation_range: float = 40.0
    width_shift_range: float = 0.2
    height_shift_range: float = 0.2
    shear_range: float = 0.2
    zoom_range: float = 0.2
    horizontal_flip: bool = True
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "a number >= 0")
        _check(self.fill_mode in FILL_MODES, "fill_mode", self.fill_mode, f"one of {', '.join(FILL_MODES)}")


@dataclass(frozen=True)
class TrainConfig:
    """The model and how it is trained.

    Attributes:
        mode: ``features`` (dense head on cached conv-base features), ``frozen``
            (base frozen, end to end with augmentation) or ``finetune`` (head
            warm-up, then the base unfrozen from ``unfreeze_from`` up).
        weights: ``imagenet``, a path to a VGG16 notop weights file, or ``none``.
        epochs: Most epochs of the main phase (early stopping may end it sooner).
        warmup_epochs: Most epochs of finetune's head warm-up.
        warmup_mode: How finetune warms its head up: on cached ``features`` (fast)
            or ``frozen`` with augmentation.
        batch_size: Images per step.
        optimizer: ``rmsprop``, ``adam``, ``sgd`` (momentum 0.9) or ``nadam``.
        learning_rate: Head learning rate (features, frozen, warm-up).
        finetune_learning_rate: Learning rate once the base is unfrozen.
        unfreeze_from: First VGG16 layer trained in finetune; it and all above it train.
        pooling: How the conv feature map becomes a vector: ``avg`` or ``flatten``.
        head_units: Width of the dense hidden layer.
        dropout: Dropout rate before the output layer.
        patience: Epochs without a better validation loss before stopping
            (0 turns early stopping off). The best epoch's weights are kept.
        augment_on: ``device`` (augmentation inside the training step, on the
            accelerator) or ``cpu`` (the classic ImageDataGenerator, for comparison).
        precision: ``float32``, ``mixed_float16`` or ``mixed_bfloat16`` (the output
            layer stays float32).
        class_weight: ``none``, or ``auto``: each training image weighs
            ``images / (classes * images of its class)`` in the loss, so every class
            counts alike however few images it has.
        distribute: ``auto`` (every accelerator of this machine when it has several, else one
            device), ``none``, ``mirrored`` (every device of this machine) or ``multiworker``
            (one process per machine, JAX); ``batch_size`` stays the global batch. See
            :mod:`tlkit.distribute`.
    """

    mode: str = "features"
    weights: str = field(default_factory=default_weights)
    epochs: int = 30
    warmup_epochs: int = 10
    warmup_mode: str = "features"
    batch_size: int = 32
    optimizer: str = "rmsprop"
    learning_rate: float = HEAD_LEARNING_RATE
    finetune_learning_rate: float = FINETUNE_LEARNING_RATE
    unfreeze_from: str = "block5_conv1"
    pooling: str = "avg"
    head_units: int = 256
    dropout: float = 0.5
    patience: int = 5
    augment_on: str = "device"
    precision: str = "float32"
    class_weight: str = "none"
    distribute: str = "auto"

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "mode", self.mode, f"one of {', '.join(MODES)}")
        _check(self.warmup_mode in WARMUP_MODES, "warmup_mode", self.warmup_mode, f"one of {', '.join(WARMUP_MODES)}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check(self.pooling in POOLINGS, "pooling", self.pooling, f"one of {', '.join(POOLINGS)}")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.warmup_epochs >= 1, "warmup_epochs", self.warmup_epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "a number > 0")
        _check(self.finetune_learning_rate > 0, "finetune_learning_rate", self.finetune_learning_rate, "a number > 0")
        _check(self.head_units >= 1, "head_units", self.head_units, "an integer >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a rate in [0, 1)")
        _check(self.patience >= 0, "patience", self.patience, "an integer >= 0")
        _check(bool(self.weights), "weights", self.weights, "imagenet, none, or a weights file path")
        _check(self.augment_on in AUGMENT_ON, "augment_on", self.augment_on, f"one of {', '.join(AUGMENT_ON)}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _check(self.class_weight in CLASS_WEIGHTS, "class_weight", self.class_weight,
               f"one of {', '.join(CLASS_WEIGHTS)}")
        _check(self.distribute in DISTRIBUTE, "distribute", self.distribute, f"one of {', '.join(DISTRIBUTE)}")
        _check(self.unfreeze_from in VGG16_LAYERS, "unfreeze_from", self.unfreeze_from,
               f"a VGG16 layer: {', '.join(name for name in VGG16_LAYERS if 'conv' in name)}")


@dataclass(frozen=True)
class Config:
    """A whole tlkit configuration: data, augmentation and training sections."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as plain JSON-ready sections."""
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields of some sections changed, e.g. ``replace(train={"epochs": 3})``."""
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise TlkitError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        return config_from_dict({name: {**values, **sections.get(name, {})} for name, values in self.to_dict().items()})


SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "train": TrainConfig}
#: Keys a run's ``config.json`` carries beside the sections; ignored on load.
RECORD_KEYS = ("provenance",)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from sections of plain values, checking every name and value.

    Raises:
        TlkitError: On an unknown section or option, or a value out of range.
    """
    sections = {}
    for name, values in raw.items():
        if name in RECORD_KEYS:
            continue
        if name not in SECTIONS:
            raise TlkitError(f"unknown config section {name!r}; expected one of {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise TlkitError(f"config section {name!r} must be a table of options, got {values!r}")
        known = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
        for key in values:
            if key not in known:
                raise TlkitError(f"unknown option {key!r} in config section {name!r}; known: {', '.join(known)}")
        sections[name] = SECTIONS[name](**{k: _coerce(name, known[k], v) for k, v in values.items()})
    return Config(**sections)


def load_config(path: str | Path) -> Config:
    """Read a JSON or TOML config file (a run's ``config.json`` included).

    Raises:
        TlkitError: If the file is missing, unparsable, or holds unknown or invalid options.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TlkitError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise TlkitError(f"config file {path} must hold sections data/augment/train")
    return config_from_dict(raw)


def _coerce(section: str, spec: dataclasses.Field, value: Any) -> Any:
    """Convert a config value to its field's type (ints stay ints, floats accept ints)."""
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


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise TlkitError(f"invalid {name}: {value!r}; expected {expected}")
