"""The phases of a training mode, and how one phase is fitted.

- ``features``: one phase, a fresh head fitted on cached conv-base features.
- ``frozen``: one phase, the classifier (base frozen) fitted end to end on augmented images.
- ``finetune``: a head warm-up (on cached features, or frozen with augmentation; none when it starts
  from an earlier run's model), then every base layer from ``unfreeze_from`` up fitted with the head
  at ``finetune_learning_rate``.

Every phase is fitted by :func:`fit_phase`: checkpointed after each epoch, restored on resume.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np

from tlkit.augment import AugmentedBatches, RandomAffine
from tlkit.backends.devices import Devices, sharded
from tlkit.config import Config
from tlkit.data.batches import Batches
from tlkit.data.image_cache import Split
from tlkit.errors import TlkitError
from tlkit.features import FeatureSet
from tlkit.model import build_head, compile_model, targets
from tlkit.training.callbacks import StopOnNonFinite, rate_callback
from tlkit.training.checkpoint import CheckpointStore, PhaseCheckpoint
from tlkit.training.interrupt import CtrlC

log = logging.getLogger("tlkit")


@dataclass(frozen=True)
class Phase:
    """One fit of a training mode.

    Attributes:
        name: As ``history.json`` calls it (``features``, ``warmup (features)``, ``frozen``,
            ``warmup (frozen)``, ``finetune``).
        on_features: A fresh head on cached features; otherwise the whole classifier on augmented images.
        epochs: Most epochs.
        learning_rate: Its learning rate.
        schedule: Its learning-rate schedule (see :mod:`tlkit.training.callbacks`).
        unfreeze_from: For the whole classifier: the first base layer trained (``None``: the base frozen).
    """

    name: str
    on_features: bool
    epochs: int
    learning_rate: float
    schedule: str = "constant"
    unfreeze_from: str | None = None

    def describe(self) -> str:
        """What the phase fits, in words, with its learning rate and most epochs (the console's phase line)."""
        what = {"features": "the head on cached features", "frozen": "the head on the frozen base",
                "warmup (features)": "warm-up of the head on cached features",
                "warmup (frozen)": "warm-up of the head on the frozen base",
                "finetune": f"fine-tuning {self.unfreeze_from} and up"}[self.name]
        schedule = "" if self.schedule == "constant" else f" ({self.schedule} schedule)"
        return f"{what} at lr {self.learning_rate:g}{schedule}, up to {self.epochs} epochs"

    @property
    def option(self) -> str:
        """The option that sets the phase's learning rate."""
        return "--finetune-learning-rate" if self.name == "finetune" else "--learning-rate"


def phases_for(config: Config, from_earlier_run: bool) -> list[Phase]:
    """The phases of ``config.fit.mode``; a fine-tuning that starts from an earlier run's model skips its warm-up."""
    fit, mode = config.fit, config.fit.mode
    if mode == "features":
        return [Phase("features", True, fit.epochs, fit.learning_rate, fit.lr_schedule)]
    if mode == "frozen":
        return [Phase("frozen", False, fit.epochs, fit.learning_rate, fit.lr_schedule)]
    warmup = [] if from_earlier_run else [Phase(f"warmup ({fit.warmup_mode})", fit.warmup_mode == "features",
                                                fit.warmup_epochs, fit.learning_rate, fit.lr_schedule)]
    return [*warmup, Phase("finetune", False, fit.epochs, fit.finetune_learning_rate, fit.finetune_lr_schedule,
                           config.model.unfreeze_from)]


@dataclass
class Fitting:
    """What every phase of a training is fitted with, besides its model and data.

    Attributes:
        config: The run's settings.
        classes: How many classes the classifier tells apart.
        devices: The devices of the job.
        store: The run's checkpoint.
        callbacks: The caller's Keras callbacks, given to every ``fit``.
        verbose: 0 silent, 1 progress bars.
        phases: How many phases the training has.
        tensorboard: The folder of TensorBoard logs, if asked for (a subfolder per phase).
        multi_label: Each image has any number of the labels (a sigmoid unit per label).
    """

    config: Config
    classes: int
    devices: Devices
    store: CheckpointStore
    callbacks: list
    verbose: int
    phases: int = 1
    tensorboard: Path | None = None
    multi_label: bool = False


def fit_head(features: FeatureSet, number: int, phase: Phase, fitting: Fitting) -> tuple[keras.Model, dict]:
    """Fit a fresh head on cached features, and on their augmented copies if any; returns ``(head, history)``."""
    config, devices = fitting.config, fitting.devices
    x_train, y_train, _ = features.split("train")
    copies = features.augmented("train")
    if len(copies):  # offline augmentation: each copy is one more pass over the training images, transformed
        x_train = np.concatenate([x_train, copies.reshape(-1, *x_train.shape[1:])])
        y_train = np.concatenate([y_train] * (len(copies) + 1))
    x_val, y_val, _ = features.split("val")
    classes = fitting.classes
    keras.utils.set_random_seed(config.data.seed)  # same seed, same head, whether or not features were cached
    multi = fitting.multi_label
    head = build_head(x_train.shape[1:], classes, config.model, config.data.seed, multi)
    fit_model = trainer(head)
    compile_model(fit_model, classes, config.fit.optimizer, phase.learning_rate, weighted_accuracy=devices.count > 1,
                  label_smoothing=config.fit.label_smoothing, multi_label=multi)
    weights = row_weights(y_train, classes, config.fit.class_weight)

    def batches(epoch: int):
        return sharded(Batches(x_train, targets(y_train, classes, multi), config.fit.batch_size, shuffle=True,
                               seed=config.data.seed, epoch=epoch, weights=weights), devices)

    validation = sharded(Batches(x_val, targets(y_val, classes, multi), config.fit.batch_size), devices,
                         whole_epoch=True)
    checkpoint = PhaseCheckpoint(fitting.store, number, phase.name, fit_model, head, config.fit.patience,
                                 rates=phase_rates(phase, config))
    return head, fit_phase(checkpoint, batches, validation, phase, fitting)


def fit_classifier(model: keras.Model, splits: dict[str, Split], number: int, phase: Phase,
                   fitting: Fitting) -> dict:
    """Fit the whole classifier on augmented training images, validating on plain ones.

    With ``augment_on="device"`` a :class:`RandomAffine` layer in front of the classifier augments
    each batch inside the training step (the saved classifier never holds it); with ``"cpu"``
    ImageDataGenerator's ``apply_transform`` augments batches on the host. Either way the model
    compiled is a wrapper (:func:`trainer`): the classifier itself never holds an optimizer.
    """
    config, devices = fitting.config, fitting.devices
    train, val = splits["train"], splits["val"]
    classes = fitting.classes
    labels = targets(train.labels, classes, fitting.multi_label)
    weights = row_weights(train.labels, classes, config.fit.class_weight)
    seed = config.data.seed + number  # each phase its own order and augmentations
    if config.runtime.augment_on == "device":
        augment = RandomAffine.from_augment_config(config.augment, seed=seed)
        fit_model = trainer(model, augment)

        # a batch is read in the training loop, without Keras's reading threads: they cost more than they hide
        # (at 150 px, batch 32: 64,000 against 16,000 images/s on JAX, 13,000 against 10,000 on TensorFlow;
        # scripts/bench.py, feed), and on an accelerator the dispatched step runs while the next batch is read
        def batches(epoch: int):
            return sharded(Batches(train.images, labels, config.fit.batch_size, shuffle=True, seed=seed, epoch=epoch,
                                   weights=weights), devices)
    else:
        fit_model = trainer(model)

        def batches(epoch: int):
            return sharded(AugmentedBatches(train.images, labels, config.fit.batch_size, config.augment, seed=seed,
                                            epoch=epoch, weights=weights), devices)
    compile_model(fit_model, classes, config.fit.optimizer, phase.learning_rate, weighted_accuracy=devices.count > 1,
                  label_smoothing=config.fit.label_smoothing, multi_label=fitting.multi_label)
    validation = sharded(Batches(val.images, targets(val.labels, classes, fitting.multi_label), config.fit.batch_size),
                         devices, whole_epoch=True)
    checkpoint = PhaseCheckpoint(fitting.store, number, phase.name, fit_model, model, config.fit.patience,
                                 rates=phase_rates(phase, config))
    return fit_phase(checkpoint, batches, validation, phase, fitting)


def phase_rates(phase: Phase, config: Config) -> Callable[[dict | None], keras.callbacks.Callback]:
    """``saved state -> the callback of the phase's learning-rate schedule``."""
    return partial(rate_callback, phase.schedule, phase.learning_rate, phase.epochs, config.fit)


def trainer(model: keras.Model, augment: keras.layers.Layer | None = None) -> keras.Model:
    """The model a phase compiles and fits: ``model`` (behind ``augment``, if given) inside a wrapper.

    The wrapper holds the optimizer, so the model a run saves carries none: loading a run never
    meets an optimizer state to restore (one fitted under mixed precision has more variables than
    the plain optimizer a load would build).
    """
    inputs = keras.Input(shape=model.input_shape[1:], name=model.inputs[0].name)
    return keras.Model(inputs, model(inputs if augment is None else augment(inputs)), name="trainer")


def fit_phase(checkpoint: PhaseCheckpoint, batches: Callable[[int], keras.utils.PyDataset], validation,
              phase: Phase, fitting: Fitting) -> dict:
    """Fit one phase (its model compiled), checkpointing every epoch; returns its history (every epoch).

    A phase that finished before an interruption is not fitted again: its kept model gets the weights
    it ended with. A phase that was under way continues after its last finished epoch, with the
    optimizer's and early stopping's state as they were.

    Args:
        checkpoint: The phase's checkpoint callback.
        batches: ``epoch -> training batches`` starting at that epoch.
        validation: The validation batches.
        phase: The phase.
        fitting: The training's settings, devices and callbacks.

    Raises:
        Diverged: If the loss becomes NaN or infinite (see :class:`StopOnNonFinite`).
    """
    history = checkpoint.finished()
    if history is not None:
        return history
    log.info("phase %d/%d: %s", checkpoint.phase + 1, fitting.phases, phase.describe())
    done, stopped = checkpoint.restore()
    own = [checkpoint.stopping] if checkpoint.stopping else []
    if fitting.tensorboard is not None:  # a resumed phase logs on from its first unfinished epoch
        logs = fitting.tensorboard / f"{checkpoint.phase + 1}-{phase.name.replace(' (', '-').rstrip(')')}"
        own.append(keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False))
    guard = StopOnNonFinite(checkpoint.phase, phase.option, phase.learning_rate)
    # shuffle=False: Batches shuffles each epoch from (seed, epoch); Keras would reorder batches with the
    # global random state, which a resumed process does not share
    with CtrlC() as ctrl_c:
        checkpoint.fit_model.fit(batches(done), epochs=done if stopped else phase.epochs, initial_epoch=done,
                                 shuffle=False, validation_data=validation,
                                 callbacks=[guard, checkpoint.rates, *own, *fitting.callbacks, checkpoint, ctrl_c],
                                 verbose="auto" if fitting.verbose else 0)
    history = checkpoint.finish()
    _log_kept_epoch(checkpoint.phase, phase, history, fitting.config.fit.patience)
    return history


