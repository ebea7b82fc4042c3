"""``train(data, config) -> TrainResult``: prepare the run, fit its phases, score it, write it.

1. :func:`_prepare`: the run folder (new, or an interrupted run's, resumed), the dataset index, the
   run's identity and its checkpoint; in a job of several processes, all agree before going on.
2. :func:`_fit`: the phases of the mode (:func:`tlkit.training.phases.phases_for`), each fitted and
   checkpointed after every epoch.
3. :func:`_metrics` and :func:`tlkit.runs.write_run`: validation and test figures as ``tlkit evaluate``
   computes them, then the run folder, its model last.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tlkit.backbone import BASE_NAME, build_base, set_trainable_from
from tlkit.backends.devices import Devices, all_or_none, resolve
from tlkit.config import Config
from tlkit.data.image_cache import Split, load_split
from tlkit.data.scan import DatasetIndex, require_classes, scan
from tlkit.errors import TlkitError
from tlkit.features import FeatureSet, extract
from tlkit.inference.evaluate import classification_metrics
from tlkit.model import build_classifier, build_head, class_probabilities, precision_policy
from tlkit.runs import CHECKPOINT_DIR, MODEL_FILE, STATE_FILE, Run, latest_run, load_run, new_run_dir, write_run
from tlkit.training.checkpoint import CheckpointStore
from tlkit.training.identity import RunIdentity, check_resume
from tlkit.training.phases import Fitting, class_weights, fit_classifier, fit_head, phases_for

log = logging.getLogger("tlkit")

#: Why a run of several processes is not resumed by them all, and what to do instead.
MULTIWORKER_RESUME = ("--resume is not available with --distribute multiworker: continue the run on one machine "
                      "(--resume --distribute mirrored), or start the job again with another --run-dir")
#: Settings an earlier run (``--from``) fixes: its model's shape, and its split, so that images it
#: trained on never end up in this run's validation or test split.
ADOPTED = {"data": ("image_size", "seed", "val_split", "test_split"), "model": ("pooling", "head_units", "dropout")}


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
          callbacks: list[keras.callbacks.Callback] | None = None, resume: bool = False,
          changes: dict[str, dict] | None = None) -> TrainResult:
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
        callbacks: Extra Keras callbacks, given to every phase's ``fit`` (e.g. TensorBoard).
        resume: Continue the interrupted run in ``run_dir`` (default: the latest under ``runs/``);
            a ``run_dir`` with nothing to resume starts a new run there.
        changes: Options by section (``{"runtime": {"workers": 4}}``) applied over ``config`` (or,
            resuming without one, over the run's own settings).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TlkitError: On bad data, options or runs, or a resume whose data or settings changed.
    """
    job = _prepare(data, config, run_dir, from_run, resume, changes or {})
    try:
        with precision_policy(job.config.runtime.precision), job.devices.scope():
            result = _fit_score_write(job, verbose, list(callbacks or []))
    except BaseException as exc:
        job.stopped(exc, data)
        raise
    job.store.remove()
    return result


@dataclass
class _Job:
    """A run being trained: where it goes, on what, with what."""

    out: Path | None  # None in the processes of a multiworker job that do not write
    index: DatasetIndex
    config: Config
    devices: Devices
    store: CheckpointStore
    identity: RunIdentity
    start: Run | None  # the earlier run (--from) it starts from
    resumed: bool
    keep_folder: bool = False  # the run folder existed (empty) before: on failure it is emptied, not removed
    skipped: dict[str, str] = field(default_factory=dict)

    def stopped(self, exc: BaseException, data: str | Path) -> None:
        """The job stopped: keep what can be resumed and say how, or remove a new run's folder."""
        if not self.devices.chief:
            return
        if self.store.has_progress():
            where = " --distribute mirrored" if self.devices.processes > 1 else ""  # see MULTIWORKER_RESUME
            log.warning("training stopped (%s); the finished epochs are kept in %s: continue with "
                        "`tlkit train %s --run-dir %s --resume%s`", type(exc).__name__, self.out, data, self.out,
                        where)
        elif not self.resumed:
            _discard(self.out, self.keep_folder)


def _prepare(data: str | Path, config: Config | None, run_dir: str | Path | None, from_run: str | Path | None,
             resume: bool, changes: dict[str, dict]) -> _Job:
    """Everything a run needs before its first fit; in a job of several processes, all go on or none does."""
    store = None
    if resume:
        _refuse_multiworker((config or Config()).replace(**changes))  # before anything is read or removed
        run_dir = run_dir or latest_run(interrupted=True)
        if not (Path(run_dir) / MODEL_FILE).exists():
            store = CheckpointStore.open(run_dir)
    config = (config or (store.config if store is not None else None) or Config()).replace(**changes)
    if resume:
        _refuse_multiworker(config)  # the run's own settings may ask for it
    if resume and (Path(run_dir) / MODEL_FILE).exists():
        CheckpointStore.remove_leftover(run_dir)  # killed after the model was saved, before the checkpoint went
        raise TlkitError(f"run {run_dir} has finished; there is nothing to resume")
    if store is not None and from_run is None:
        from_run = store.from_run
    if from_run is not None and config.fit.mode != "finetune":
        raise TlkitError("--from is only for --mode finetune")
    devices = resolve(config.runtime.distribute)  # first: a multiworker process joins its cluster
    job = None
    try:
        try:
            job = _open_run(data, config, run_dir, from_run, store, devices)
        except (TlkitError, OSError) as exc:
            all_or_none(devices, str(exc), None)  # in a job of several processes, all stop with this error
            raise
        # every process is ready, on the same files with the same settings, or all stop here
        all_or_none(devices, None, job.identity.digests())
    except BaseException:
        if job is not None and job.out is not None and not job.resumed:
            _discard(job.out, job.keep_folder)
        raise
    return job


