"""``train(data, config) -> TrainResult``: prepare the run, fit its phases, score it, write it.

1. :func:`tlkit.training.job.prepare`: the run folder (new, or an interrupted run's, resumed; locked),
   the dataset index, the run's identity and its checkpoint; in a job of several processes, all agree
   before going on.
2. :func:`_fit`: the phases of the mode (:func:`tlkit.training.phases.phases_for`), each fitted and
   checkpointed after every epoch.
3. :func:`_metrics` and :func:`tlkit.runs.write_run`: validation and test figures as ``tlkit evaluate``
   computes them, then the run folder, its model last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlkit.backbone import BASE_NAME, build_base, set_trainable_from
from tlkit.config import MULTI_LABEL_THRESHOLD, Config
from tlkit.data.image_cache import Split, load_split
from tlkit.features import FeatureSet, extract
from tlkit.inference.evaluate import classification_metrics
from tlkit.inference.multilabel import MULTI_LABEL_FIGURES, multilabel_metrics, tune_thresholds
from tlkit.intervals import selection_note, with_intervals
from tlkit.model import build_classifier, build_head, class_probabilities, precision_policy
from tlkit.runs import best_epoch, write_run
from tlkit.training.job import Job, prepare
from tlkit.training.phases import Fitting, check_tensorboard, class_weights, fit_classifier, fit_head, phases_for

log = logging.getLogger("tlkit")


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
          from_run: str | Path | None = None, *, verbose: int = 1,
          callbacks: list[keras.callbacks.Callback] | None = None, resume: bool | None = False,
          changes: dict[str, dict] | None = None, tensorboard: str | Path | None = None) -> TrainResult:
    """Train a VGG16 transfer-learning classifier on a folder dataset and save the run.

    Every finished epoch is checkpointed in the run folder; a run that was stopped (killed,
    interrupted, out of memory) continues from its last finished epoch with ``resume=True``.

    Args:
        data: Folder with ``train/`` + ``validation/`` (or ``val/``) [+ ``test/``] of class
            folders, or a plain folder of class folders (split here, stratified and seeded).
        config: Settings; ``config.fit.mode`` picks the mode. Defaults if omitted (when
            resuming: the settings the run was started with).
        run_dir: Folder to write the run into (must be new or empty); default ``runs/<time>-<mode>``.
        from_run: For ``finetune``: an earlier run whose model replaces the head warm-up.
        verbose: 0 silent, 1 progress bars.
        callbacks: Extra Keras callbacks, given to every phase's ``fit``.
        resume: ``True``: continue the interrupted run in ``run_dir`` (default: the latest under
            ``runs/``); a ``run_dir`` with nothing to resume starts a new run there. ``None`` (the
            command line's default): without ``run_dir``, continue the latest interrupted run under
            ``runs/`` of the same data and settings if there is one (said so), else start a new run.
            ``False``: a new run.
        changes: Options by section (``{"runtime": {"workers": 4}}``) applied over ``config`` (or,
            resuming without one, over the run's own settings).
        tensorboard: A folder for TensorBoard logs (Keras's ``TensorBoard`` callback, which needs
            TensorFlow installed): one subfolder per phase, ``<number>-<phase>``, with the losses,
            metrics and learning rate of each epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TlkitError: On bad data, options or runs, a resume whose data or settings changed, a run folder
            another process is writing, or a loss that became NaN or infinite (no run is then saved).
    """
    if config is not None:
        config.check_memory()
    if tensorboard is not None:
        check_tensorboard(tensorboard)
    job = prepare(data, config, run_dir, from_run, resume, changes or {})
    try:
        with precision_policy(job.config.runtime.precision), job.devices.scope():
            result = _fit_score_write(job, verbose, list(callbacks or []), tensorboard)
    except BaseException as exc:
        job.stopped(exc, data)
        raise
    else:
        job.store.remove()
    finally:
        job.release()
    return result


def _fit_score_write(job: Job, verbose: int, callbacks: list, tensorboard: str | Path | None) -> TrainResult:
    """Fit the phases of the mode, score the kept weights, write the run (in process 0)."""
    config, index = job.config, job.index
    keras.utils.set_random_seed(config.data.seed)
    planned = phases_for(config, job.start is not None)
    fitting = Fitting(config, len(index.class_names), job.devices, job.store, callbacks, verbose, len(planned),
                      Path(tensorboard) if tensorboard is not None and job.devices.chief else None, index.multi_label)
    job.skipped.update(index.skipped)  # symlink loops and other entries the scan rejected
    model = job.start.model if job.start is not None else None
    features: FeatureSet | None = None
    head = None
    splits: dict[str, Split] = {}
    phases = []
    for number, phase in enumerate(planned):
        if phase.on_features:
            features = extract(index, config, verbose, job.devices)
            job.skipped.update(features.skipped)
            head, history = fit_head(features, number, phase, fitting)
            model = build_classifier(build_base(config.model.weights, config.data.image_size, config.data.seed), head)
        else:
            if not splits:
                splits = _load_splits(job, verbose)
            if model is None:  # the base frozen under a fresh head
                base = build_base(config.model.weights, config.data.image_size, config.data.seed)
                keras.utils.set_random_seed(config.data.seed)
                model = build_classifier(base, build_head(base.output_shape[1:], fitting.classes, config.model,
                                                          config.data.seed, index.multi_label))
            set_trainable_from(model.get_layer(BASE_NAME), phase.unfreeze_from)
            history = fit_classifier(model, splits, number, phase, fitting)
        phases.append({"name": phase.name, "history": history})
    model = job.devices.local_copy(model)  # trained; from here on, predictions come from this process's devices
    if config.fit.mode == "features":  # the head on cached features scores exactly as the whole model, faster
        scored = {name: features.split(name)[:2] for name in ("val", "test") if name in index.files}
        scorer = job.devices.local_copy(head)
    else:  # every other mode fitted the classifier on the decoded splits
        scored = {name: (split.images, split.labels) for name, split in splits.items()}
        scorer = model
    metrics = _metrics(job, scorer, scored, phases)
    if not job.devices.chief:
        log.info("process %d of %d done (val_accuracy %.4f); process 0 writes the run", job.devices.process,
                 job.devices.processes, metrics["val_accuracy"])
        return TrainResult(model, index.class_names, phases, metrics, None, config)
    record = {"data_dir": job.identity.data, "presplit": index.presplit, "class_names": list(index.class_names),
              "multi_label": index.multi_label,
              "from_run": str(job.start.path) if job.start is not None else None,
              "distribution": job.devices.describe()}
    write_run(job.out, model, config, record, phases, metrics)
    log.info("run saved to %s (val_accuracy %.4f)", job.out, metrics["val_accuracy"])
    return TrainResult(model, index.class_names, phases, metrics, job.out, config)


def _load_splits(job: Job, verbose: int) -> dict[str, Split]:
    """Every split's decoded images (the decoded-image cache), their undecodable files noted as skipped."""
    splits = {name: load_split(job.index, name, job.config, progress=bool(verbose)) for name in job.index.files}
    for split in splits.values():
        job.skipped.update(split.skipped)
    return splits


def _metrics(job: Job, model: keras.Model, scored: dict, phases: list[dict]) -> dict:
    """Validation (and test) loss/accuracy of the kept weights, scored as ``tlkit evaluate`` scores (so the
    run's figures and a later evaluation agree); best epoch, split sizes, skipped files, class weights."""
    index, config, skipped = job.index, job.config, job.skipped
    metrics: dict = {}
    thresholds = None
    scored_count = {}
    for name in ("val", "test"):
        if name in index.files:
            inputs, labels = scored[name]
            scored_count[name] = len(labels)
            probabilities = class_probabilities(model, inputs, config.fit.batch_size, job.devices)
            if index.multi_label:
                if name == "val" and config.fit.tune_thresholds:
                    thresholds = tune_thresholds(probabilities, labels)
                report = multilabel_metrics(probabilities, labels, index.class_names, thresholds)
                metrics.update({f"{name}_{key}": report[key] for key in MULTI_LABEL_FIGURES})
            else:
                report = classification_metrics(probabilities, labels, index.class_names)
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = report["loss"], report["accuracy"]
            if "top_5_accuracy" in report:
                metrics[f"{name}_top_5_accuracy"] = report["top_5_accuracy"]
    if index.multi_label:
        metrics["thresholds"] = dict(zip(index.class_names, map(float, thresholds if thresholds is not None else
                                                                  [MULTI_LABEL_THRESHOLD] * len(index.class_names))))
    metrics = with_intervals(metrics, lambda key: scored_count.get(key.split("_", 1)[0]))
    last = phases[-1]["history"]
    best = best_epoch(phases)
    metrics.update({
        "trust": selection_note(config.fit.patience > 0, "test" in scored_count),
        "kept_weights": "best epoch" if config.fit.patience > 0 else "last epoch",
        **best,
        "best_val_loss": last["val_loss"][best["best_phase_epoch"] - 1],
        "best_val_accuracy": last["val_accuracy"][best["best_phase_epoch"] - 1],
        "max_val_accuracy": max(last["val_accuracy"]),
        "epochs_run": [len(phase["history"]["loss"]) for phase in phases],
        "images": {name: len(files) - sum(str(p) in skipped for p in files) for name, files in index.files.items()},
        "skipped": skipped,
    })
    trained_on = np.array([label for path, label in zip(index.files["train"], index.labels["train"])
                           if str(path) not in skipped])  # the readable images, as the fits weighed them
    weights = class_weights(trained_on, len(index.class_names), config.fit.class_weight)  # multi-label: always none
    metrics["class_weight"] = None if weights is None else dict(zip(index.class_names, map(float, weights)))
    return metrics
