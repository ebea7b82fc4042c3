"""``train(data, config) -> TrainResult``: one path per mode, each ending in a saved run.

- ``features``: extract (or reuse) cached conv-base features, fit the dense head on them,
  then put the head on the base so the saved model takes images.
- ``frozen``: the base frozen, base + head trained end to end on augmented images.
- ``finetune``: a head warm-up (on cached features, frozen with augmentation, or the
  model of an earlier run), then every base layer from ``unfreeze_from`` up trained
  with the head at ``finetune_learning_rate``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from tlkit import __version__, distribute
from tlkit.augment import AugmentedBatches, RandomAffine
from tlkit.backbone import build_base, set_trainable_from, weights_identity
from tlkit.config import Config
from tlkit.data import Batches, DatasetIndex, Split, load_split, require_classes, scan
from tlkit.errors import TlkitError
from tlkit.evaluate import classification_metrics
from tlkit.features import extract
from tlkit.model import BASE_NAME, build_classifier, build_head, compile_model, precision_policy, targets
from tlkit.predict import class_probabilities
from tlkit.plots import plot_curves
from tlkit.files import write_json
from tlkit.resume import (CHECKPOINT_DIR, MACHINE_SETTINGS, STATE_FILE, Checkpoint, EarlyStopping,
                          dataset_fingerprint, find_interrupted_run)
from tlkit.runs import (CLASSES_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE,
                        RUN_FORMAT, load_run, new_run_dir, save_run_model)

log = logging.getLogger("tlkit")

#: Why a run of several processes is not resumed by them all, and what to do instead.
MULTIWORKER_RESUME = ("--resume is not available with --distribute multiworker: continue the run on one machine "
                      "(--resume --distribute mirrored), or start the job again with another --run-dir")
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
        run_dir: The run folder written (``None`` in the processes of a ``multiworker`` job other
            than process 0, which writes it).
        config: The configuration used.
    """

    model: keras.Model
    class_names: tuple[str, ...]
    history: list[dict]
    metrics: dict
    run_dir: Path | None
    config: Config


