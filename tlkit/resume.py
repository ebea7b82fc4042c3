"""Resumable training: every finished epoch is checkpointed, so a killed run continues where it stopped.

While a run trains, its folder holds ``checkpoint/``::

    state.json      what the run is (data, dataset and weights fingerprints, config, --from run) and
                    how far it got: each finished phase's history, and the current phase's epochs,
                    history and early-stopping state, with the size and CRC-32 of every array it names
    phase-N.npz     every variable of the model phase N left (the head, or the whole classifier),
                    written once per phase
    pN-eM.npz       after epoch M of phase N: every variable of the model being fitted that training
                    can change (trainable weights, random-stream states) and of its optimizer (step
                    count, learning rate, slots); frozen weights are rebuilt, not saved
    pN-best-eM.npz  early stopping's best trainable weights of phase N so far (found at epoch M)

Arrays are written first, each whole (temporary name, flush, rename), then ``state.json``,
then the arrays it no longer names are removed: at every instant the folder describes one
finished epoch. Batches are a function of (seed, epoch) (see :class:`tlkit.data.Batches`),
so the resumed run sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np

from tlkit.backbone import weights_identity
from tlkit.cache import relative_name
from tlkit.config import Config, DEFAULT_RUNS_DIR, config_from_dict
from tlkit.data import DatasetIndex
from tlkit.errors import TlkitError
from tlkit.files import atomic_write, digest, read_json, write_json
from tlkit.runs import MODEL_FILE

log = logging.getLogger("tlkit")

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
#: Bumped when the checkpoint layout changes; a checkpoint of another version is not resumed.
CHECKPOINT_FORMAT = 1
#: Settings that may differ between the first start and a resume (they describe the machine, not the run).
MACHINE_SETTINGS = {"data": ("workers", "cache_dir"), "train": ("distribute",)}


def dataset_fingerprint(index: DatasetIndex) -> str:
    """A digest of the dataset's files by name (relative to the dataset) and size.

    Times are left out, so a dataset copied to another disk or machine (a preempted job
    restarting elsewhere) still matches; a file added, removed, renamed or resized does not.
    """
    records = [[relative_name(path, index.root), path.stat().st_size] for path in index.all_files()]
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def find_interrupted_run(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """The run under ``runs_dir`` that was checkpointed last and has not finished.

    Raises:
        TlkitError: If there is none.
    """
    states = [p for p in Path(runs_dir).glob(f"*/{CHECKPOINT_DIR}/{STATE_FILE}")
              if not (p.parent.parent / MODEL_FILE).exists()] if Path(runs_dir).is_dir() else []
    if not states:
        raise TlkitError(f"no interrupted run under {runs_dir}/ to resume; give --run-dir")
    return max(states, key=lambda p: p.stat().st_mtime_ns).parent.parent


def saved_config(run_dir: str | Path) -> Config | None:
    """The config an interrupted run was started with, or ``None`` if it has no readable checkpoint."""
    checkpoint = Checkpoint.open(run_dir)
    return checkpoint.config if checkpoint is not None else None


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's ``EarlyStopping`` on ``val_loss`` keeping the best weights, able to start from a saved state."""

    def __init__(self, patience: int, saved: dict | None = None) -> None:
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.saved = saved

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if self.saved is not None:
            self.wait, self.best, self.best_epoch = self.saved["wait"], self.saved["best"], self.saved["best_epoch"]
            self.best_weights = self.saved.get("best_weights")


