"""``tlkit tune``: a search of the dense head's hyperparameters, each trial scored by K-fold on cached features.

The features are extracted (or read from the cache) and pooled once (:func:`tlkit.training.cv.pool_features`);
a trial then only trains K heads on them (:func:`tlkit.training.cv.score_folds`), on the same folds and
seeds as every other trial. A KerasTuner oracle proposes the trials (random search, or Bayesian
optimisation); this module runs them, one after the other, and keeps the records.

Objective: the mean over the folds of the held-out fold's cross-entropy (``val_loss``), lower is better;
ties go to the higher mean accuracy, then to the earlier trial. The loss rather than the accuracy: on the
small datasets a head is tuned for, a fold's accuracy moves in steps of one image and many settings tie at
100%, while the loss still tells a confident, right classifier from a lucky one. It is the plain
cross-entropy on the true labels (``tlkit evaluate``'s): no L2 penalty, no smoothing, so it compares
trials of any ``l2`` and ``label_smoothing``.

Resuming: the search lives in its folder. ``search.json`` says what it is of (data, fixed settings, space,
folds, algorithm: another search there is refused), the oracle's state is under ``keras_tuner/`` (written
whole: KerasTuner writes its files in place, which a kill could leave half written), and ``tune.json``
holds every finished trial. Rerunning the same command continues: a finished trial is never run again, one
cut short is run again first (the oracle queues the trials it had started for a retry).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras_tuner
import numpy as np

from tlkit.config import Config
from tlkit.errors import TlkitError
from tlkit.intervals import pooled_interval
from tlkit.io import atomic_write, read_json, write_json
from tlkit.locks import FolderLock, holder
from tlkit.outputs import check_output
from tlkit.training.cv import FoldPool, check_counts, pool_features, score_folds
from tlkit.training.tune_space import (ALGORITHMS, DEFAULT_SPACE, TUNE_DIR, TUNE_FOLDS, TUNE_TRIALS, check_space,
                                       fixed_settings, hyperparameters, toml_text, trial_config)

log = logging.getLogger("tlkit")

#: What the trials are ranked by (see the module docstring).
OBJECTIVE = "mean val_loss over the folds, lower is better (ties: higher mean val_accuracy)"
#: Trials Bayesian optimisation draws at random before its Gaussian process proposes the others.
BAYESIAN_RANDOM_TRIALS = 5
#: Files of a search folder: what it is of, every trial, the best settings, KerasTuner's state, the lock.
SEARCH_FILE, TRIALS_FILE, BEST_FILE, ORACLE_DIR, LOCK_FILE = ("search.json", "tune.json", "best.toml",
                                                             "keras_tuner", ".tlkit.lock")
#: Why a search stopped, in words.
STOPS = {"trials": "every trial requested is done", "time budget": "the time budget is spent: rerun to continue",
         "space": "every combination of the search space is tried"}
_TUNER = "tlkit"  # the oracle's name for the one process asking it for trials


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        out: The search folder.
        trials: Every finished trial, by number (from 1): ``{"number", "trial_id", "status" ("completed", or
            "failed": a loss that was not finite), "hyperparameters", "val_loss", "val_loss_std", "val_accuracy",
            "val_accuracy_std", "val_accuracy_ci95", "fold_val_loss", "fold_val_accuracy", "seconds"}``, the
            figures being the folds' mean, population standard deviation, and each fold's; the interval is the
            95% Wilson interval of the pooled held-out accuracy.
        ranking: The completed trials' numbers, best first.
        ran: Trials run by this call.
        stopped: Why the search stopped: a key of :data:`STOPS`.
        best_config: ``best.toml``: the settings of the best trial (``None`` before a trial completed).
    """

    out: Path
    trials: list[dict]
    ranking: list[int]
    ran: int
    stopped: str
    best_config: Path | None

    @property
    def best(self) -> dict | None:
        """The best trial's record, if any completed."""
        if not self.ranking:
            return None
        return next(trial for trial in self.trials if trial["number"] == self.ranking[0])


