"""Every tlkit setting, its default, its help text and its allowed values, in one place.

A :class:`Config` holds five frozen sections: :class:`DataConfig` (which images, and how they are split),
:class:`AugmentConfig` (ImageDataGenerator-style augmentation), :class:`ModelConfig` (the network),
:class:`FitConfig` (how it is trained) and :class:`RuntimeConfig` (how the machine runs it). Each field's
help text and choices live in its metadata; the CLI makes one flag per field from them. ``--config FILE``
(JSON or TOML) and a run's own ``config.json`` load back through :func:`load_config`, including files of
the earlier layout (sections ``data``, ``augment``, ``train``; run format 2). It imports no ML framework.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.backbone import VGG16_LAYERS
from tlkit.errors import OptionError, TlkitError
from tlkit.limits import Bounds, check_memory, fallback_cache_dir, usable_home
from tlkit.options import Section, check, coerce, option

MODES = ("features", "frozen", "finetune")
OPTIMIZERS = ("rmsprop", "adam", "sgd", "nadam")
POOLINGS = ("avg", "flatten")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
WARMUP_MODES = ("features", "frozen")
AUGMENT_ON = ("device", "cpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("none", "auto")
DISTRIBUTE = ("auto", "none", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "step", "cosine", "plateau")

#: Default image side: ImageNet VGG16 was trained at 224x224, and its features are best at that scale.
IMAGE_SIZE = 224
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
#: Multi-label: a label is predicted when its probability reaches this (unless thresholds were tuned).
MULTI_LABEL_THRESHOLD = 0.5
TOP_K = 5  #: Past this many classes, runs and evaluations also give top-5 accuracy (``top_5_accuracy``).
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
FRACTION = Bounds(0, 1, high_open=True, text="a fraction in [0, 1)")
EPOCHS = Bounds(1, 100000)
LEARNING_RATE = Bounds(0, 10, low_open=True)


def default_weights() -> str:
    """``$TLKIT_WEIGHTS`` when set (offline machines), else ``"imagenet"``."""
    return os.environ.get(WEIGHTS_ENV) or "imagenet"


def default_cache_dir() -> str:
    """``$TLKIT_CACHE`` when set, else ``~/.cache/tlkit``; without a usable ``HOME``, a folder under the
    system's temporary folder (the CLI refuses that fallback, asking for ``--cache-dir`` or ``TLKIT_CACHE``)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    home = usable_home()
    return str(home / ".cache" / "tlkit") if home else fallback_cache_dir()


