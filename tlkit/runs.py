"""The run folder: its layout, whole-or-nothing writes, and loading a run back.

A run folder holds::

    model.keras     the classifier: raw RGB pixels in, class probabilities out
    classes.json    class names, in label order
    config.json     the config sections (reusable with --config) and a provenance record
    history.json    per-epoch loss/accuracy, train and validation, of every phase
    history.csv     the same, one row per epoch (Keras CSVLogger's columns, with the phase added)
    metrics.json    final and best validation figures, test figures, split sizes, skipped files
    curves.png      training vs validation accuracy and loss per epoch
    checksums.json  size and SHA-256 of each file above: a damaged or modified run is refused

The model is written last (after the checksums), so a folder with a model is a whole run.
While the run trains, ``checkpoint/`` holds its resumable state (see :mod:`tlkit.training.checkpoint`).
Runs of format 2 (config sections ``data``/``augment``/``train``) load as well as this format's.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tlkit import __version__
from tlkit.config import DEFAULT_RUNS_DIR, MULTI_LABEL_THRESHOLD, Config, config_from_dict
from tlkit.errors import TlkitError
from tlkit.hardware import resolve_precision
from tlkit.io import CHECKSUMS, atomic_write, damage, read_json, write_checksums, write_json

log = logging.getLogger("tlkit")

#: Bumped when a run folder's layout changes in a way older code cannot read (3: config sections
#: data/augment/model/fit/runtime).
RUN_FORMAT = 3
#: The formats this tlkit reads.
READABLE_FORMATS = (2, 3)

MODEL_FILE = "model.keras"
#: While a run trains: its checkpoint folder, and the file there that says what it holds.
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
CLASSES_FILE = "classes.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
HISTORY_CSV = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
#: Runs are checked against changes, not only damage: SHA-256.
RUN_CHECKSUM = "sha256"


@dataclass
class Run:
    """A saved run, loaded back.

    Attributes:
        path: The run folder.
        model: The classifier (raw RGB pixels in [0, 255] -> probabilities).
        class_names: Class names in label order.
        config: The configuration it was trained with.
        metrics: The contents of ``metrics.json`` (empty if absent).
        data_dir: The dataset it was trained on (its folder, or its labels CSV).
        multi_label: Each image may have any number of the labels (``class_names``): a sigmoid per label.
    """

    path: Path
    model: Any
    class_names: tuple[str, ...]
    config: Config
    metrics: dict
    data_dir: str
    multi_label: bool = False

    @property
    def thresholds(self) -> list[float]:
        """Multi-label: per label, the probability from which it is predicted (tuned on validation, or 0.5)."""
        recorded = self.metrics.get("thresholds") or {}
        return [float(recorded.get(name, MULTI_LABEL_THRESHOLD)) for name in self.class_names]

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes."""
        return self.config.data.image_size

    @property
    def identity(self) -> str:
        """Which run this is, recorded with its predictions: see :func:`run_identity`."""
        return run_identity(self.path)


def run_identity(path: str | Path) -> str:
    """``<folder name>@<first 12 hex digits of the model's SHA-256>`` (from ``checksums.json``): two trainings
    differ even with the same classes and folder name; a copy of the run under the same name keeps it.

    Raises:
        TlkitError: If ``checksums.json`` is missing or lists no model.
    """
    path = Path(path)
    record = read_json(path / CHECKSUMS)
    try:
        model_digest = record["files"][MODEL_FILE][1]
    except (KeyError, IndexError, TypeError):
        raise TlkitError(f"damaged {path / CHECKSUMS}: it lists no {MODEL_FILE}") from None
    return f"{path.resolve().name}@{model_digest[:12]}"


