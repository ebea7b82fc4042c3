"""``train(data, config) -> TrainResult``: one path per mode, each ending in a saved run.

- ``features``: extract (or reuse) cached conv-base features, fit the dense head on them,
  then put the head on the base so the saved model takes images.
- ``frozen``: the base frozen, base + head trained end to end on augmented images.
- ``finetune``: a head warm-up (on cached features, frozen with augmentation, or the
  model of an earlier run), then every base layer from ``unfreeze_from`` up trained
  with the head at ``finetune_learning_rate``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from tlkit import __version__
from tlkit.augment import AugmentedBatches, RandomAffine
from tlkit.backbone import build_base, set_trainable_from
from tlkit.config import Config
from tlkit.data import Batches, DatasetIndex, Split, load_split, scan
from tlkit.errors import TlkitError
from tlkit.evaluate import classification_metrics
from tlkit.features import extract
from tlkit.model import BASE_NAME, build_classifier, build_head, compile_model, precision_policy, targets
from tlkit.predict import class_probabilities
from tlkit.plots import plot_curves
from tlkit.runs import (CLASSES_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE,
                        RUN_FORMAT, load_run, new_run_dir, save_model, write_json)

log = logging.getLogger("tlkit")

#: Threads reading training batches ahead of the device (augmentation on the device only: the CPU
#: path's ImageDataGenerator draws from one random stream, so its batches are made one at a time).
PREFETCH_THREADS = 4


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained classifier (raw RGB pixels in [0, 255] -> probabilities).
        class_names: Class names in label order.
        history: One ``{"name", "history"}`` entry per phase, with Keras's per-epoch logs.
        metrics: The contents of the run's ``metrics.json``.
        run_dir: The run folder written.
        config: The configuration used.
    """

    model: keras.Model
    class_names: tuple[str, ...]
    history: list[dict]
    metrics: dict
    run_dir: Path
    config: Config


def train(data: str | Path, config: Config | None = None, run_dir: str | Path | None = None,
          from_run: str | Path | None = None, verbose: int = 1,
          callbacks: list[keras.callbacks.Callback] | None = None) -> TrainResult:
    """Train a VGG16 transfer-learning classifier on a folder dataset and save the run.

    Args:
        data: Folder with ``train/`` + ``validation/`` (or ``val/``) [+ ``test/``] of class
            folders, or a plain folder of class folders (split here, stratified and seeded).
        config: Settings; ``config.train.mode`` picks the mode. Defaults if omitted.
        run_dir: Folder to write the run into (must be new or empty); default ``runs/<time>-<mode>``.
        from_run: For ``finetune``: an earlier run whose model replaces the head warm-up.
        verbose: 0 silent, 1 progress bars.
        callbacks: Extra Keras callbacks, given to every phase's ``fit`` (e.g. TensorBoard).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TlkitError: On bad data, options or runs.
    """
    config = config or Config()
    if from_run is not None and config.train.mode != "finetune":
        raise TlkitError("--from is only for --mode finetune")
    earlier = load_run(from_run) if from_run is not None else None
    if earlier is not None:
        config = _adopt_earlier_run(earlier, config)
    index = scan(data, config.data)
    if len(index.class_names) < 2:
        raise TlkitError(f"{index.root} has {len(index.class_names)} class folder(s); a classifier needs at least 2")
    if not index.files["val"]:
        raise TlkitError(f"no validation images in {index.root}: set --val-split above 0 or add a validation/ folder")
    if earlier is not None and earlier.class_names != index.class_names:
        raise TlkitError(f"run {earlier.path} was trained on classes {', '.join(earlier.class_names)}, "
                         f"but {index.root} has {', '.join(index.class_names)}")
    existed = run_dir is not None and Path(run_dir).is_dir()
    out = new_run_dir(run_dir, config.train.mode)
    try:
        with precision_policy(config.train.precision):
            return _train_into(out, index, config, earlier, verbose, list(callbacks or []))
    except BaseException:  # a run folder is whole or absent (an empty one given by the user stays, empty)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        for leftover in out.iterdir() if existed else ():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        raise


