"""Resumable training: every finished epoch is checkpointed, so a killed run continues where it stopped.

While a run trains, its folder holds ``checkpoint/``::

    state.json      what the run is (its identity: data, dataset and weights fingerprints, --from run;
                    its config) and how far it got: each finished phase's history, and the current
                    phase's epochs, history, early-stopping and learning-rate schedule state, with the size and CRC-32 of every
                    array it names
    phase-N.npz     every variable of the model phase N left (the head, or the whole classifier),
                    written once per phase
    pN-eM.npz       after epoch M of phase N: every variable of the model being fitted that training
                    can change (trainable weights, random-stream states) and of its optimizer (step
                    count, learning rate, slots); frozen weights are rebuilt, not saved
    pN-best-eM.npz  early stopping's best trainable weights of phase N so far (found at epoch M)

Arrays are written first, each whole (temporary name, flush, rename), then ``state.json``, then the
arrays it no longer names are removed: at every instant the folder describes one finished epoch.
Batches are a function of (seed, epoch) (see :class:`tlkit.data.batches.Batches`), so the resumed run
sees the batches the uninterrupted run would have seen.

:class:`CheckpointStore` keeps the folder; :class:`PhaseCheckpoint`, one Keras callback per phase shaped
like ``keras.callbacks.BackupAndRestore``, restores a phase and backs it up after every epoch.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tlkit.config import Config, config_from_dict
from tlkit.errors import TlkitError
from tlkit.io import atomic_write, digest, read_json, write_json
from tlkit.runs import CHECKPOINT_DIR, STATE_FILE
from tlkit.training.callbacks import EarlyStopping, rate_state
from tlkit.training.identity import RunIdentity

log = logging.getLogger("tlkit")

#: Bumped when the checkpoint layout changes (2: config sections data/augment/model/fit/runtime).
CHECKPOINT_FORMAT = 2
#: The formats this tlkit resumes.
READABLE_FORMATS = (1, 2)


class CheckpointStore:
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
    def create(cls, run_dir: Path | None, identity: RunIdentity, config: Config) -> CheckpointStore:
        """Start the checkpoint of a new run."""
        store = cls(run_dir, {
            "format": CHECKPOINT_FORMAT,
            "data": identity.data,
            "dataset": identity.dataset,
            "weights": identity.weights,  # frozen weights are rebuilt from them, not saved
            "config": config.to_dict(),
            "from_run": identity.from_run,
            "phases": [],
            "current": None,
            "arrays": {},
        })
        if store.folder is not None:
            store.folder.mkdir(parents=True, exist_ok=True)
            store.write_state()
        return store

    @classmethod
    def open(cls, run_dir: str | Path) -> CheckpointStore | None:
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
            if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
                found = state.get("format") if isinstance(state, dict) else None
                raise TlkitError(f"format {found!r}, this tlkit reads {', '.join(map(str, READABLE_FORMATS))}")
            _check_state(state)
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

    def has_progress(self) -> bool:
        """True once a phase or an epoch has finished."""
        current = self.state["current"]
        return bool(self.state["phases"]) or bool(current and current["epochs_done"])

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

    def save(self, name: str, values) -> None:
        """Write the arrays of ``values`` (variables or arrays) as ``name``, recording its size and CRC-32."""
        if self.folder is None:
            return
        arrays = [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]
        atomic_write(self.folder / name, lambda tmp: np.savez(tmp, *arrays))
        self.state["arrays"][name] = [(self.folder / name).stat().st_size, digest(self.folder / name, "crc32")]

    def read(self, name: str) -> list[np.ndarray] | None:
        """The arrays of ``name`` if the file is whole (size and CRC-32 as recorded), else ``None``, said so."""
        path, record = self.folder / name, self.state["arrays"].get(name)
        whole = record is not None and path.is_file() and path.stat().st_size == record[0]
        if not whole or digest(path, "crc32") != record[1]:
            log.warning("checkpoint file %s is missing or damaged; that phase starts again", path)
            return None
        with np.load(path, allow_pickle=False) as stored:
            return [stored[f"arr_{i}"] for i in range(len(stored.files))]

    def load(self, name: str, variables) -> bool:
        """Assign the arrays of ``name`` to ``variables``; False (said so) if it is damaged or does not fit."""
        arrays = self.read(name)
        variables = list(variables)
        if arrays is None:
            return False
        if [a.shape for a in arrays] != [tuple(v.shape) for v in variables]:
            log.warning("checkpoint file %s does not fit the model; that phase starts again", name)
            return False
        for variable, value in zip(variables, arrays):
            variable.assign(value)
        return True

    def write_state(self) -> None:
        """Write ``state.json``, then delete the arrays it no longer names."""
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


#: What ``state.json`` holds, and what each finished phase and the current one hold.
STATE_KEYS = {"data": str, "dataset": str, "weights": str, "config": dict, "from_run": (str, type(None)),
              "phases": list, "current": (dict, type(None)), "arrays": dict}
PHASE_KEYS = {"name": str, "history": dict}
CURRENT_KEYS = {"phase": int, "epochs_done": int, "history": dict, "stopped": bool,
                "early_stopping": (dict, type(None)), "arrays": str}
STOPPING_KEYS = {"wait": int, "best": (int, float, type(None)), "best_epoch": int, "best_weights": (str, type(None))}
#: A plateau schedule's counters (``current.schedule``; absent in checkpoints of tlkit before schedules).
PLATEAU_KEYS = {"wait": int, "best": (int, float, type(None)), "cooldown": int}


def _check_state(state: dict) -> None:
    """Refuse a ``state.json`` that lacks a key or holds a value of another type (edited or damaged).

    Raises:
        TlkitError: Naming the first such key.
    """
    _require("", state, STATE_KEYS)
    for i, phase in enumerate(state["phases"]):
        _require(f"phases[{i}].", phase, PHASE_KEYS)
    if state["current"] is not None:
        _require("current.", state["current"], CURRENT_KEYS)
        if state["current"]["early_stopping"] is not None:
            _require("current.early_stopping.", state["current"]["early_stopping"], STOPPING_KEYS)
        if state["current"].get("schedule") is not None:
            _require("current.schedule.", state["current"]["schedule"], PLATEAU_KEYS)


def _require(where: str, part: Any, keys: dict[str, type | tuple[type, ...]]) -> None:
    """Refuse a ``state.json`` whose part at ``where`` is not a dict holding ``keys`` of their types."""
    if not isinstance(part, dict):
        raise TlkitError(f"{STATE_FILE} holds a {type(part).__name__} as {where.rstrip('.')}")
    for key, kind in keys.items():
        if key not in part:
            raise TlkitError(f"{STATE_FILE} has no {where}{key!r}")
        if not isinstance(part[key], kind):
            raise TlkitError(f"{STATE_FILE} holds a {type(part[key]).__name__} as {where}{key!r}")


class PhaseCheckpoint(keras.callbacks.Callback):
    """Backs one phase up after every epoch and restores it on resume, like ``keras.callbacks.BackupAndRestore``.

    Before the phase's ``fit``: :meth:`finished` (the phase ended before an interruption: its kept model
    gets the variables it ended with) or :meth:`restore` (it was under way: the fitted model and its
    optimizer get their state after the last finished epoch, early stopping its state). Listed last among
    the fit's callbacks, it then checkpoints every epoch; :meth:`finish` records the phase's end.

    Args:
        store: The run's checkpoint.
        phase: Index of the phase.
        name: Its name, as history.json calls it.
        fit_model: The compiled model being fitted (with the augmentation layer, if any).
        kept_model: The model the phase leaves (the head, or the classifier).
        patience: Early stopping's patience (0: none).
        rates: ``saved state (or None) -> the callback of the phase's learning-rate schedule``; restored and
            checkpointed with the phase, it is :attr:`rates` once :meth:`restore` has run.
    """

    def __init__(self, store: CheckpointStore, phase: int, name: str, fit_model: keras.Model,
                 kept_model: keras.Model, patience: int, *,
                 rates: Callable[[dict | None], keras.callbacks.Callback]) -> None:
        super().__init__()
        self.store, self.phase, self.name = store, phase, name
        self.fit_model, self.kept_model, self.patience = fit_model, kept_model, patience
        self.make_rates = rates
        self.history: dict[str, list[float]] = {}
        self.stopping: EarlyStopping | None = None
        self.rates: keras.callbacks.Callback | None = None

    def finished(self) -> dict | None:
        """If the phase finished earlier: load the variables it ended with into the kept model, return its history."""
        state = self.store.state
        if self.phase >= len(state["phases"]):
            return None
        if not self.store.load(f"phase-{self.phase}.npz", self.kept_model.variables):
            del state["phases"][self.phase:]
            state["current"] = None
            return None
        log.info("phase %d (%s) finished before the interruption; its weights are restored",
                 self.phase + 1, state["phases"][self.phase]["name"])
        return state["phases"][self.phase]["history"]

    def restore(self) -> tuple[int, bool]:
        """Restore the phase's state after its last finished epoch, if it was under way.

        Returns:
            ``(epochs done, whether early stopping had stopped it)``: ``(0, False)`` for a fresh start.
        """
        saved = self._saved_progress()
        if saved is None:
            self.stopping = EarlyStopping(self.patience) if self.patience else None
            self.rates = self.make_rates(None)
            return 0, False
        self.history = {key: list(values) for key, values in saved["history"].items()}
        self.stopping = EarlyStopping(self.patience, saved["early_stopping"]) if self.patience else None
        self.rates = self.make_rates(saved.get("schedule"))  # none in checkpoints of tlkit before schedules
        log.info("resuming phase %d after epoch %d", self.phase + 1, saved["epochs_done"])
        return saved["epochs_done"], saved["stopped"]

    def _saved_progress(self) -> dict | None:
        current = self.store.state["current"]
        if current is None or current["phase"] != self.phase:
            return None
        stopping = current["early_stopping"]
        if stopping is not None and stopping["best_weights"] is not None:
            best = self.store.read(stopping["best_weights"])
            if best is None:
                return None
            stopping = {**stopping, "best_weights": _with_frozen_part(self.fit_model, best)}
        self.fit_model.optimizer.build(self.fit_model.trainable_variables)
        if not self.store.load(current["arrays"], training_variables(self.fit_model)):
            return None
        return {**current, "early_stopping": stopping}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        first = not self.history  # later, a key the epochs before did not log (an older tlkit's) is left out
        for key, value in (logs or {}).items():
            if first or key in self.history:
                self.history.setdefault(key, []).append(float(value))
        self._save_epoch(epoch + 1, bool(self.fit_model.stop_training))

    def _save_epoch(self, epochs_done: int, stopped: bool) -> None:
        arrays = f"p{self.phase}-e{epochs_done}.npz"
        self.store.save(arrays, training_variables(self.fit_model))
        early = None
        stopping = self.stopping
        if stopping is not None:
            best = None
            if stopping.best_weights is not None:
                best = f"p{self.phase}-best-e{stopping.best_epoch + 1}.npz"
                if best not in self.store.state["arrays"]:
                    self.store.save(best, _trainable_part(self.fit_model, stopping.best_weights))
            early = {"wait": stopping.wait, "best": _float(stopping.best), "best_epoch": stopping.best_epoch,
                     "best_weights": best}
        self.store.state["current"] = {"phase": self.phase, "epochs_done": epochs_done, "history": self.history,
                                       "stopped": stopped, "early_stopping": early, "arrays": arrays,
                                       "schedule": rate_state(self.rates)}
        self.store.write_state()

    def finish(self) -> dict:
        """Record that the phase ended, with its history and the kept model's variables; returns the history."""
        self.store.save(f"phase-{self.phase}.npz", self.kept_model.variables)
        self.store.state["phases"].append({"name": self.name, "history": self.history})
        self.store.state["current"] = None
        self.store.write_state()
        return self.history


def training_variables(model: keras.Model) -> list:
    """Every variable a fit can change: trainable weights, random-stream states, the optimizer's variables.

    Frozen weights are left out (most of VGG16 in most phases): a resumed run rebuilds them
    exactly as they were, from the same weights and seed. (tlkit's models hold no batch
    normalisation, whose moving statistics would be frozen-looking weights that change.)
    """
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if v.trainable or id(v) not in weights] + list(model.optimizer.variables)


def _trainable_part(model: keras.Model, weights: list) -> list:
    """The entries of a ``get_weights()`` list that belong to trainable weights."""
    return [value for value, w in zip(weights, model.weights) if w.trainable]


def _with_frozen_part(model: keras.Model, trainable: list) -> list:
    """A whole ``get_weights()`` list: ``trainable`` values, and the frozen weights as they are."""
    values = iter(trainable)
    return [next(values) if w.trainable else current for w, current in zip(model.weights, model.get_weights())]


def _float(value) -> float | None:
    return None if value is None else float(value)