class Checkpoint:
    """The ``checkpoint/`` folder of a run that is training (see the module docstring).

    Args:
        run_dir: The run folder; ``None`` keeps the state in memory and writes nothing (the processes
            of a multi-process job other than process 0, which checkpoints for all).
        state: The contents of ``state.json``.
    """

    def __init__(self, run_dir: Path | None, state: dict) -> None:
        self.folder = None if run_dir is None else Path(run_dir) / CHECKPOINT_DIR
        self.state = state

    @classmethod
    def create(cls, run_dir: Path | None, data: Path, index: DatasetIndex, config: Config, from_run: Path | None,
               weights: str) -> Checkpoint:
        """Start the checkpoint of a new run: what it trains on and with (``weights``: their identity)."""
        checkpoint = cls(run_dir, {
            "format": CHECKPOINT_FORMAT,
            "data": _resolved(data),
            "dataset": dataset_fingerprint(index),
            "weights": weights,  # frozen weights are rebuilt from them, not saved
            "config": config.to_dict(),
            "from_run": _resolved(from_run),
            "phases": [],
            "current": None,
            "arrays": {},
        })
        if checkpoint.folder is not None:
            checkpoint.folder.mkdir(parents=True, exist_ok=True)
            checkpoint._write_state()
        return checkpoint

    @classmethod
    def open(cls, run_dir: str | Path) -> Checkpoint | None:
        """The checkpoint of an interrupted run, or ``None`` if it has none.

        Raises:
            TlkitError: If its ``state.json`` is damaged or of another version (nothing is deleted:
                the message says what to delete to start the run again).
        """
        path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = read_json(path)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise TlkitError(f"format {state.get('format')!r}, this tlkit reads {CHECKPOINT_FORMAT}")
            config_from_dict(state["config"])
        except (TlkitError, KeyError, AttributeError) as exc:
            raise TlkitError(f"the checkpoint of {run_dir} cannot be used ({exc}); to train that run again from "
                             f"the start, delete {path.parent} (or choose another --run-dir)") from None
        return cls(Path(run_dir), state)

    @property
    def config(self) -> Config:
        """The config the run was started with."""
        return config_from_dict(self.state["config"])

    @property
    def from_run(self) -> str | None:
        """The ``--from`` run it was started with."""
        return self.state["from_run"]

    def check_matches(self, data: str | Path, index: DatasetIndex, config: Config, from_run) -> Config:
        """The config to resume with; refuses a resume whose data, dataset or settings differ from the start.

        Settings that describe the machine (:data:`MACHINE_SETTINGS`) are taken from ``config``.

        Raises:
            TlkitError: Naming what differs.
        """
        run = self.folder.parent
        if _resolved(from_run) != self.from_run:
            raise TlkitError(f"run {run} was started with --from {self.from_run}, not {from_run}")
        if dataset_fingerprint(index) != self.state["dataset"]:
            raise TlkitError(f"the files of {Path(data).resolve()} are not those run {run} started on "
                             f"({self.state['data']}): files were added, removed or changed since; "
                             "start a new run (without --resume)")
        if _resolved(data) != self.state["data"]:
            log.info("run %s started on %s; the same files are now in %s", run, self.state["data"], _resolved(data))
        saved = self.config.replace(**{section: {name: getattr(getattr(config, section), name) for name in names}
                                       for section, names in MACHINE_SETTINGS.items()})
        ours, theirs = config.to_dict(), saved.to_dict()
        changed = [f"{name}={theirs[section][name]!r} (not {value!r})" for section, values in ours.items()
                   for name, value in values.items() if theirs[section][name] != value]
        if changed:
            raise TlkitError(f"run {run} was started with {', '.join(changed)}; resume it with the same options")
        if weights_identity(config.train.weights) != self.state["weights"]:
            raise TlkitError(f"the weights file {config.train.weights} changed since run {run} started; "
                             "start a new run (without --resume)")
        return saved

    def has_progress(self) -> bool:
        """True once a phase or an epoch has finished."""
        current = self.state["current"]
        return bool(self.state["phases"]) or bool(current and current["epochs_done"])

    def finished_phase(self, phase: int, subject: keras.Model) -> dict | None:
        """If ``phase`` finished earlier: load the variables it ended with into ``subject``, return its history."""
        if phase >= len(self.state["phases"]):
            return None
        name = f"phase-{phase}.npz"
        if not self._load(name, subject.variables):
            del self.state["phases"][phase:]
            self.state["current"] = None
            return None
        log.info("phase %d (%s) finished before the interruption; its weights are restored",
                 phase + 1, self.state["phases"][phase]["name"])
        return self.state["phases"][phase]

    def resume_phase(self, phase: int, trainer: keras.Model) -> dict | None:
        """If ``phase`` was under way: load the model and optimizer state of its last finished epoch.

        ``trainer`` must be compiled. Returns ``{"epochs_done", "history", "stopped", "early_stopping"}``
        (with the best weights in ``early_stopping["best_weights"]``), or ``None`` to start the phase afresh.
        """
        current = self.state["current"]
        if current is None or current["phase"] != phase:
            return None
        stopping = current["early_stopping"]
        if stopping is not None and stopping["best_weights"] is not None:
            best = self._read(stopping["best_weights"])
            if best is None:
                return None
            stopping = {**stopping, "best_weights": _with_frozen_part(trainer, best)}
        trainer.optimizer.build(trainer.trainable_variables)
        if not self._load(current["arrays"], training_variables(trainer)):
            return None
        log.info("resuming phase %d after epoch %d", phase + 1, current["epochs_done"])
        return {**current, "early_stopping": stopping}

    def saver(self, phase: int, trainer: keras.Model, stopping: EarlyStopping | None,
              history: dict | None) -> EpochSaver:
        """The callback that checkpoints ``trainer`` after each epoch of ``phase`` (list it last)."""
        return EpochSaver(self, phase, trainer, stopping, history)

    def finish_phase(self, phase: int, name: str, history: dict, subject: keras.Model) -> None:
        """Record that ``phase`` ended, with its history and the variables of ``subject``."""
        arrays = f"phase-{phase}.npz"
        self._save(arrays, subject.variables)
        self.state["phases"].append({"name": name, "history": history})
        self.state["current"] = None
        self._write_state()

    def save_epoch(self, phase: int, epochs_done: int, trainer: keras.Model, history: dict, stopped: bool,
                   stopping: EarlyStopping | None) -> None:
        """Record the state after ``epochs_done`` epochs of ``phase``."""
        arrays = f"p{phase}-e{epochs_done}.npz"
        self._save(arrays, training_variables(trainer))
        early = None
        if stopping is not None:
            best = None
            if stopping.best_weights is not None:
                best = f"p{phase}-best-e{stopping.best_epoch + 1}.npz"
                if best not in self.state["arrays"]:
                    self._save(best, _trainable_part(trainer, stopping.best_weights))
            early = {"wait": stopping.wait, "best": _float(stopping.best), "best_epoch": stopping.best_epoch,
                     "best_weights": best}
        self.state["current"] = {"phase": phase, "epochs_done": epochs_done, "history": history,
                                 "stopped": stopped, "early_stopping": early, "arrays": arrays}
        self._write_state()

    def remove(self) -> None:
        """Delete the checkpoint (the run is whole)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def remove_leftover(run_dir: str | Path) -> None:
        """Delete the checkpoint a finished run still holds (killed between saving its model and this)."""
        folder = Path(run_dir) / CHECKPOINT_DIR
        if (folder / STATE_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the leftover checkpoint of the finished run %s", run_dir)

    def _save(self, name: str, values) -> None:
        if self.folder is None:
            return
        arrays = [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]
        atomic_write(self.folder / name, lambda tmp: np.savez(tmp, *arrays))
        self.state["arrays"][name] = [(self.folder / name).stat().st_size, digest(self.folder / name, "crc32")]

    def _read(self, name: str) -> list[np.ndarray] | None:
        """The arrays of ``name`` if the file is whole (size and CRC-32 as recorded), else ``None``, said so."""
        path, record = self.folder / name, self.state["arrays"].get(name)
        whole = record is not None and path.is_file() and path.stat().st_size == record[0]
        if not whole or digest(path, "crc32") != record[1]:
            log.warning("checkpoint file %s is missing or damaged; that phase starts again", path)
            return None
        with np.load(path, allow_pickle=False) as stored:
            return [stored[f"arr_{i}"] for i in range(len(stored.files))]

    def _load(self, name: str, variables) -> bool:
        arrays = self._read(name)
        variables = list(variables)
        if arrays is None:
            return False
        if [a.shape for a in arrays] != [tuple(v.shape) for v in variables]:
            log.warning("checkpoint file %s does not fit the model; that phase starts again", name)
            return False
        for variable, value in zip(variables, arrays):
            variable.assign(value)
        return True

    def _write_state(self) -> None:
        named = {self.state["current"]["arrays"]} if self.state["current"] else set()
        stopping = (self.state["current"] or {}).get("early_stopping") or {}
        named |= {f"phase-{i}.npz" for i in range(len(self.state["phases"]))} | {stopping.get("best_weights")}
        self.state["arrays"] = {name: record for name, record in self.state["arrays"].items() if name in named}
        if self.folder is None:
            return
        write_json(self.folder / STATE_FILE, self.state)
        for path in self.folder.glob("*.npz"):
            if path.name not in named:
                path.unlink()


class EpochSaver(keras.callbacks.Callback):
    """Checkpoints the model being fitted after every epoch, and keeps the phase's whole history.

    Args:
        checkpoint: Where to save.
        phase: Index of the phase being fitted.
        trainer: The model being fitted.
        stopping: The phase's early stopping (its state is saved too), if any.
        history: Epochs finished before a resume.
    """

    def __init__(self, checkpoint: Checkpoint, phase: int, trainer: keras.Model, stopping: EarlyStopping | None,
                 history: dict | None) -> None:
        super().__init__()
        self.checkpoint, self.phase, self.trainer, self.stopping = checkpoint, phase, trainer, stopping
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.checkpoint.save_epoch(self.phase, epoch + 1, self.trainer, self.history,
                                   bool(self.trainer.stop_training), self.stopping)


def training_variables(trainer: keras.Model) -> list:
    """Every variable a fit can change: trainable weights, random-stream states, the optimizer's variables.

    Frozen weights are left out (most of VGG16 in most phases): a resumed run rebuilds them
    exactly as they were, from the same weights and seed. (tlkit's models hold no batch
    normalisation, whose moving statistics would be frozen-looking weights that change.)
    """
    weights = {id(w) for w in trainer.weights}
    return [v for v in trainer.variables if v.trainable or id(v) not in weights] + list(trainer.optimizer.variables)


def _trainable_part(trainer: keras.Model, weights: list) -> list:
    """The entries of a ``get_weights()`` list that belong to trainable weights."""
    return [value for value, w in zip(weights, trainer.weights) if w.trainable]


def _with_frozen_part(trainer: keras.Model, trainable: list) -> list:
    """A whole ``get_weights()`` list: ``trainable`` values, and the frozen weights as they are."""
    values = iter(trainable)
    return [next(values) if w.trainable else current for w, current in zip(trainer.weights, trainer.get_weights())]


def _resolved(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _float(value) -> float | None:
    return None if value is None else float(value)