def _refuse_multiworker(config: Config) -> None:
    """A resume is not taken up by the processes of a job (see :data:`MULTIWORKER_RESUME`)."""
    if config.runtime.distribute == "multiworker":
        raise TlkitError(MULTIWORKER_RESUME)


def _open_run(data: str | Path, config: Config, run_dir: str | Path | None, from_run: str | Path | None,
              store: CheckpointStore | None, devices: Devices) -> _Job:
    """Read the earlier run and the dataset, then open the interrupted run or create the new one (last)."""
    with devices.scope():  # an earlier run's model trains on every device too
        start = load_run(from_run) if from_run is not None else None
    if start is not None:
        config = _adopt(start, config)
    index = scan(data, config.data)
    require_classes(index)
    if not index.files["val"]:
        raise TlkitError(f"no validation images in {index.root}: set --val-split above 0 or add a validation/ folder")
    if start is not None and start.class_names != index.class_names:
        raise TlkitError(f"run {start.path} was trained on classes {', '.join(start.class_names)}, "
                         f"but {index.root} has {', '.join(index.class_names)}")
    identity = RunIdentity.of(data, index, config, from_run)  # a missing weights file fails before the folder is made
    keep_folder, resumed = False, store is not None
    if resumed:
        config = check_resume(Path(run_dir), store.state, store.config, identity, config)
        out = Path(run_dir)
    elif not devices.chief:  # process 0 writes the run and its checkpoints; the others write nothing
        out, store = None, CheckpointStore.create(None, identity, config)
    else:
        if run_dir is not None and (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file():
            raise TlkitError(f"{run_dir} holds an interrupted run: add --resume to continue it, or choose another "
                             "--run-dir")
        keep_folder = run_dir is not None and Path(run_dir).is_dir()
        out = new_run_dir(run_dir, config.fit.mode)
        try:
            store = CheckpointStore.create(out, identity, config)
        except BaseException:
            _discard(out, keep_folder)
            raise
    return _Job(out, index, config, devices, store, identity, start, resumed, keep_folder)


def _adopt(start: Run, config: Config) -> Config:
    """Take over the settings an earlier run fixes (:data:`ADOPTED`)."""
    changes: dict[str, dict] = {}
    for section, names in ADOPTED.items():
        for name in names:
            theirs, ours = getattr(getattr(start.config, section), name), getattr(getattr(config, section), name)
            if theirs != ours:
                log.info("using %s = %s of %s", name, theirs, start.path)
                changes.setdefault(section, {})[name] = theirs
    return config.replace(**changes)


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


def _fit_score_write(job: _Job, verbose: int, callbacks: list) -> TrainResult:
    """Fit the phases of the mode, score the kept weights, write the run (in process 0)."""
    config, index = job.config, job.index
    keras.utils.set_random_seed(config.data.seed)
    fitting = Fitting(config, len(index.class_names), job.devices, job.store, callbacks, verbose)
    job.skipped.update(index.skipped)  # symlink loops and other entries the scan rejected
    model = job.start.model if job.start is not None else None
    features: FeatureSet | None = None
    head = None
    splits: dict[str, Split] = {}
    phases = []
    for number, phase in enumerate(phases_for(config, job.start is not None)):
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
                                                          config.data.seed))
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
    record = {"data_dir": str(index.root.resolve()), "presplit": index.presplit, "class_names": list(index.class_names),
              "from_run": str(job.start.path) if job.start is not None else None,
              "distribution": job.devices.describe()}
    write_run(job.out, model, config, record, phases, metrics)
    log.info("run saved to %s (val_accuracy %.4f)", job.out, metrics["val_accuracy"])
    return TrainResult(model, index.class_names, phases, metrics, job.out, config)


def _load_splits(job: _Job, verbose: int) -> dict[str, Split]:
    """Every split's decoded images (the decoded-image cache), their undecodable files noted as skipped."""
    splits = {name: load_split(job.index, name, job.config, progress=bool(verbose)) for name in job.index.files}
    for split in splits.values():
        job.skipped.update(split.skipped)
    return splits


def _metrics(job: _Job, model: keras.Model, scored: dict, phases: list[dict]) -> dict:
    """Validation (and test) loss/accuracy of the kept weights, scored as ``tlkit evaluate`` scores (so the
    run's figures and a later evaluation agree); best epoch, split sizes, skipped files, class weights."""
    index, config, skipped = job.index, job.config, job.skipped
    metrics: dict = {}
    for name in ("val", "test"):
        if name in index.files:
            inputs, labels = scored[name]
            report = classification_metrics(class_probabilities(model, inputs, config.fit.batch_size, job.devices),
                                            labels, index.class_names)
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = report["loss"], report["accuracy"]
    last = phases[-1]["history"]
    best = int(np.argmin(last["val_loss"]))
    metrics.update({
        "kept_weights": "best epoch" if config.fit.patience > 0 else "last epoch",
        "best_phase": phases[-1]["name"],
        "best_epoch": best + 1,
        "best_val_loss": last["val_loss"][best],
        "best_val_accuracy": last["val_accuracy"][best],
        "max_val_accuracy": max(last["val_accuracy"]),
        "epochs_run": [len(phase["history"]["loss"]) for phase in phases],
        "images": {name: len(files) - sum(str(p) in skipped for p in files) for name, files in index.files.items()},
        "skipped": skipped,
    })
    trained_on = np.array([label for path, label in zip(index.files["train"], index.labels["train"])
                           if str(path) not in skipped])  # the readable images, as the fits weighed them
    weights = class_weights(trained_on, len(index.class_names), config.fit.class_weight)
    metrics["class_weight"] = None if weights is None else dict(zip(index.class_names, map(float, weights)))
    return metrics