def _train_into(out: Path, index: DatasetIndex, config: Config, earlier, verbose: int,
                callbacks: list) -> TrainResult:
    keras.utils.set_random_seed(config.data.seed)
    mode, settings = config.train.mode, config.train
    classes = len(index.class_names)
    phases: list[dict] = []
    skipped: dict[str, str] = {}
    splits: dict[str, Split] = {}
    if mode == "features" or (mode == "finetune" and earlier is None and settings.warmup_mode == "features"):
        epochs = settings.epochs if mode == "features" else settings.warmup_epochs
        features = extract(index, config, verbose)
        head, history = _fit_head_on_features(features, config, epochs, verbose, callbacks)
        phases.append({"name": "features" if mode == "features" else "warmup (features)", "history": history})
        model = build_classifier(build_base(settings.weights, config.data.image_size, config.data.seed), head)
        skipped = features.skipped
        if mode == "features":  # the head on cached features scores exactly as the whole model, faster
            scored = [name for name in ("val", "test") if name in index.files]
            score = _scorer(head, {name: features.split(name)[:2] for name in scored}, index.class_names,
                            settings.batch_size)
    if mode in ("frozen", "finetune"):
        splits = {name: load_split(index, name, config.data, progress=bool(verbose)) for name in index.files}
        for split in splits.values():
            skipped.update(split.skipped)
    if mode == "frozen" or (mode == "finetune" and earlier is None and settings.warmup_mode == "frozen"):
        base = build_base(settings.weights, config.data.image_size, config.data.seed)
        set_trainable_from(base, None)
        keras.utils.set_random_seed(config.data.seed)
        model = build_classifier(base, build_head(base.output_shape[1:], classes, settings))
        epochs = settings.epochs if mode == "frozen" else settings.warmup_epochs
        history = _fit_augmented(model, splits, config, epochs, settings.learning_rate, classes, verbose, callbacks,
                                 phase=len(phases))
        phases.append({"name": "frozen" if mode == "frozen" else "warmup (frozen)", "history": history})
    if earlier is not None:
        model = earlier.model
    if mode == "finetune":
        set_trainable_from(model.get_layer(BASE_NAME), settings.unfreeze_from)
        history = _fit_augmented(model, splits, config, settings.epochs, settings.finetune_learning_rate, classes,
                                 verbose, callbacks, phase=len(phases))
        phases.append({"name": "finetune", "history": history})
    if mode != "features":
        score = _scorer(model, {name: (split.images, split.labels) for name, split in splits.items()},
                        index.class_names, settings.batch_size)
    metrics = _final_metrics(score, index, phases, skipped, restored_best=settings.patience > 0)
    _write_run(out, model, index, config, phases, metrics, earlier)
    log.info("run saved to %s (val_accuracy %.4f)", out, metrics["val_accuracy"])
    return TrainResult(model, index.class_names, phases, metrics, out, config)


#: Settings an earlier run (``--from``) fixes: its model's shape, and its split, so that images it
#: trained on never end up in this run's validation or test split.
ADOPTED = {"data": ("image_size", "seed", "val_split", "test_split"), "train": ("pooling", "head_units", "dropout")}


def _adopt_earlier_run(earlier, config: Config) -> Config:
    """Take over the settings an earlier run fixes."""
    changes: dict[str, dict] = {}
    for section, names in ADOPTED.items():
        for name in names:
            theirs, ours = getattr(getattr(earlier.config, section), name), getattr(getattr(config, section), name)
            if theirs != ours:
                log.info("using %s = %s of %s", name, theirs, earlier.path)
                changes.setdefault(section, {})[name] = theirs
    return config.replace(**changes)


def _callbacks(config: Config, extra: list) -> list:
    if config.train.patience == 0:
        return extra
    return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.train.patience,
                                          restore_best_weights=True), *extra]


def _fit_head_on_features(features, config: Config, epochs: int, verbose: int, callbacks: list):
    """Fit a fresh head on cached features; returns ``(head, history)``."""
    x_train, y_train, _ = features.split("train")
    x_val, y_val, _ = features.split("val")
    classes = len(features.index.class_names)
    keras.utils.set_random_seed(config.data.seed)  # same seed, same head, whether or not features were cached
    head = build_head(x_train.shape[1:], classes, config.train)
    compile_model(head, classes, config.train.optimizer, config.train.learning_rate)
    fitted = head.fit(x_train, targets(y_train, classes), batch_size=config.train.batch_size, epochs=epochs,
                      validation_data=(x_val, targets(y_val, classes)), shuffle=True,
                      callbacks=_callbacks(config, callbacks), verbose=_keras_verbose(verbose))
    return head, _plain(fitted.history)


