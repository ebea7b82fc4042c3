"""A training job before its first fit: which run folder (new, resumed, or an interrupted run of the same
data and settings found under ``runs/``), locked for this process; the dataset; the run's identity and
checkpoint; in a job of several processes, the agreement of all of them.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tlkit.backends.devices import Devices, all_or_none, resolve
from tlkit.config import DEFAULT_RUNS_DIR, Config
from tlkit.data.index import DatasetIndex
from tlkit.data.scan import require_classes, scan
from tlkit.errors import TlkitError
from tlkit.locks import RUN_LOCK, FolderLock, holder, in_use, lock_run, run_in_use
from tlkit.runs import CHECKPOINT_DIR, MODEL_FILE, STATE_FILE, Run, interrupted_runs, load_run, new_run_dir
from tlkit.training.checkpoint import CheckpointStore
from tlkit.training.identity import RunIdentity, check_resume, difference
from tlkit.training.callbacks import Diverged

log = logging.getLogger("tlkit")

#: Why a run of several processes is not resumed by them all, and what to do instead.
MULTIWORKER_RESUME = ("--resume is not available with --distribute multiworker: continue the run on one machine "
                      "(--resume --distribute mirrored), or start the job again with another --run-dir")
#: Settings an earlier run (``--from``) fixes: its model's shape, and its split, so that images it
#: trained on never end up in this run's validation or test split.
ADOPTED = {"data": ("image_size", "seed", "val_split", "test_split"), "model": ("pooling", "head_units", "dropout")}


@dataclass
class Job:
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
    lock: FolderLock | None = None  # this process's lock on the run folder
    again: bool = False  # the same command continues this run if it stops (no run_dir given, resume=None)

    def stopped(self, exc: BaseException, data: str | Path) -> None:
        """The job stopped: keep what can be resumed and say how, or remove a new run's folder."""
        if not self.devices.chief:
            return
        if isinstance(exc, Diverged):  # the same settings would diverge again: nothing worth resuming
            if not self.resumed:
                discard(self.out, self.keep_folder)
        elif self.store.has_progress():
            where = " --distribute mirrored" if self.devices.processes > 1 else ""  # see MULTIWORKER_RESUME
            same = "the same command continues them, as does " if self.again and not where else "continue with "
            log.warning("training stopped (%s); the finished epochs are kept in %s: %s`tlkit train %s --run-dir %s "
                        "--resume%s`", type(exc).__name__, self.out, same, data, self.out, where)
        elif not self.resumed:
            discard(self.out, self.keep_folder)

    def release(self) -> None:
        """Release the run folder's lock."""
        if self.lock is not None:
            self.lock.release()


def prepare(data: str | Path, config: Config | None, run_dir: str | Path | None, from_run: str | Path | None,
            resume: bool | None, changes: dict[str, dict]) -> Job:
    """Everything a run needs before its first fit; in a job of several processes, all go on or none does.

    ``resume``: ``True`` continues the interrupted run in ``run_dir`` (default: the latest under ``runs/`` that
    no process is training); ``None`` continues the latest such run under ``runs/`` of the same data and settings,
    if any (only without ``run_dir``), else starts a new run; ``False`` starts a new run.
    """
    if run_dir is not None and run_in_use(run_dir):
        raise TlkitError(in_use(run_dir))
    again = resume is None and run_dir is None
    store, lock, candidates = None, None, []
    with ExitStack() as held:  # the lock taken here is released if the job is not prepared
        if resume:
            _refuse_multiworker((config or Config()).replace(**changes))  # before anything is read or removed
            run_dir, lock = _resumable(run_dir)
            if lock is not None:
                held.enter_context(lock)
        if resume and not (Path(run_dir) / MODEL_FILE).exists():
            store = CheckpointStore.open(run_dir)
        config = (config or (store.config if store is not None else None) or Config()).replace(**changes)
        if resume:
            _refuse_multiworker(config)  # the run's own settings may ask for it
        if resume and (Path(run_dir) / MODEL_FILE).exists():
            CheckpointStore.remove_leftover(run_dir)  # killed after the model was saved, before the checkpoint went
            raise TlkitError(f"run {run_dir} has finished; there is nothing to resume")
        if resume is None and run_dir is None and config.runtime.distribute != "multiworker":
            candidates = _interrupted_here()
        if store is not None and from_run is None:
            from_run = store.from_run
        if from_run is not None and config.fit.mode != "finetune":
            raise TlkitError("--from is only for --mode finetune")
        job = _agreed(data, config, run_dir, from_run, store, candidates)
        held.pop_all()  # prepared: the job keeps the lock
    if lock is not None:
        job.lock = lock
    job.again = again
    return job


def _agreed(data: str | Path, config: Config, run_dir: str | Path | None, from_run: str | Path | None,
            store: CheckpointStore | None, candidates: list[tuple[Path, CheckpointStore]]) -> Job:
    """The job, once every process of it is ready on the same files with the same settings (or all stop)."""
    devices = resolve(config.runtime.distribute)  # first: a multiworker process joins its cluster
    job = None
    try:
        try:
            job = _open_run(data, config, run_dir, from_run, store, devices, candidates=candidates)
        except (TlkitError, OSError) as exc:
            all_or_none(devices, str(exc), None)  # in a job of several processes, all stop with this error
            raise
        all_or_none(devices, None, job.identity.digests())
    except BaseException:
        if job is not None:
            if job.out is not None and not job.resumed:
                discard(job.out, job.keep_folder)
            job.release()  # a lock taken here (the caller releases its own)
        raise
    return job