def train(data: str | Path, config: Config | None = None, run_dir: str | Path | None = None,
          from_run: str | Path | None = None, verbose: int = 1,
          callbacks: list[keras.callbacks.Callback] | None = None, resume: bool = False) -> TrainResult:
    """Train a VGG16 transfer-learning classifier on a folder dataset and save the run.

    Every finished epoch is checkpointed in the run folder; a run that was stopped (killed,
    interrupted, out of memory) continues from its last finished epoch with ``resume=True``.

    Args:
        data: Folder with ``train/`` + ``validation/`` (or ``val/``) [+ ``test/``] of class
            folders, or a plain folder of class folders (split here, stratified and seeded).
        config: Settings; ``config.train.mode`` picks the mode. Defaults if omitted (when
            resuming: the settings the run was started with).
        run_dir: Folder to write the run into (must be new or empty); default ``runs/<time>-<mode>``.
        from_run: For ``finetune``: an earlier run whose model replaces the head warm-up.
        verbose: 0 silent, 1 progress bars.
        callbacks: Extra Keras callbacks, given to every phase's ``fit`` (e.g. TensorBoard).
        resume: Continue the interrupted run in ``run_dir`` (default: the latest under ``runs/``);
            a ``run_dir`` with nothing to resume starts a new run there.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TlkitError: On bad data, options or runs, or a resume whose data or settings changed.
    """
    if resume and config is not None and config.train.distribute == "multiworker":
        raise TlkitError(MULTIWORKER_RESUME)  # before anything is read or removed
    if resume and run_dir is None:
        run_dir = find_interrupted_run()
    if resume and (Path(run_dir) / MODEL_FILE).exists():
        Checkpoint.remove_leftover(run_dir)  # killed after the model was saved, before the checkpoint went
        raise TlkitError(f"run {run_dir} has finished; there is nothing to resume")
    checkpoint = Checkpoint.open(run_dir) if resume else None
    if checkpoint is not None:
        config = config or checkpoint.config
        from_run = from_run if from_run is not None else checkpoint.from_run
    config = config or Config()
    if from_run is not None and config.train.mode != "finetune":
        raise TlkitError("--from is only for --mode finetune")
    if resume and config.train.distribute == "multiworker":
        raise TlkitError(MULTIWORKER_RESUME)
    devices = distribute.resolve(config.train.distribute)  # first: a multiworker process joins its cluster
    made = None  # (folder, whether it existed) of a new run folder, removed again if the job stops here
    try:
        try:
            with devices.scope():  # an earlier run's model trains on every device too
                earlier = load_run(from_run) if from_run is not None else None
            if earlier is not None:
                config = _adopt_earlier_run(earlier, config)
            index = scan(data, config.data)
            require_classes(index)
            if not index.files["val"]:
                raise TlkitError(f"no validation images in {index.root}: set --val-split above 0 or add a "
                                 "validation/ folder")
            if earlier is not None and earlier.class_names != index.class_names:
                raise TlkitError(f"run {earlier.path} was trained on classes {', '.join(earlier.class_names)}, "
                                 f"but {index.root} has {', '.join(index.class_names)}")
            resumed = checkpoint is not None
            weights = weights_identity(config.train.weights)  # a missing weights file fails before the folder is made
            if resumed:
                config = checkpoint.check_matches(data, index, config, from_run)
                out = Path(run_dir)
            elif not devices.chief:  # process 0 writes the run and its checkpoints; the others write nothing
                out, checkpoint = None, Checkpoint.create(None, Path(data), index, config, from_run, weights)
            else:
                if run_dir is not None and (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file():
                    raise TlkitError(f"{run_dir} holds an interrupted run: add --resume to continue it, "
                                     "or choose another --run-dir")
                existed = run_dir is not None and Path(run_dir).is_dir()
                out = new_run_dir(run_dir, config.train.mode)
                made = (out, existed)
                checkpoint = Checkpoint.create(out, Path(data), index, config, from_run, weights)
        except (TlkitError, OSError) as exc:
            distribute.settle(devices, str(exc), None)  # in a job of several processes, all stop with this error
            raise
        # every process is ready, on the same files with the same settings, or all stop here
        distribute.settle(devices, None, {"their dataset files": dataset_fingerprint(index),
                                          "their settings": _settings_digest(config, weights)})
    except BaseException:
        if made is not None:
            _discard(*made)
        raise
    try:
        with precision_policy(config.train.precision), devices.scope():
            result = _train_into(out, index, config, earlier, verbose, list(callbacks or []), checkpoint, devices)
    except BaseException as exc:
        if devices.chief and checkpoint.has_progress():
            where = " --distribute mirrored" if devices.processes > 1 else ""  # see MULTIWORKER_RESUME
            log.warning("training stopped (%s); the finished epochs are kept in %s: continue with "
                        "`tlkit train %s --run-dir %s --resume%s`", type(exc).__name__, out, data, out, where)
        elif devices.chief and not resumed:
            _discard(*made)
        raise
    checkpoint.remove()
    return result


def _settings_digest(config: Config, weights: str) -> str:
    """SHA-256 of the settings that must be the same in every process of a job: not the machine's own,
    and the weights by their identity (``weights``), wherever their file is."""
    settings = config.to_dict()
    for section, names in MACHINE_SETTINGS.items():
        for name in names:
            del settings[section][name]
    settings["train"]["weights"] = weights
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _discard(out: Path, keep_folder: bool) -> None:
    """Remove a failed run's files: its folder is whole or absent (an empty one given by the user stays, empty)."""
    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for leftover in out.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _train_into(out: Path, index: DatasetIndex, config: Config, earlier, verbose: int,
                callbacks: list, checkpoint: Checkpoint, devices: distribute.Devices) -> TrainResult:
    keras.utils.set_random_seed(config.data.seed)
    mode, settings = config.train.mode, config.train
    classes = len(index.class_names)
    phases: list[dict] = []
    skipped: dict[str, str] = dict(index.skipped)  # symlink loops and other entries the scan rejected
    splits: dict[str, Split] = {}
    if mode == "features" or (mode == "finetune" and earlier is None and settings.warmup_mode == "features"):
        epochs = settings.epochs if mode == "features" else settings.warmup_epochs
        features = extract(index, config, verbose)
        name = "features" if mode == "features" else "warmup (features)"
        head, history = _fit_head_on_features(features, config, epochs, verbose, callbacks, checkpoint, name,
                                              devices)
        phases.append({"name": name, "history": history})
        model = build_classifier(build_base(settings.weights, config.data.image_size, config.data.seed), head)
        skipped.update(features.skipped)
        if mode == "features":  # the head on cached features scores exactly as the whole model, faster
            scored = [name for name in ("val", "test") if name in index.files]
            score = _scorer(devices.localized(head), {name: features.split(name)[:2] for name in scored},
                            index.class_names, settings.batch_size, devices)
    if mode in ("frozen", "finetune"):
        splits = {name: load_split(index, name, config.data, progress=bool(verbose)) for name in index.files}
        for split in splits.values():
            skipped.update(split.skipped)
    if mode == "frozen" or (mode == "finetune" and earlier is None and settings.warmup_mode == "frozen"):
        base = build_base(settings.weights, config.data.image_size, config.data.seed)
        set_trainable_from(base, None)
        keras.utils.set_random_seed(config.data.seed)
        model = build_classifier(base, build_head(base.output_shape[1:], classes, settings, config.data.seed))
        epochs = settings.epochs if mode == "frozen" else settings.warmup_epochs
        name = "frozen" if mode == "frozen" else "warmup (frozen)"
        history = _fit_augmented(model, splits, config, epochs, settings.learning_rate, classes, verbose, callbacks,
                                 checkpoint, len(phases), name, devices)
        phases.append({"name": name, "history": history})
    if earlier is not None:
        model = earlier.model
    if mode == "finetune":
        set_trainable_from(model.get_layer(BASE_NAME), settings.unfreeze_from)
        history = _fit_augmented(model, splits, config, settings.epochs, settings.finetune_learning_rate, classes,
                                 verbose, callbacks, checkpoint, len(phases), "finetune", devices)
        phases.append({"name": "finetune", "history": history})
    model = devices.localized(model)  # trained; from here on, predictions come from this process's devices
    if mode != "features":
        score = _scorer(model, {name: (split.images, split.labels) for name, split in splits.items()},
                        index.class_names, settings.batch_size, devices)
    metrics = _final_metrics(score, index, phases, skipped, restored_best=settings.patience > 0)
    trained_on = np.array([label for path, label in zip(index.files["train"], index.labels["train"])
                           if str(path) not in skipped])  # the readable images, as the fits weighed them
    weights = class_weights(trained_on, classes, settings.class_weight)
    metrics["class_weight"] = None if weights is None else dict(zip(index.class_names, map(float, weights)))
    if not devices.chief:
        log.info("process %d of %d done (val_accuracy %.4f); process 0 writes the run", devices.process,
                 devices.processes, metrics["val_accuracy"])
        return TrainResult(model, index.class_names, phases, metrics, None, config)
    _write_run(out, model, index, config, phases, metrics, earlier, devices)
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


def _fit_head_on_features(features, config: Config, epochs: int, verbose: int, callbacks: list,
                          checkpoint: Checkpoint, name: str, devices: distribute.Devices):
    """Fit a fresh head on cached features; returns ``(head, history)``."""
    x_train, y_train, _ = features.split("train")
    x_val, y_val, _ = features.split("val")
    classes = len(features.index.class_names)
    keras.utils.set_random_seed(config.data.seed)  # same seed, same head, whether or not features were cached
    head = build_head(x_train.shape[1:], classes, config.train, config.data.seed)
    compile_model(head, classes, config.train.optimizer, config.train.learning_rate,
                  weighted_accuracy=devices.count > 1)

    weights = row_weights(y_train, classes, config.train.class_weight)

    def batches(epoch: int) -> Batches:
        return Batches(x_train, targets(y_train, classes), config.train.batch_size, shuffle=True,
                       seed=config.data.seed, epoch=epoch, weights=weights, devices=devices)

    validation = Batches(x_val, targets(y_val, classes), config.train.batch_size, devices=devices, whole_epoch=True)
    history = _fit_phase(head, head, batches, validation, epochs, config, verbose, callbacks, checkpoint, 0, name)
    return head, history


def _fit_augmented(model: keras.Model, splits: dict[str, Split], config: Config, epochs: int,
                   learning_rate: float, classes: int, verbose: int, callbacks: list, checkpoint: Checkpoint,
                   phase: int, name: str, devices: distribute.Devices) -> dict:
    """Fit the whole classifier on augmented training images, validating on plain ones.

    With ``augment_on="device"`` a :class:`RandomAffine` layer in front of the classifier
    augments each batch inside the training step (the saved classifier never holds it);
    with ``"cpu"`` ImageDataGenerator's ``apply_transform`` augments batches on the host.
    """
    train, val = splits["train"], splits["val"]
    labels = targets(train.labels, classes)
    weights = row_weights(train.labels, classes, config.train.class_weight)
    seed = config.data.seed + phase  # each phase its own order and augmentations
    if config.train.augment_on == "device":
        inputs = keras.Input(shape=model.input_shape[1:], name="image")
        augment = RandomAffine.from_augment_config(config.augment, seed=seed)
        trainer = keras.Model(inputs, model(augment(inputs)), name="trainer")

        def batches(epoch: int) -> Batches:  # reading a batch is a memory copy: threads read ahead
            return Batches(train.images, labels, config.train.batch_size, shuffle=True, seed=seed, epoch=epoch,
                           weights=weights, devices=devices, workers=min(PREFETCH_THREADS, config.data.workers))
    else:
        trainer = model

        def batches(epoch: int) -> Batches:
            return AugmentedBatches(train.images, labels, config.train.batch_size, config.augment, seed=seed,
                                    epoch=epoch, weights=weights, devices=devices)
    compile_model(trainer, classes, config.train.optimizer, learning_rate, weighted_accuracy=devices.count > 1)
    validation = Batches(val.images, targets(val.labels, classes), config.train.batch_size, devices=devices,
                         whole_epoch=True)
    return _fit_phase(trainer, model, batches, validation, epochs, config, verbose, callbacks, checkpoint, phase,
                      name)


def class_weights(labels: np.ndarray, classes: int, mode: str) -> np.ndarray | None:
    """Per class, the weight of its images in the loss: ``auto`` gives ``images / (classes * images of
    the class)`` (every class then weighs the same in total), ``none`` gives ``None`` (all weigh 1)."""
    if mode == "none":
        return None
    return len(labels) / (classes * np.bincount(labels, minlength=classes))


def row_weights(labels: np.ndarray, classes: int, mode: str) -> np.ndarray | None:
    """The sample weight of each training image under :func:`class_weights`."""
    weights = class_weights(labels, classes, mode)
    return None if weights is None else weights[labels].astype("float32")


def _fit_phase(trainer: keras.Model, subject: keras.Model, batches, validation, epochs: int, config: Config,
               verbose: int, callbacks: list, checkpoint: Checkpoint, phase: int, name: str) -> dict:
    """Fit one phase (``trainer`` compiled; ``subject`` the model the phase leaves), checkpointing every epoch.

    A phase that finished before an interruption is not fitted again: ``subject`` gets the
    weights it ended with. A phase that was under way continues after its last finished epoch,
    with the optimizer's and early stopping's state as they were.

    Args:
        batches: ``epoch -> training batches`` starting at that epoch.

    Returns:
        The phase's history: Keras's per-epoch logs, all epochs.
    """
    finished = checkpoint.finished_phase(phase, subject)
    if finished is not None:
        return finished["history"]
    progress = checkpoint.resume_phase(phase, trainer) or {"epochs_done": 0, "history": None, "stopped": False,
                                                            "early_stopping": None}
    done = progress["epochs_done"]
    stopping = EarlyStopping(config.train.patience, progress["early_stopping"]) if config.train.patience else None
    saver = checkpoint.saver(phase, trainer, stopping, progress["history"])
    # shuffle=False: Batches shuffles each epoch from (seed, epoch); Keras would reorder batches with the
    # global random state, which a resumed process does not share
    trainer.fit(batches(done), epochs=done if progress["stopped"] else epochs, initial_epoch=done, shuffle=False,
                validation_data=validation, callbacks=[*([stopping] if stopping else []), *callbacks, saver],
                verbose=_keras_verbose(verbose))
    checkpoint.finish_phase(phase, name, saver.history, subject)
    return saver.history


def _scorer(model: keras.Model, data: dict, class_names: tuple[str, ...], batch_size: int,
            devices: distribute.Devices):
    """A function ``split name -> (loss, accuracy)`` of ``model`` on ``data[name] = (inputs, labels)``.

    Scored as ``tlkit evaluate`` scores, so the run's figures and a later evaluation agree.
    """

    def score(name: str) -> tuple[float, float]:
        inputs, labels = data[name]
        probabilities = class_probabilities(model, inputs, batch_size, devices)
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
               metrics: dict, earlier, devices: distribute.Devices) -> None:
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
        "distribution": devices.describe(),
    }
    write_json(out / CLASSES_FILE, list(index.class_names))
    write_json(out / CONFIG_FILE, {**config.to_dict(), "provenance": provenance})
    write_json(out / HISTORY_FILE, phases)
    write_json(out / METRICS_FILE, metrics)
    plot_curves(phases, out / CURVES_FILE)
    save_run_model(model, out)


def _keras_verbose(verbose: int):
    return "auto" if verbose else 0
