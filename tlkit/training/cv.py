"""Cross-validation of the dense head on cached features: stratified K-fold, optionally repeated.

The features are extracted (or reused from the cache) once; every fold then only trains a small
head on them, so K-fold, even repeated with new shuffles, costs one extraction and K (times the
repeats) head trainings, each as quick as a ``features`` run's. The spread of the fold scores says
how far one train/validation split's figure can be trusted, and the validation curve averaged over
all folds says how many epochs to train (Deep Learning with Python, 3.6.4; iterated K-fold with
shuffling: 4.2.1).

:func:`pool_features` (scan, extract, pool) and :func:`score_folds` (the K-fold of one head) are its two
halves: ``tlkit tune`` pools once and scores a head of other settings per trial.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlkit.backends.devices import resolve
from tlkit.config import CV_FOLDS, CV_REPEATS, Config
from tlkit.data.batches import Batches
from tlkit.data.scan import require_classes, scan
from tlkit.errors import TlkitError
from tlkit.features import extract, one_machine
from tlkit.inference.evaluate import classification_metrics
from tlkit.intervals import CI_SUFFIX, pooled_interval
from tlkit.model import build_head, class_probabilities, compile_model, precision_policy, targets
from tlkit.training.callbacks import rate_callback
from tlkit.training.phases import row_weights

log = logging.getLogger("tlkit")

#: The splits whose images are pooled and dealt into folds; a test split stays held out.
POOLED_SPLITS = ("train", "val")


@dataclass(frozen=True)
class CVResult:
    """What :func:`cross_validate` returns. Repeats and folds are numbered from 0, epochs from 1.

    Attributes:
        class_names: Class names in label order.
        folds: Folds per repeat (K).
        repeats: Times the folds were dealt (P).
        images: Images dealt into folds: the readable ones of the train and validation splits.
        fold_results: One entry per (repeat, fold), repeat by repeat: ``{"repeat", "fold",
            "train_images", "val_images", "val_accuracy", "val_loss", "history"}``, the figures
            being the held-out fold's after the last epoch, and ``history`` Keras's per-epoch logs.
        repeat_accuracy: Per repeat, the mean validation accuracy of its folds.
        mean_accuracy: Mean validation accuracy of all K * P folds.
        std_accuracy: Population standard deviation (``ddof=0``) of those K * P accuracies. Folds
            share training images, so it describes the spread of the scores; it is not a
            standard error of the mean.
        mean_loss: Mean validation loss of all K * P folds.
        epoch_val_accuracy: Per epoch, the validation accuracy averaged over all folds.
        epoch_val_loss: Per epoch, the validation loss averaged over all folds.
        best_epoch: The epoch (from 1) of the lowest ``epoch_val_loss``: an epoch count to train for.
        skipped: ``{path: reason}`` for the files left out: entries the scan rejected, and
            images of the train and validation splits that could not be decoded.
    """

    class_names: tuple[str, ...]
    folds: int
    repeats: int
    images: int
    fold_results: list[dict]
    repeat_accuracy: list[float]
    mean_accuracy: float
    std_accuracy: float
    mean_loss: float
    epoch_val_accuracy: list[float]
    epoch_val_loss: list[float]
    best_epoch: int
    skipped: dict[str, str]

    @property
    def accuracy_ci95(self) -> tuple[float, float]:
        """The 95% Wilson interval of the pooled held-out accuracy (see :func:`tlkit.intervals.pooled_interval`)."""
        return pooled_interval(self.fold_results, self.images)

    def to_dict(self) -> dict:
        """The result as plain JSON-ready values (with ``mean_accuracy_ci95``: :attr:`accuracy_ci95`)."""
        return {**dataclasses.asdict(self), "class_names": list(self.class_names),
                "mean_accuracy" + CI_SUFFIX: list(self.accuracy_ci95)}


def cross_validate(data: str | Path, config: Config | None = None, folds: int = CV_FOLDS, repeats: int = CV_REPEATS,
                   verbose: int = 0) -> CVResult:
    """Stratified K-fold cross-validation of the dense head on cached features, repeated ``repeats`` times.

    The readable images of the train and validation splits are pooled (a test split stays held
    out, unseen); each repeat deals them into ``folds`` folds with :func:`stratified_folds`, and
    each fold in turn is scored by a fresh head trained on the other folds. The head, its
    optimisation and the features are those of ``features`` mode, from ``config.fit`` and ``config.model`` whatever
    its ``mode``: ``epochs``, ``batch_size``, ``optimizer``, ``learning_rate`` and ``lr_schedule`` (a ``plateau``
    schedule reads the held-out fold's loss, as a run's reads its validation loss), ``pooling``,
    ``head_units``, ``dropout``, ``class_weight`` (computed on each fold's training images),
    ``weights`` and ``precision``. Every fold trains for exactly ``epochs`` epochs, without early
    stopping: were the held-out fold to choose the epoch, its score would be chosen on the data
    it claims to be unseen. Choose the epoch count with ``best_epoch`` instead.

    Args:
        data: Folder with ``train/`` + ``validation/`` (or ``val/``) [+ ``test/``] of class folders,
            or a plain folder of class folders (split as :func:`tlkit.data.scan` does: only its
            ``test_split`` is then left out).
        config: Settings; defaults if omitted. ``config.data.seed`` seeds the folds and the heads.
        folds: K, at least 2; every class needs at least K images.
        repeats: P, at least 1: the folds are dealt P times, shuffled anew each time.
        verbose: 0 silent, 1 progress bars while extracting features. Each fold's score is logged.

    Returns:
        A :class:`CVResult`.

    Raises:
        TlkitError: On bad data or options, fewer than 2 classes, or a class with fewer images than folds.
    """
    check_counts(folds, repeats)
    config = config or Config()
    pool = pool_features(data, config, folds, verbose)
    results = score_folds(pool, config, folds, repeats)
    accuracy = np.array([result["val_accuracy"] for result in results])
    curves = {name: np.mean([result["history"][name] for result in results], axis=0)
              for name in ("val_accuracy", "val_loss")}
    return CVResult(
        class_names=pool.class_names, folds=folds, repeats=repeats, images=len(pool.labels), fold_results=results,
        repeat_accuracy=accuracy.reshape(repeats, folds).mean(axis=1).tolist(),
        mean_accuracy=float(accuracy.mean()), std_accuracy=float(accuracy.std()),
        mean_loss=float(np.mean([result["val_loss"] for result in results])),
        epoch_val_accuracy=curves["val_accuracy"].tolist(), epoch_val_loss=curves["val_loss"].tolist(),
        best_epoch=int(np.argmin(curves["val_loss"])) + 1, skipped=pool.skipped)


def check_counts(folds: int, repeats: int) -> None:
    """Refuse (:class:`TlkitError`) fewer than 2 folds or 1 repeat."""
    if folds < 2:
        raise TlkitError(f"invalid folds: {folds!r}; expected an integer >= 2")
    if repeats < 1:
        raise TlkitError(f"invalid repeats: {repeats!r}; expected an integer >= 1")


@dataclass(frozen=True)
class FoldPool:
    """The features of the train and validation images, pooled to be dealt into folds (see :func:`pool_features`).

    Attributes:
        x: One feature row per image.
        labels: The label of each row.
        class_names: Class names in label order.
        skipped: ``{path: reason}`` for the files left out (as :attr:`CVResult.skipped`).
        features: The feature-cache folder read; its name is a digest of the images and of how their
            features were extracted (see :func:`tlkit.features.manifest`).
        copies: The features of the augmented copies of those images, ``(copies, images, ...)``: each fold's
            head trains on the copies of its training images too, as ``features`` mode does.
    """

    x: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: dict[str, str]
    features: Path
    copies: np.ndarray


def pool_features(data: str | Path, config: Config, folds: int, verbose: int = 0) -> FoldPool:
    """Scan ``data``, extract (or reuse) its features, and pool its train and validation images for ``folds``
    folds: every head scored on them afterwards (:func:`score_folds`) reuses them, with nothing scanned again.

    Raises:
        TlkitError: On bad data or options, fewer than 2 classes, or a class with fewer images than folds.
    """
    config.check_memory()
    devices = resolve(one_machine(config.runtime.distribute))
    index = scan(data, config.data)
    require_classes(index)
    if index.multi_label:
        raise TlkitError(f"{data} is multi-label data: its folds would be stratified by one class per image; "
                         "tlkit cv and tlkit tune are for single-label data")
    features = extract(index, config, verbose, devices)
    pooled = [features.split(name) for name in POOLED_SPLITS]
    labels = np.concatenate([part[1] for part in pooled])
    counts = np.bincount(labels, minlength=len(index.class_names))
    few = [f"class {name!r} has {count} image(s)" for name, count in zip(index.class_names, counts) if count < folds]
    if few:
        raise TlkitError(f"too few images for {folds} folds: {', '.join(few)} (train and validation pooled); "
                         "every fold needs an image of each class: use fewer folds or add images")
    test_files = {str(path) for path in index.files.get("test", [])}
    return FoldPool(x=np.concatenate([part[0] for part in pooled]), labels=labels, class_names=index.class_names,
                    skipped={path: reason for path, reason in features.skipped.items() if path not in test_files},
                    features=features.path,
                    copies=np.concatenate([features.augmented(name) for name in POOLED_SPLITS], axis=1))


def score_folds(pool: FoldPool, config: Config, folds: int, repeats: int = 1, level: int = logging.INFO) -> list[dict]:
    """Score the head of ``config`` by stratified K-fold on ``pool``: one entry per (repeat, fold), as
    :attr:`CVResult.fold_results`, each fold's scores logged at ``level``. The folds and each fold's head
    draw from ``config.data.seed`` alone: heads of other settings scored on the same pool meet the same folds
    and the same seeds."""
    results = []
    with precision_policy(config.runtime.precision):
        head = _FoldHead(pool.x.shape[1:], len(pool.class_names), config)
        for repeat in range(repeats):
            assignment = stratified_folds(pool.labels, folds, config.data.seed, repeat)
            for fold in range(folds):
                scored = assignment == fold
                seed = (config.data.seed + repeat * folds + fold) % 2**32  # each fold its own head and order
                trained_on = np.concatenate([pool.x[~scored], *pool.copies[:, ~scored]])
                result = _fit_fold(head, (trained_on, np.tile(pool.labels[~scored], len(pool.copies) + 1)),
                                   (pool.x[scored], pool.labels[scored]), pool.class_names, config, seed)
                log.log(level, "repeat %d/%d, fold %d/%d: val_accuracy %.4f, val_loss %.4f", repeat + 1, repeats,
                        fold + 1, folds, result["val_accuracy"], result["val_loss"])
                results.append({"repeat": repeat, "fold": fold, **result, "train_images": int((~scored).sum())})
    return results


def stratified_folds(labels: np.ndarray, folds: int, seed: int, repeat: int = 0) -> np.ndarray:
    """The fold (``0 .. folds - 1``) of each image: per class, its images shuffled, then dealt round-robin.

    The dealing goes on from class to class where the last one stopped, so each class's count in
    any two folds differs by at most 1, and so do the folds' sizes. The shuffles draw from
    ``(seed, repeat)``: the same seed and repeat deal the same folds, another repeat new ones.
    """
    rng = np.random.default_rng([seed, repeat])
    assignment = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return assignment


class _FoldHead:
    """One compiled head for every fold, given a fresh head's initial state (weights, dropout stream) and a
    fresh optimizer's before each fold: it trains as a new head would, while Keras's training, validation
    and prediction functions are traced once, not once per fold (a new model per fold made TensorFlow
    retrace them every fold, and warn about it)."""

    def __init__(self, feature_shape: tuple[int, ...], classes: int, config: Config) -> None:
        self.feature_shape, self.classes, self.config = feature_shape, classes, config
        self.model = build_head(feature_shape, classes, config.model, config.data.seed)
        compile_model(self.model, classes, config.fit.optimizer, config.fit.learning_rate,
                      label_smoothing=config.fit.label_smoothing)
        self.model.optimizer.build(self.model.trainable_variables)
        self.fresh_optimizer = [keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables]

    def reset(self, seed: int) -> keras.Model:
        """The head, in the state a new head built from ``seed`` (and its new optimizer) would have."""
        keras.utils.set_random_seed(seed)
        fresh = build_head(self.feature_shape, self.classes, self.config.model, seed)
        for variable, value in zip(self.model.variables, fresh.variables, strict=True):
            variable.assign(value)
        for variable, value in zip(self.model.optimizer.variables, self.fresh_optimizer, strict=True):
            variable.assign(value)
        return self.model


def out_of_fold_probabilities(x: np.ndarray, labels: np.ndarray, classes: int, config: Config,
                              folds: int = CV_FOLDS) -> np.ndarray:
    """``(images, classes)``: each image's class probabilities from a head trained, as :func:`score_folds`
    trains one, on the other ``folds - 1`` stratified folds (one that never saw it), for ``config.fit.epochs``
    epochs. ``tlkit audit`` reads label errors from them."""
    probabilities = np.zeros((len(labels), classes))
    assignment = stratified_folds(labels, folds, config.data.seed)
    with precision_policy(config.runtime.precision):
        head = _FoldHead(x.shape[1:], classes, config)
        for fold in range(folds):
            scored = assignment == fold
            model, _ = _train_fold(head, (x[~scored], labels[~scored]), None, config, (config.data.seed + fold) % 2**32)
            probabilities[scored] = class_probabilities(model, x[scored], config.fit.batch_size)
    return probabilities


def _train_fold(head: _FoldHead, trained_on: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray]
                | None, config: Config, seed: int) -> tuple[keras.Model, dict]:
    """The head trained afresh (seeded by ``seed``) on ``(features, labels)`` for ``config.fit.epochs`` epochs,
    and its history (with the held-out images' loss and accuracy per epoch, when given: validating every epoch
    costs; a ``plateau`` schedule without them never drops its rate)."""
    (x_train, y_train), settings, classes = trained_on, config.fit, head.classes
    model = head.reset(seed)
    batches = Batches(x_train, targets(y_train, classes), settings.batch_size, shuffle=True, seed=seed,
                      weights=row_weights(y_train, classes, settings.class_weight))
    # shuffle=False: Batches draws each epoch's order from (seed, epoch), as train does
    rates = rate_callback(settings.lr_schedule, settings.learning_rate, settings.epochs, settings)
    validation = None if held_out is None else (held_out[0], targets(held_out[1], classes))
    fitted = model.fit(batches, epochs=settings.epochs, shuffle=False, verbose=0, callbacks=[rates],
                       validation_data=validation)
    return model, fitted.history


def _fit_fold(head: _FoldHead, trained_on: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray],
              class_names: tuple[str, ...], config: Config, seed: int) -> dict:
    """Train the head afresh (seeded by ``seed``) on one fold's training images ``(features, labels)`` for
    ``config.fit.epochs`` epochs, then score the held-out fold as ``tlkit evaluate`` scores."""
    x_val, y_val = held_out
    model, history = _train_fold(head, trained_on, held_out, config, seed)
    report = classification_metrics(class_probabilities(model, x_val, config.fit.batch_size), y_val, class_names)
    return {"train_images": len(trained_on[1]), "val_images": len(y_val), "val_accuracy": report["accuracy"],
            "val_loss": report["loss"],
            "history": {name: [float(value) for value in values] for name, values in history.items()}}