def _fit_augmented(model: keras.Model, splits: dict[str, Split], config: Config, epochs: int,
                   learning_rate: float, classes: int, verbose: int, callbacks: list, phase: int) -> dict:
    """Fit the whole classifier on augmented training images, validating on plain ones.

    With ``augment_on="device"`` a :class:`RandomAffine` layer in front of the classifier
    augments each batch inside the training step (the saved classifier never holds it);
    with ``"cpu"`` ImageDataGenerator's ``apply_transform`` augments batches on the host.
    """
    train, val = splits["train"], splits["val"]
    labels = targets(train.labels, classes)
    seed = config.data.seed + phase  # each phase its own order and augmentations
    if config.train.augment_on == "device":
        inputs = keras.Input(shape=model.input_shape[1:], name="image")
        augment = RandomAffine.from_augment_config(config.augment, seed=seed)
        trainer = keras.Model(inputs, model(augment(inputs)), name="trainer")
        # Reading a batch is a memory copy: a few threads read ahead so the device never waits.
        batches = Batches(train.images, labels, config.train.batch_size, shuffle=True, seed=seed,
                          workers=min(PREFETCH_THREADS, config.data.workers))
    else:
        trainer = model
        batches = AugmentedBatches(train.images, labels, config.train.batch_size, config.augment, seed=seed)
    compile_model(trainer, classes, config.train.optimizer, learning_rate)
    validation = Batches(val.images, targets(val.labels, classes), config.train.batch_size)
    fitted = trainer.fit(batches, epochs=epochs, validation_data=validation, callbacks=_callbacks(config, callbacks),
                         verbose=_keras_verbose(verbose))
    return _plain(fitted.history)


def _scorer(model: keras.Model, data: dict, class_names: tuple[str, ...], batch_size: int):
    """A function ``split name -> (loss, accuracy)`` of ``model`` on ``data[name] = (inputs, labels)``.

    Scored as ``tlkit evaluate`` scores, so the run's figures and a later evaluation agree.
    """

    def score(name: str) -> tuple[float, float]:
        inputs, labels = data[name]
        probabilities = class_probabilities(model, Batches(inputs, labels, batch_size))
        report = classification_metrics(probabilities, labels, class_names)
        return report["loss"], report["accuracy"]

    return score


def _final_metrics(score, index: DatasetIndex, phases: list[dict], skipped: dict[str, str],
                   restored_best: bool) -> dict:
    """Validation (and test) loss/accuracy of the kept weights, best epoch, split sizes, skipped files."""
    metrics: dict = {}
    for name in ("val", "test"):
        if name in index.files:
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = score(name)
    last = phases[-1]["history"]
    best = int(np.argmin(last["val_loss"]))
    metrics.update({
        "kept_weights": "best epoch" if restored_best else "last epoch",
        "best_phase": phases[-1]["name"],
        "best_epoch": best + 1,
        "best_val_loss": last["val_loss"][best],
        "best_val_accuracy": last["val_accuracy"][best],
        "max_val_accuracy": max(last["val_accuracy"]),
        "epochs_run": [len(phase["history"]["loss"]) for phase in phases],
        "images": {name: len(files) - sum(str(p) in skipped for p in files) for name, files in index.files.items()},
        "skipped": skipped,
    })
    return metrics


def _write_run(out: Path, model: keras.Model, index: DatasetIndex, config: Config, phases: list[dict],
               metrics: dict, earlier) -> None:
    """Write every file of the run; the model last, so a folder with a model is a whole run."""
    provenance = {
        "run_format": RUN_FORMAT,
        "tlkit_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_dir": str(index.root.resolve()),
        "presplit": index.presplit,
        "class_names": list(index.class_names),
        "from_run": str(earlier.path) if earlier is not None else None,
    }
    write_json(out / CLASSES_FILE, list(index.class_names))
    write_json(out / CONFIG_FILE, {**config.to_dict(), "provenance": provenance})
    write_json(out / HISTORY_FILE, phases)
    write_json(out / METRICS_FILE, metrics)
    plot_curves(phases, out / CURVES_FILE)
    save_model(model, out / MODEL_FILE)


def _plain(history: dict) -> dict:
    """Keras history values as plain floats, for JSON."""
    return {key: [float(v) for v in values] for key, values in history.items()}


def _keras_verbose(verbose: int):
    return "auto" if verbose else 0