def _refuse_multiworker(config: Config) -> None:
    """A resume is not taken up by the processes of a job (see :data:`MULTIWORKER_RESUME`)."""
    if config.runtime.distribute == "multiworker":
        raise TlkitError(MULTIWORKER_RESUME)


def _resumable(run_dir: str | Path | None) -> tuple[Path, FolderLock | None]:
    """The run folder a resume continues, locked before its checkpoint is read (no other process writes it
    meanwhile): ``run_dir``, or the interrupted run under ``runs/`` checkpointed last that no process is training.

    Raises:
        TlkitError: If ``run_dir`` is in use, or without it, if no interrupted run is free.
    """
    if run_dir is not None:
        run_dir = Path(run_dir)
        if (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file() or (run_dir / MODEL_FILE).exists():
            return run_dir, lock_run(run_dir)
        return run_dir, None  # nothing to resume: a new run starts there
    busy = []
    for run in interrupted_runs(DEFAULT_RUNS_DIR):
        lock = FolderLock.try_acquire(run / RUN_LOCK)
        if lock is None:
            busy.append(f"{run} is in use by {holder(run / RUN_LOCK)}")
        elif (run / CHECKPOINT_DIR / STATE_FILE).is_file() and not (run / MODEL_FILE).exists():
            return run, lock
        else:
            lock.release()  # it finished meanwhile
    also = f" ({'; '.join(busy)})" if busy else ""
    raise TlkitError(f"no interrupted run under {DEFAULT_RUNS_DIR}/ to resume{also}; give --run-dir")


def _interrupted_here() -> list[tuple[Path, CheckpointStore]]:
    """The interrupted runs under ``runs/``, newest first, with their checkpoints as read now, without their
    locks (:func:`_take_same_run` reads the one it takes again); those that cannot be read are left alone."""
    found = []
    for run in interrupted_runs(DEFAULT_RUNS_DIR):
        try:
            store = CheckpointStore.open(run)
        except TlkitError:
            continue
        if store is not None:
            found.append((run, store))
    return found


def _take_same_run(candidates: list[tuple[Path, CheckpointStore]],
                   identity: RunIdentity) -> tuple[Path, CheckpointStore, FolderLock] | None:
    """The newest interrupted run of the same data and settings that no process is training, locked, with its
    checkpoint read under the lock, said so; or ``None``, naming those left."""
    left = []
    for run, store in candidates:
        differs = difference(store.state, store.config, identity)
        if differs is not None:
            if not run_in_use(run):  # one that another process trains is not interrupted
                left.append(f"{run} ({differs})")
            continue
        lock = FolderLock.try_acquire(run / RUN_LOCK)
        if lock is None:
            left.append(f"{run} (in use by {holder(run / RUN_LOCK)})")
            continue
        store = _still_interrupted(run, identity)
        if store is None:  # finished, or changed, since it was read: not this one
            lock.release()
            continue
        state = store.state
        current = state["current"]
        phase, epoch = (current["phase"] + 1, current["epochs_done"] + 1) if current else (len(state["phases"]) + 1, 1)
        log.info("resuming interrupted run %s at phase %d epoch %d (same data and settings); --new starts afresh",
                 run, phase, epoch)
        return run, store, lock
    if left:
        log.info("left interrupted run%s %s; starting a new run", "s" if len(left) > 1 else "", ", ".join(left))
    return None


def _still_interrupted(run: Path, identity: RunIdentity) -> CheckpointStore | None:
    """The checkpoint of ``run`` (whose lock this process holds) if it is still an interrupted run of ``identity``."""
    if (run / MODEL_FILE).exists():
        return None
    try:
        store = CheckpointStore.open(run)
    except TlkitError:
        return None
    if store is None or difference(store.state, store.config, identity) is not None:
        return None
    return store


def _open_run(data: str | Path, config: Config, run_dir: str | Path | None, from_run: str | Path | None,
              store: CheckpointStore | None, devices: Devices, *,
              candidates: list[tuple[Path, CheckpointStore]]) -> Job:
    """Read the earlier run and the dataset, then open the interrupted run or create the new one (last)."""
    with devices.scope():  # an earlier run's model trains on every device too
        start = load_run(from_run) if from_run is not None else None
    if start is not None:
        config = _adopt(start, config)
    index = scan(data, config.data)
    require_classes(index)
    if index.multi_label and config.fit.class_weight != "none":
        raise TlkitError("--class-weight auto weighs classes of single-label data; multi-label data has none to weigh")
    if not index.files["val"]:
        raise TlkitError(f"no validation images in {index.root}: set --val-split above 0 or add a validation/ folder")
    if start is not None and (start.class_names, start.multi_label) != (index.class_names, index.multi_label):
        raise TlkitError(f"run {start.path} was trained on classes {', '.join(start.class_names)}, "
                         f"but {index.root} has {', '.join(index.class_names)}")
    identity = RunIdentity.of(data, index, config, from_run)  # a missing weights file fails before the folder is made
    lock = None
    with ExitStack() as held:  # what is taken or made here is released or removed if the run cannot be opened
        if store is None and candidates:
            same = _take_same_run(candidates, identity)
            if same is not None:
                run_dir, store, lock = same
                held.enter_context(lock)
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
            lock = held.enter_context(lock_run(out))  # before anything is written: a second process is refused,
            held.callback(discard, out, keep_folder)  # and removes nothing; ours is removed while still locked
            store = CheckpointStore.create(out, identity, config)
        held.pop_all()  # opened: the job keeps the lock and the folder
    return Job(out, index, config, devices, store, identity, start, resumed, keep_folder, lock=lock)


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


def discard(out: Path, keep_folder: bool) -> None:
    """Remove a failed run's files: its folder is whole or absent (an empty one given by the user stays, empty)."""
    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for leftover in out.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