def _log_kept_epoch(number: int, phase: Phase, history: dict, patience: int) -> None:
    """One line on the epoch a phase keeps, when early stopping chose it (``patience`` > 0)."""
    if not patience:
        return
    run, best = len(history["val_loss"]), int(np.argmin(history["val_loss"]))
    kept = f"keeping epoch {best + 1} (val_loss {history['val_loss'][best]:.4f})"
    if run < phase.epochs:
        log.info("early stop at phase %d epoch %d: val_loss has not improved for %d epochs; %s", number + 1, run,
                 patience, kept)
    else:
        log.info("phase %d ran its %d epochs; %s, the lowest val_loss", number + 1, run, kept)


def check_tensorboard(folder: str | Path) -> None:
    """Refuse, before any work, a TensorBoard folder that cannot be one, or TensorBoard logs without
    TensorFlow and the ``tensorboard`` package (Keras writes them through ``tf.summary``)."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise TlkitError(f"--tensorboard {folder}: exists and is not a folder")
    missing = [name for name in ("tensorflow", "tensorboard") if importlib.util.find_spec(name) is None]
    if missing:
        raise TlkitError(f"--tensorboard needs {' and '.join(missing)} installed (Keras writes TensorBoard logs "
                         f"through tf.summary, whatever the backend): pip install {' '.join(missing)}")


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