def tune(data: str | Path, config: Config | None = None, *, space: dict[str, Any] | None = None,
         trials: int = TUNE_TRIALS, folds: int = TUNE_FOLDS, algorithm: str = "random", out: str | Path = TUNE_DIR,
         time_budget: float | None = None, verbose: int = 0) -> TuneResult:
    """Search the head's hyperparameters on ``data``, or continue the search in ``out``.

    Args:
        data: As :func:`tlkit.cross_validate`'s: its train and validation images are pooled and dealt into folds.
        config: The settings that are not searched; defaults if omitted.
        space: A ``[tune]`` table (see :mod:`tlkit.training.tune_space`); ``None``: :data:`DEFAULT_SPACE`.
        trials: The trials the search runs in all, those of earlier calls included.
        folds: K of the K-fold that scores each trial.
        algorithm: ``random`` (random search) or ``bayesian`` (Bayesian optimisation; needs scikit-learn).
        out: The search folder: created, or continued when it holds the same search.
        time_budget: Seconds from the call after which no trial starts (``None``: no limit).
        verbose: 0 silent, 1 progress bars while extracting features. Each trial is logged.

    Raises:
        TlkitError: On a bad space or option, bad data, or a folder holding another search or in use.
    """
    started = time.monotonic()
    config = config or Config()
    space = check_space(DEFAULT_SPACE if space is None else space, config)
    _check_options(trials, folds, algorithm, time_budget)
    out = check_output(out, folder=True)
    out.mkdir(exist_ok=True)
    lock = FolderLock.try_acquire(out / LOCK_FILE)
    if lock is None:
        raise TlkitError(f"{out} is in use by {holder(out / LOCK_FILE)}; wait for it or give another --out")
    with lock:
        search = {"data": str(Path(data).resolve()), "algorithm": algorithm, "folds": folds, "space": space,
                  "settings": fixed_settings(config, space)}
        _claim(out, search)  # before the features: another search is refused at once
        pool = pool_features(data, config, folds, verbose)
        search["features"] = pool.features.name
        _claim(out, search)
        oracle = _oracle(search, trials, config.data.seed, out)
        records = _finished(out, oracle)
        if records:
            log.info("continuing the search in %s: %d of %d trial(s) finished", out, len(records), trials)
        ran, stopped = 0, "trials"
        while True:
            if time_budget is not None and time.monotonic() - started >= time_budget:
                stopped = "time budget"
                break
            trial = oracle.create_trial(_TUNER)
            if trial.status == "STOPPED":
                stopped = "trials" if len(oracle.trials) >= trials else "space"
                break
            record = _run_trial(trial, pool, config, folds)
            log.info("trial %d/%d: %s", record["number"], trials, _describe(record))
            records[trial.trial_id] = record
            _write(out, {**search, "state": "running"}, records, trials)  # before the oracle ends it, see _finished
            if record["status"] == "completed":
                oracle.update_trial(trial.trial_id, {"val_loss": record["val_loss"],
                                                     "val_accuracy": record["val_accuracy"]})
            trial.status = "COMPLETED" if record["status"] == "completed" else "FAILED"
            oracle.end_trial(trial)
            oracle.save()  # end_trial saves its state before it lets the trial go: a rerun would run it again
            ran += 1
        ranking = _write(out, {**search, "state": stopped, "time_budget": time_budget}, records, trials)
        best = out / BEST_FILE if ranking else None
        if best is not None:
            top = next(record for record in records.values() if record["number"] == ranking[0])
            comment = (f"tlkit tune: trial {top['number']}, the best of {len(records)} on {search['data']}: mean "
                       f"val_loss {top['val_loss']:.4f}, mean val_accuracy {top['val_accuracy']:.4f} over {folds} "
                       f"folds\nuse: tlkit train DATA --config {best}")
            text = toml_text(trial_config(config, top["hyperparameters"]), comment)
            atomic_write(best, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return TuneResult(out=out, trials=sorted(records.values(), key=lambda record: record["number"]),
                      ranking=ranking, ran=ran, stopped=stopped, best_config=best)


def _check_options(trials: int, folds: int, algorithm: str, time_budget: float | None) -> None:
    if trials < 1:
        raise TlkitError(f"invalid trials: {trials!r}; expected an integer >= 1")
    check_counts(folds, 1)
    if algorithm not in ALGORITHMS:
        raise TlkitError(f"invalid algorithm: {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if algorithm == "bayesian":
        try:
            import sklearn.gaussian_process  # noqa: F401  (KerasTuner's Bayesian oracle fits one)
        except ImportError as exc:
            raise TlkitError(f"the bayesian algorithm needs scikit-learn, which does not import ({exc}): pip "
                             "install scikit-learn (or use random)") from None
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget >= 0):
        raise TlkitError(f"invalid time budget: {time_budget!r}; expected seconds >= 0")


def _claim(out: Path, search: dict) -> None:
    """Refuse a folder holding anything but the same search; record the search in a new one once it is whole."""
    path = out / SEARCH_FILE
    if not path.is_file():
        if any(not name.startswith(".") for name in os.listdir(out)):
            raise TlkitError(f"{out} is not empty and holds no tlkit tune search ({SEARCH_FILE}); give another --out")
        if "features" in search:
            write_json(path, search)
        return
    held = read_json(path)
    for key, value in search.items():
        if json.loads(json.dumps(value)) == held.get(key):
            continue
        if key == "settings":
            name = next(name for name in value if held[key].get(name, object()) != value[name])
            raise TlkitError(f"{out} holds a search with {name} = {held[key].get(name)!r}, not {value[name]!r}; "
                             "give the same settings, or another --out")
        if key == "features":
            raise TlkitError(f"the images of {search['data']} changed since the search in {out} began; give "
                             "another --out to search anew")
        raise TlkitError(f"{out} holds a search with another {key} ({held.get(key)!r}, not {value!r}); give the "
                         "same, or another --out")


class _AtomicState:
    """Mixed into an oracle: its state and its trials' files written whole (see the module docstring)."""

    def save(self) -> None:
        state = json.dumps(self.get_state())
        atomic_write(self._get_oracle_fname(), lambda tmp: Path(tmp).write_text(state, encoding="utf-8"))

    def _save_trial(self, trial) -> None:
        state = json.dumps(trial.get_state())
        atomic_write(Path(self._get_trial_dir(trial.trial_id)) / "trial.json",
                     lambda tmp: Path(tmp).write_text(state, encoding="utf-8"))


def _oracle(search: dict, trials: int, seed: int, out: Path):
    """The KerasTuner oracle of the search, reloaded from ``out`` when it was begun there."""
    if search["algorithm"] == "bayesian":
        base, extra = keras_tuner.oracles.BayesianOptimizationOracle, {"num_initial_points": BAYESIAN_RANDOM_TRIALS}
    else:
        base, extra = keras_tuner.oracles.RandomSearchOracle, {}
    oracle = type(base.__name__, (_AtomicState, base), {})(
        objective=keras_tuner.Objective("val_loss", "min"), max_trials=trials,
        hyperparameters=hyperparameters(search["space"]),
        seed=seed + 1,  # KerasTuner takes a seed of 0 for none
        max_consecutive_failed_trials=None, **extra)  # a diverged trial is a result, not a reason to stop
    oracle.verbose = 0  # each trial is logged here
    oracle._set_project_dir(str(out), ORACLE_DIR)
    if (out / ORACLE_DIR / "oracle.json").is_file():
        oracle.reload()  # which queues the trials it had started for a retry; and one killed as it was created:
        oracle._retry_queue += [key for key, trial in oracle.trials.items()
                                if trial.status == "RUNNING" and key not in oracle._retry_queue]
    return oracle


def _finished(out: Path, oracle) -> dict[str, dict]:
    """The records of tune.json whose trials the oracle ended: a record is written before its trial is ended,
    so a trial killed in between is run again, and its record replaced."""
    if not (out / TRIALS_FILE).is_file():
        return {}
    ended = {key for key, trial in oracle.trials.items() if trial.status in ("COMPLETED", "FAILED")
             and key not in oracle._retry_queue}
    return {record["trial_id"]: record for record in read_json(out / TRIALS_FILE)["trials"]
            if record["trial_id"] in ended}


def _run_trial(trial, pool: FoldPool, config: Config, folds: int) -> dict:
    """Score a trial's settings by K-fold on ``pool``: its record (see :class:`TuneResult`)."""
    values = {name: int(value) if isinstance(value, (int, np.integer)) else
              float(value) if isinstance(value, (float, np.floating)) else value
              for name, value in trial.hyperparameters.values.items()}
    begun = time.monotonic()
    results = score_folds(pool, trial_config(config, values), folds, level=logging.DEBUG)
    loss = np.array([result["val_loss"] for result in results])
    accuracy = np.array([result["val_accuracy"] for result in results])
    finite = bool(np.all(np.isfinite(loss)))
    record = {"number": int(trial.trial_id) + 1, "trial_id": trial.trial_id,
              "status": "completed" if finite else "failed", "hyperparameters": values}
    for name, scores in (("val_loss", loss), ("val_accuracy", accuracy)):
        record |= {name: float(scores.mean()) if finite else None, f"{name}_std": float(scores.std()) if finite
                   else None, f"fold_{name}": [float(x) if math.isfinite(x) else None for x in scores]}
    record["val_accuracy_ci95"] = list(pooled_interval(results)) if finite else None
    return record | {"seconds": round(time.monotonic() - begun, 3)}


def _describe(record: dict) -> str:
    settings = ", ".join(f"{name}={format_value(value)}" for name, value in record["hyperparameters"].items())
    if record["status"] != "completed":
        return f"failed: the loss was not finite (diverged) ({settings})"
    return (f"val_loss {record['val_loss']:.4f} +/- {record['val_loss_std']:.4f}, val_accuracy "
            f"{record['val_accuracy']:.4f} +/- {record['val_accuracy_std']:.4f} in {record['seconds']:.1f} s "
            f"({settings})")


def format_value(value: Any) -> str:
    """A hyperparameter's value for a table or a log line (3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write(out: Path, search: dict, records: dict[str, dict], trials: int) -> list[int]:
    """Write tune.json: the search, the ranking, every finished trial. Returns the ranking."""
    completed = [record for record in records.values() if record["status"] == "completed"]
    ranking = [record["number"] for record in
               sorted(completed, key=lambda record: (record["val_loss"], -record["val_accuracy"], record["number"]))]
    write_json(out / TRIALS_FILE, {
        **search, "objective": OBJECTIVE, "trials_requested": trials, "trials_finished": len(records),
        "ranking": ranking, "best": ranking[0] if ranking else None,
        "trials": sorted(records.values(), key=lambda record: record["number"])})
    return ranking