def new_run_dir(run_dir: str | Path | None, mode: str) -> Path:
    """Create the folder a new run writes into: ``run_dir``, or a fresh timestamped one under ``runs/``.

    Raises:
        TlkitError: If ``run_dir`` already holds files (an earlier run is never overwritten).
    """
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(DEFAULT_RUNS_DIR) / f"{stamp}-{mode}"
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()  # atomic: two runs started in the same second get different folders
                return path
            except FileExistsError:
                continue
    else:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise TlkitError(f"run folder {path} already exists and is not empty; choose another --run-dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_run_model(model, run_dir: Path) -> None:
    """Save the model into a run whose other files are written, making it whole.

    The model is saved under a temporary name, every file's size and SHA-256 go into
    ``checksums.json``, and then the model is renamed into place: last, so a folder with a
    model always has its checksums.
    """

    def write(temporary: str) -> None:
        model.save(temporary)
        write_checksums(run_dir, RUN_CHECKSUM, pending={MODEL_FILE: Path(temporary)})

    atomic_write(run_dir / MODEL_FILE, write)


def latest_run(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run under ``runs_dir`` whose model was saved last.

    Raises:
        TlkitError: If there is none.
    """
    models = list(Path(runs_dir).glob(f"*/{MODEL_FILE}")) if Path(runs_dir).is_dir() else []
    if not models:
        raise TlkitError(f"no runs found under {runs_dir}/; train one first or give --run")
    return max(models, key=lambda path: path.stat().st_mtime_ns).parent


def interrupted_runs(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[Path]:
    """The unfinished runs under ``runs_dir`` (a checkpoint, no model), the one checkpointed last first."""
    states = [path for path in Path(runs_dir).glob(f"*/{CHECKPOINT_DIR}/{STATE_FILE}")
              if not (path.parent.parent / MODEL_FILE).exists()] if Path(runs_dir).is_dir() else []
    return [path.parent.parent for path in sorted(states, key=lambda path: path.stat().st_mtime_ns, reverse=True)]


def best_epoch(phases: list[dict]) -> dict:
    """Where the lowest validation loss of the last phase is (the weights early stopping keeps), numbered
    as everywhere in tlkit: ``best_phase`` (its name), ``best_phase_number`` and ``best_phase_epoch`` (from 1),
    and ``best_epoch``, the same epoch counted over every phase (from 1)."""
    last = phases[-1]["history"]["val_loss"]
    within = last.index(min(last)) + 1
    before = sum(len(phase["history"]["val_loss"]) for phase in phases[:-1])
    return {"best_phase": phases[-1]["name"], "best_phase_number": len(phases), "best_phase_epoch": within,
            "best_epoch": before + within}


def best_epoch_of(metrics: dict) -> dict:
    """:func:`best_epoch`'s numbers from a run's ``metrics.json``, of this format or an older one (where
    ``best_epoch`` counted within the last phase)."""
    if "best_phase_epoch" in metrics:
        return {key: metrics[key] for key in ("best_phase", "best_phase_number", "best_phase_epoch", "best_epoch")}
    epochs = metrics["epochs_run"]
    return {"best_phase": metrics["best_phase"], "best_phase_number": len(epochs),
            "best_phase_epoch": metrics["best_epoch"], "best_epoch": sum(epochs[:-1]) + metrics["best_epoch"]}


def checked_run(path: str | Path) -> tuple[Path, dict]:
    """A run folder and its ``config.json`` record, once it is found whole: a run, of this format,
    every file matching its checksum.

    Raises:
        TlkitError: Saying which of these it is not.
    """
    path = Path(path)
    if not path.is_dir():
        raise TlkitError(f"run folder not found: {path}")
    if not (path / MODEL_FILE).is_file():
        raise TlkitError(f"{path} is not a tlkit run folder (no {MODEL_FILE})")
    record = read_json(path / CONFIG_FILE)
    found = record.get("provenance", {}).get("run_format") if isinstance(record, dict) else None
    if found not in READABLE_FORMATS:
        raise TlkitError(f"run {path} has format {found!r}; this tlkit reads formats "
                         f"{', '.join(map(str, READABLE_FORMATS))}: retrain it")
    problem = damage(path)
    if problem is not None:
        raise TlkitError(f"run {path} is damaged or was modified ({problem}); it is not loaded: retrain it "
                         "or restore the folder from a copy")
    return path, record


def read_history(path: str | Path | None = None) -> list[dict]:
    """The phases of a run's ``history.json`` (``None``: the latest run under ``runs/``), checked whole.

    Raises:
        TlkitError: If the folder is not a whole run of this format.
    """
    path, _ = checked_run(latest_run() if path is None else path)
    return read_json(path / HISTORY_FILE)


def load_run(path: str | Path) -> Run:
    """Load a run folder written by :func:`tlkit.train` (safely: no code runs from the model file).

    Raises:
        TlkitError: If the folder is missing, incomplete, from an incompatible
            version, damaged or modified, or its model cannot be loaded.
    """
    import keras

    import tlkit.model  # noqa: F401  registers VGGPreprocess for deserialisation

    path, record = checked_run(path)
    class_names = _class_names(path, record)
    try:
        model = keras.models.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file; all mean the same here
        if "safe_mode" in str(exc):
            raise TlkitError(f"refused to load {path / MODEL_FILE}: it carries Python code (such as a Lambda "
                             "layer), which tlkit never runs; tlkit did not write this model") from None
        raise TlkitError(f"cannot load {path / MODEL_FILE}: {exc}") from None
    outputs = model.output_shape[-1]
    if max(outputs, 2) != len(class_names):  # a sigmoid unit tells 2 classes apart
        raise TlkitError(f"run {path} is inconsistent: {CLASSES_FILE} names {len(class_names)} classes, but its model "
                         f"tells {max(outputs, 2)} apart; it is not loaded: retrain it or restore the folder from a copy")
    metrics = read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {}
    return Run(path, model, class_names, config_from_dict(record), metrics, record["provenance"]["data_dir"],
               bool(record["provenance"].get("multi_label", False)))


def _class_names(path: Path, record: dict) -> tuple[str, ...]:
    """The class names of a run: its ``classes.json``, checked against its config's record of them.

    Raises:
        TlkitError: If they are not a list of distinct names, or differ from the record.
    """
    names = read_json(path / CLASSES_FILE)
    recorded = record["provenance"].get("class_names", names)
    if (not isinstance(names, list) or not all(isinstance(name, str) for name in names)
            or len(set(names)) != len(names) or names != recorded):
        raise TlkitError(f"run {path} is inconsistent: its {CLASSES_FILE} does not list the classes its "
                         f"{CONFIG_FILE} records ({len(recorded)}); it is not loaded: retrain it or restore the "
                         "folder from a copy")
    return tuple(names)


def resolve_run(run: Run | str | Path | None, load: Callable[[Path], Run] | None = None) -> Run:
    """A loaded run: as given, loaded from its folder by ``load`` (default :func:`load_run`), or (``None``)
    the latest under ``runs/``, named in a log line with its classes."""
    if isinstance(run, Run):
        return run
    path = latest_run() if run is None else Path(run)
    loaded = (load or load_run)(path)
    if run is None:
        log.info("using run %s (classes: %s); give --run to choose", path, ", ".join(loaded.class_names))
    return loaded


def write_run(out: Path, model, config: Config, record: dict, phases: list[dict], metrics: dict) -> None:
    """Write every file of a run; the model last, so a folder with a model is a whole run.

    Args:
        out: The run folder (new or empty).
        model: The trained classifier.
        config: Its settings.
        record: The provenance facts of the caller (data folder, classes, devices...), completed here
            with the format, versions and time.
        phases: One ``{"name", "history"}`` per phase.
        metrics: The run's figures.
    """
    import keras

    from tlkit.plots import plot_curves

    provenance = {
        "run_format": RUN_FORMAT,
        "tlkit_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "precision": resolve_precision(config.runtime.precision).describe(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **record,
    }
    write_json(out / CLASSES_FILE, list(provenance["class_names"]))
    write_json(out / CONFIG_FILE, {**config.to_dict(), "provenance": provenance})
    write_json(out / HISTORY_FILE, phases)
    atomic_write(out / HISTORY_CSV, lambda temporary: write_history_csv(phases, temporary))
    write_json(out / METRICS_FILE, metrics)
    plot_curves(phases, out / CURVES_FILE)
    save_run_model(model, out)


def write_history_csv(phases: list[dict], path: str | Path) -> None:
    """Every epoch of every phase as a CSV row, as Keras's ``CSVLogger`` writes them (``epoch`` counted
    from 0 across phases, then the logs in sorted order), with ``phase`` and ``phase_epoch`` (from 1)."""
    keys = sorted({key for phase in phases for key in phase["history"]})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "phase", "phase_epoch", *keys])
        epoch = 0
        for phase in phases:
            logs = phase["history"]
            for index in range(len(logs["loss"])):
                writer.writerow([epoch, phase["name"], index + 1, *(logs[key][index] if key in logs else ""
                                                                        for key in keys)])
                epoch += 1