@dataclass(frozen=True)
class DataConfig(Section):
    """Which images a dataset gives, at what size, and how a plain folder is split."""

    image_size: int = option(IMAGE_SIZE, help="Side of the square images are resized to (VGG16 was trained at "
                                              "224).", bounds=Bounds(
        32, 1024, text="an integer >= 32 (VGG16's smallest input) and <= 1024"))
    val_split: float = option(0.2, help="Validation fraction per class, for a folder without its own split.",
                              bounds=FRACTION)
    test_split: float = option(0.0, help="Test fraction per class, for a folder without its own split.",
                               bounds=FRACTION)
    labels: str = option("", help="CSV of labels for the images of DATA, a folder (columns path or filename, label, "
                                  "optional split; paths relative to DATA). DATA may also be such a CSV itself.")
    label_separator: str = option(";", help="Between the labels of one CSV label cell: several labels make the data "
                                            "multi-label (one sigmoid per label); '' reads a cell as one label.")
    label_columns: str = option("", help="Multi-label: the CSV's 0/1 columns, one per label, comma-separated "
                                         "(instead of a label column).")
    seed: int = option(1337, help="Seed of the split, shuffling, augmentation and initialisation.",
                       bounds=Bounds(0, 2**32, high_open=True, text="an integer in [0, 2**32)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.val_split + self.test_split < 1.0, "val_split + test_split",
              self.val_split + self.test_split, "below 1 so that some images are left to train on")
        columns = self.label_column_names
        check(all(columns) and len(set(columns)) == len(columns), "label_columns", self.label_columns,
              "distinct column names separated by commas")
        check(len(columns) != 1, "label_columns", self.label_columns, "two or more columns (one per label)")
        if self.labels:  # recorded resolved, wherever it is run from
            object.__setattr__(self, "labels", str(Path(self.labels).expanduser().resolve()))


    @property
    def label_column_names(self) -> tuple[str, ...]:
        """``label_columns`` as a tuple of names (empty: labels come from a ``label`` column)."""
        return tuple(name.strip() for name in self.label_columns.split(",")) if self.label_columns else ()


@dataclass(frozen=True)
class AugmentConfig(Section):
    """Random transforms of training images, with Keras ImageDataGenerator's meaning.

    The defaults are the classic recipe's (Deep Learning with Python, 5.2.5). Augmentation applies
    to ``frozen`` and ``finetune`` training only; extracted features are computed from the plain images.
    """

    rotation_range: float = option(40.0, help="Random rotation, degrees (+/-).", bounds=Bounds(0, 180))
    width_shift_range: float = option(0.2, help="Random horizontal shift, fraction of the width (pixels if >= 1).",
                                      bounds=Bounds(0, 1024))
    height_shift_range: float = option(0.2, help="Random vertical shift, fraction of the height (pixels if >= 1).",
                                       bounds=Bounds(0, 1024))
    shear_range: float = option(0.2, help="Random shear angle, degrees (+/-).", bounds=Bounds(0, 90, high_open=True))
    zoom_range: float = option(0.2, help="Random zoom in [1 - z, 1 + z], x and y independently.",
                               bounds=Bounds(0, 1, high_open=True))
    horizontal_flip: bool = option(True, help="Flip half of the images left-right.")
    fill_mode: str = option("nearest", help="How points outside the image are filled.", choices=FILL_MODES)


@dataclass(frozen=True)
class ModelConfig(Section):
    """The network: VGG16's weights, the head on top of it, and how much of VGG16 fine-tuning trains."""

    weights: str = option(help="VGG16 weights: imagenet, none, or a weights file (default from TLKIT_WEIGHTS "
                               "when set).", factory=default_weights)
    pooling: str = option("avg", help="Feature map to vector: global average or flatten.", choices=POOLINGS)
    head_units: int = option(256, help="Width of the dense hidden layer.", bounds=Bounds(1, 65536))
    dropout: float = option(0.5, help="Dropout rate before the output layer.",
                            bounds=Bounds(0, 1, high_open=True, text="a rate in [0, 1)"))
    l2: float = option(0.0, help="L2 penalty factor on the head's dense kernels (0: none; the classic notes use "
                                 "0.001).", bounds=Bounds(0, 1))
    unfreeze_from: str = option("block5_conv1", help="First VGG16 layer that finetune trains (it and all above).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.weights), "weights", self.weights, "imagenet, none, or a weights file path")
        if self.weights.lower() not in ("imagenet", "none"):  # a file: recorded resolved, wherever it is run from
            object.__setattr__(self, "weights", str(Path(self.weights).expanduser().resolve()))
        check(self.unfreeze_from in VGG16_LAYERS, "unfreeze_from", self.unfreeze_from,
               f"a VGG16 layer: {', '.join(name for name in VGG16_LAYERS if 'conv' in name)}")


@dataclass(frozen=True)
class FitConfig(Section):
    """How the model is trained: the mode, its phases' lengths and learning rates, the loss weighting."""

    mode: str = option("features", choices=MODES, help="features: head on cached features; frozen: end to end, "
                                                       "base frozen; finetune: then unfreeze.")
    epochs: int = option(30, help="Most epochs of the main phase.", bounds=EPOCHS)
    warmup_epochs: int = option(10, help="Most epochs of finetune's head warm-up.", bounds=EPOCHS)
    warmup_mode: str = option("features", help="How finetune warms up its head.", choices=WARMUP_MODES)
    batch_size: int = option(32, help="Images per step.", bounds=Bounds(1, 65536))
    optimizer: str = option("rmsprop", help="Optimizer (sgd uses momentum 0.9).", choices=OPTIMIZERS)
    learning_rate: float = option(HEAD_LEARNING_RATE, help="Learning rate of the head.", bounds=LEARNING_RATE)
    finetune_learning_rate: float = option(FINETUNE_LEARNING_RATE, help="Learning rate once the base is unfrozen.",
                                           bounds=LEARNING_RATE)
    lr_schedule: str = option("constant", choices=LR_SCHEDULES, help="Learning-rate schedule of the head's phases "
                              "(features, frozen, finetune's warm-up); see README, Learning-rate schedules.")
    finetune_lr_schedule: str = option("constant", choices=LR_SCHEDULES,
                                       help="Learning-rate schedule once the base is unfrozen (finetune).")
    lr_warmup_epochs: int = option(0, help="cosine: epochs of linear warm-up up to the learning rate.",
                                   bounds=Bounds(0, 100000))
    lr_floor: float = option(0.01, help="cosine: the rate of the last epoch, as a fraction of the learning rate.",
                             bounds=FRACTION)
    lr_drop: float = option(0.5, help="step and plateau: the factor each drop multiplies the rate by.",
                            bounds=Bounds(0, 1, low_open=True, high_open=True, text="a factor in (0, 1)"))
    lr_drop_every: int = option(10, help="step: epochs between drops (rate = lr * drop ** floor((1 + epoch) / "
                                         "every)).", bounds=Bounds(1, 100000))
    lr_patience: int = option(2, help="plateau: epochs without a better val_loss before the rate drops.",
                              bounds=Bounds(1, 100000))
    augmented_copies: int = option(0, help="Features mode (and finetune's feature warm-up), cv, tune: also train the "
                                   "head on K randomly augmented copies of every image, extracted once.",
                                   bounds=Bounds(0, 64))
    label_smoothing: float = option(0.0, help="Label smoothing of the cross-entropy, as Keras defines it (0: none).",
                                    bounds=FRACTION)
    tune_thresholds: bool = option(False, help="Multi-label: per label, the threshold that maximises its F1 on the "
                                               "validation images (else 0.5), kept with the run.")
    patience: int = option(5, help="Epochs without a better val_loss before stopping; 0: never stop early.",
                           bounds=Bounds(0, 100000))
    class_weight: str = option("none", choices=CLASS_WEIGHTS, help="auto: weigh each class inversely to its "
                                                                   "number of training images (imbalanced data).")


@dataclass(frozen=True)
class RuntimeConfig(Section):
    """How this machine runs the job: precision, where augmentation runs, devices, threads, cache folder."""

    precision: str = option("float32", help="Compute precision; mixed types keep the output layer float32. auto: "
                                            "mixed_bfloat16 where the device computes bfloat16 natively (NVIDIA "
                                            "compute capability 8.0+, TPU, a CPU with AMX or AVX512-BF16 on "
                                            "TensorFlow or PyTorch), else float32.", choices=PRECISIONS)
    augment_on: str = option("device", choices=AUGMENT_ON, help="Augment inside the training step (device) or "
                                                               "with the classic ImageDataGenerator (cpu).")
    distribute: str = option("auto", choices=DISTRIBUTE, machine=True,
                             help="Devices: auto (every accelerator when there are several), none (one), mirrored "
                                  "(every device here), multiworker (one process per machine, JAX; see README).")
    workers: int = option(help="Threads decoding images.", machine=True, bounds=Bounds(1, 1024),
                          factory=lambda: min(8, os.cpu_count() or 1))
    cache_dir: str = option(help="Folder of the feature cache (or set TLKIT_CACHE).", machine=True,
                            factory=default_cache_dir)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cache_dir.strip():
            raise OptionError("invalid cache_dir: ''; expected a folder path (or set TLKIT_CACHE)")


SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "fit": FitConfig,
            "runtime": RuntimeConfig}
#: The section of every option (option names are unique across sections).
OWNER = {spec.name: name for name, section in SECTIONS.items() for spec in dataclasses.fields(section)}
#: The options the augmented copies of the features depend on (extract, cv, tune).
COPY_OPTIONS = ("augmented_copies", *(name for name, section in OWNER.items() if section == "augment"))
#: The sections of run format 2 and earlier config files, with the options each held.
FORMER_SECTIONS = {
    "data": ("image_size", "val_split", "test_split", "seed", "workers", "cache_dir"),
    "augment": tuple(name for name, section in OWNER.items() if section == "augment"),
    "train": ("mode", "weights", "epochs", "warmup_epochs", "warmup_mode", "batch_size", "optimizer", "learning_rate",
              "finetune_learning_rate", "unfreeze_from", "pooling", "head_units", "dropout", "patience", "augment_on",
              "precision", "class_weight", "distribute"),
}
#: Keys beside the sections, ignored on load: a run's ``config.json`` record, ``tlkit tune``'s search ranges.
RECORD_KEYS = ("provenance", "tune")


@dataclass(frozen=True)
class Config:
    """A whole tlkit configuration: data, augment, model, fit and runtime sections."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def check_memory(self) -> None:
        """Refuse (:class:`TlkitError`) settings whose images and head alone would not fit in this machine's
        memory: checked before training, not when a run trained elsewhere is loaded."""
        check_memory(self.data.image_size, self.fit.batch_size, self.model.head_units, self.model.pooling)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as plain JSON-ready sections."""
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields of some sections changed, e.g. ``replace(fit={"epochs": 3})`` (the
        former sections' names are understood too: ``replace(train={"epochs": 3})``)."""
        changes = _by_section(sections)
        return config_from_dict({name: {**values, **changes.get(name, {})} for name, values in self.to_dict().items()})

    def machine_settings(self) -> dict[str, Any]:
        """The settings that describe the machine, not the run (they may differ on resume): ``{name: value}``."""
        return {spec.name: getattr(getattr(self, OWNER[spec.name]), spec.name)
                for section in SECTIONS.values() for spec in dataclasses.fields(section) if spec.metadata["machine"]}

    def with_machine_settings(self, other: Config) -> Config:
        """This config with ``other``'s machine settings."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in other.machine_settings().items():
            changes.setdefault(OWNER[name], {})[name] = value
        return self.replace(**changes)

    def run_settings(self) -> dict[str, dict[str, Any]]:
        """:meth:`to_dict` without the machine's settings: what must be the same for the same run."""
        machine = self.machine_settings()
        return {name: {key: value for key, value in values.items() if key not in machine}
                for name, values in self.to_dict().items()}


def _by_section(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Options grouped by their section, from sections of this layout or of the former one.

    Raises:
        TlkitError: On an unknown section or option, or a section that is not a table.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        if name in RECORD_KEYS:
            continue
        if name not in SECTIONS and name not in FORMER_SECTIONS:
            raise TlkitError(f"unknown config section {name!r}; expected one of {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise TlkitError(f"config section {name!r} must be a table of options, got {values!r}")
        known = [spec.name for spec in dataclasses.fields(SECTIONS[name])] if name in SECTIONS else []
        known += [key for key in FORMER_SECTIONS.get(name, ()) if key not in known]  # in a stable order
        for key, value in values.items():
            if key not in known:
                raise TlkitError(f"unknown option {key!r} in config section {name!r}; known: {', '.join(known)}")
            grouped.setdefault(OWNER[key], {})[key] = value
    return grouped


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from sections of plain values (this layout or the former one), checking
    every name and value.

    Raises:
        TlkitError: On an unknown section or option, or a value out of range.
    """
    sections = {}
    for name, values in _by_section(raw).items():
        known = {spec.name: spec for spec in dataclasses.fields(SECTIONS[name])}
        sections[name] = SECTIONS[name](**{key: coerce(name, known[key], value) for key, value in values.items()})
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
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows Notepad) is not content
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TlkitError(f"cannot parse config file {path}: {exc}") from None
    except RecursionError:
        raise TlkitError(f"cannot parse config file {path}: it is nested too deeply to be a config") from None
    except OSError as exc:
        raise TlkitError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise TlkitError(f"config file {path} must hold sections {'/'.join(SECTIONS)}")
    return config_from_dict(raw)
