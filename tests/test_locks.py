"""A run folder is written by one process at a time, and a cache built by one: a second process is told in
one line who holds it (a run) or waits for it (a cache); a lock left by a killed process blocks nobody."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.locks import RUN_LOCK, FolderLock, building_cache, lock_run, run_in_use
from tlkit.runs import CHECKPOINT_DIR, MODEL_FILE, STATE_FILE
from tlkit.training import job

from conftest import make_dataset, stop_at

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

#: Holds a lock in a child process and says so on stdout: a run folder's until killed, or a cache folder's
#: for KIND seconds, then touches MARKER (if given) just before it lets go.
HOLDER = """
import sys, time
from pathlib import Path
from tlkit.locks import building_cache, lock_run
kind, folder, *marker = sys.argv[1:]
if kind == "run":
    lock = lock_run(folder)
    print("held", flush=True)
    time.sleep(600)
with building_cache(Path(folder)):
    print("held", flush=True)
    time.sleep(float(kind))
    for path in marker:
        Path(path).touch()
"""

#: Trains slowly (a pause after every epoch) in a run folder, until killed.
SLOW_TRAINING = """
import json, sys, time
import keras, tlkit
from tlkit.config import config_from_dict

class Slow(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(1)

data, run_dir, config = sys.argv[1:]
tlkit.train(data, config_from_dict(json.loads(config)), run_dir=run_dir, verbose=0, callbacks=[Slow()])
"""


def hold(*args: str, timeout: float = 120) -> subprocess.Popen:
    """A child process holding a lock (see HOLDER), once it holds it (it fails the test after ``timeout`` s)."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    if not ready or child.stdout.readline().strip() != "held":
        child.kill()
        child.wait()
        pytest.fail(f"the holder did not take the lock within {timeout} s (exit status {child.returncode})")
    return child


def stop(child: subprocess.Popen) -> None:
    """Kill a holder (its lock dies with it)."""
    child.kill()
    child.wait()


def interrupted_run(data: Path, config: tlkit.Config) -> Path:
    """A new run under runs/ of ``data`` and ``config``, stopped by Ctrl-C in its 2nd epoch (1 finished)."""
    before = set(Path("runs").iterdir()) if Path("runs").is_dir() else set()
    with pytest.raises(KeyboardInterrupt):
        tlkit.train(data, config, verbose=0, callbacks=[stop_at(1)])
    (run,) = set(Path("runs").iterdir()) - before
    assert (run / CHECKPOINT_DIR / STATE_FILE).is_file()
    return run


def test_a_run_folder_held_by_a_process_is_refused_naming_it_until_that_process_dies(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    child = hold("run", str(run))
    try:
        with pytest.raises(tlkit.TlkitError) as error:
            lock_run(run)
        assert re.fullmatch(rf"run {re.escape(str(run))} is in use by process {child.pid} \(python, started "
                            r"\d\d:\d\d\); wait for it or give another --run-dir", str(error.value))
    finally:
        child.kill()
        child.wait()
    assert (run / RUN_LOCK).is_file()  # left behind by the killed process: it blocks nobody
    lock = lock_run(run)
    lock.release()
    assert not (run / RUN_LOCK).exists()  # a holder that ends normally removes its lock file


def test_resume_while_the_run_still_trains_is_refused_then_works_once_it_died(tmp_path, config):
    """A preempted-but-not-dead job: its --resume meets the original, still training; nothing is touched."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=8)
    config = config.replace(train={"mode": "frozen", "epochs": 30})
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, str(data), str(run),
                              json.dumps(config.to_dict())], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        state = run / CHECKPOINT_DIR / STATE_FILE
        while not (state.is_file() and json.loads(state.read_text())["current"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert child.poll() is None, "the training ended before the test could meet it"
        for args in (["--resume"], []):  # resuming it, or a new run there
            refused = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(run), *args])
            assert refused.exit_code == 1, refused.output
            assert re.fullmatch(rf"Error: run {re.escape(str(run))} is in use by process {child.pid} \(python, "
                                r"started \d\d:\d\d\); wait for it or give another --run-dir\n", refused.output)
        assert child.poll() is None  # the training goes on, unharmed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = json.loads(state.read_text())["current"]["epochs_done"]
    tlkit.train(data, run_dir=run, verbose=0, resume=True)  # its lock died with it
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == [30] and done < 30
    assert not (run / RUN_LOCK).exists()


def test_a_run_in_use_is_not_taken_for_an_interrupted_one(tmp_path, config, caplog):
    """Another process trains an interrupted run of the same data and settings (resumed it): the same command
    starts a new run beside it, naming it; once that process is gone, the same command continues it."""
    caplog.set_level(logging.INFO, logger="tlkit")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3})
    run = interrupted_run(data, config)
    child = hold("run", str(run))
    try:
        result = tlkit.train(data, config, verbose=0, resume=None)
    finally:
        stop(child)
    assert result.run_dir != run and "resuming interrupted" not in caplog.text
    assert f"left interrupted run {run} (in use by process {child.pid} (python, started " in caplog.text
    assert (run / CHECKPOINT_DIR / STATE_FILE).is_file() and not (run / MODEL_FILE).exists()
    again = tlkit.train(data, config, verbose=0, resume=None)  # the control: free, it is taken
    assert again.run_dir == run and f"resuming interrupted run {run} at phase 1 epoch 2" in caplog.text


def test_a_run_another_process_takes_after_it_was_found_is_left_to_it(tmp_path, config, caplog, monkeypatch):
    """Found interrupted, then taken by another ``tlkit train`` before this one locks it: a new run starts."""
    caplog.set_level(logging.INFO, logger="tlkit")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3})
    run = interrupted_run(data, config)
    children, scan = [], job.scan

    def taken_meanwhile(*args, **kwargs):  # runs after the interrupted runs were read, before one is taken
        children.append(hold("run", str(run)))
        return scan(*args, **kwargs)

    monkeypatch.setattr(job, "scan", taken_meanwhile)
    try:
        result = tlkit.train(data, config, verbose=0, resume=None)
    finally:
        for child in children:
            stop(child)
    assert result.run_dir != run and "resuming interrupted" not in caplog.text
    assert f"left interrupted run {run} (in use by process {children[0].pid} " in caplog.text


def test_a_run_finished_after_it_was_found_is_not_resumed(tmp_path, config, caplog, monkeypatch):
    """Found interrupted, then finished by another process before this one locks it: its stale checkpoint is
    not resumed (the finished run is left whole), a new run starts."""
    caplog.set_level(logging.INFO, logger="tlkit")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3})
    run = interrupted_run(data, config)
    scans, whole, scan = [], {}, job.scan

    def finished_meanwhile(*args, **kwargs):
        scans.append(args)
        if len(scans) == 1:  # this one's scan (the other process's own is the 2nd): the run is finished now
            tlkit.train(data, run_dir=run, verbose=0, resume=True)
            whole.update({p: p.read_bytes() for p in run.rglob("*") if p.is_file()})
        return scan(*args, **kwargs)

    monkeypatch.setattr(job, "scan", finished_meanwhile)
    result = tlkit.train(data, config, verbose=0, resume=None)
    assert (run / MODEL_FILE).is_file() and result.run_dir != run and "resuming interrupted" not in caplog.text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == whole  # left as that process wrote it


def test_resume_without_run_dir_takes_the_latest_run_no_process_trains(tmp_path, config):
    """``tlkit train DATA --resume``: the run checkpointed last is being trained by another process, so the one
    before it is continued; with none free, the error names the one in use."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3})
    older = interrupted_run(data, config)
    newer = interrupted_run(data, config)
    child = hold("run", str(newer))
    try:
        assert tlkit.train(data, verbose=0, resume=True).run_dir == older
        with pytest.raises(tlkit.TlkitError) as error:
            tlkit.train(data, verbose=0, resume=True)
    finally:
        stop(child)
    assert re.fullmatch(rf"no interrupted run under runs/ to resume \({re.escape(str(newer))} is in use by process "
                        rf"{child.pid} \(python, started \d\d:\d\d\)\); give --run-dir", str(error.value))
    assert (older / MODEL_FILE).is_file() and not (newer / MODEL_FILE).exists()


def test_a_look_at_a_run_never_makes_taking_it_fail(tmp_path, monkeypatch):
    """:func:`run_in_use` holds the lock (shared) for an instant, here stretched: taking the run then succeeds."""
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_LOCK).write_text("")  # left by a killed process: blocks nobody
    looking, flock = threading.Event(), fcntl.flock

    def slow_look(handle: int, operation: int) -> None:
        flock(handle, operation)
        if operation & fcntl.LOCK_SH:
            looking.set()
            time.sleep(0.2)

    monkeypatch.setattr(fcntl, "flock", slow_look)
    seen = []
    looker = threading.Thread(target=lambda: seen.append(run_in_use(run)))
    looker.start()
    try:
        assert looking.wait(30)
        lock = lock_run(run)
    finally:
        looker.join()
    assert seen == [False] and run_in_use(run)  # free when looked at; held now
    lock.release()


def test_a_lock_whose_record_cannot_be_written_is_not_kept(tmp_path, monkeypatch):
    path = tmp_path / "x.lock"

    def full_disk(handle: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", full_disk)
        with pytest.raises(OSError, match="No space left"):
            FolderLock.try_acquire(path)
    lock = FolderLock.try_acquire(path)  # None if the failed attempt still held it
    assert lock is not None
    lock.release()


def test_a_lock_is_released_even_when_its_file_cannot_be_removed(tmp_path, monkeypatch):
    path = tmp_path / "x.lock"

    def refused(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    lock = FolderLock.try_acquire(path)
    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", refused)
        lock.release()
    assert path.is_file()  # left behind: it blocks nobody
    again = FolderLock.try_acquire(path)  # None if the lock were still held
    assert again is not None
    with again:  # a with block releases it too
        assert again.handle >= 0
    assert again.handle == -1 and not path.exists()


def test_a_cache_being_built_is_waited_for_until_it_is_built(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tlkit")
    folder = tmp_path / "cache" / "features" / "abc"
    folder.parent.mkdir(parents=True)
    built = tmp_path / "built"
    child = hold("1", str(folder), str(built))  # builds for 1 s, then touches built
    try:
        with building_cache(folder):
            assert built.exists()  # in only once the builder was done
    finally:
        child.wait(timeout=60)
    assert f"cache {folder} is being built by process {child.pid} (python, started" in caplog.text
    assert not any(p.name.endswith(".lock") for p in folder.parent.iterdir())


def test_a_cache_lock_of_a_killed_builder_blocks_nobody(tmp_path):
    folder = tmp_path / "images" / "abc"
    folder.parent.mkdir(parents=True)
    child = hold("600", str(folder))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (folder.parent / ".abc.lock").is_file()
    lock = FolderLock.try_acquire(folder.parent / ".abc.lock")
    assert lock is not None
    lock.release()


def test_two_extractions_of_one_dataset_build_its_cache_once(tmp_path, config):
    """Two processes extract the same features at once: one builds, the other waits and reuses it."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    script = ("import json, sys, tlkit; from tlkit.config import config_from_dict; "
              "f = tlkit.extract(sys.argv[1], config_from_dict(json.loads(sys.argv[2])), verbose=0); "
              "print('reused' if f.reused else 'built')")
    children = [subprocess.Popen([sys.executable, "-c", script, str(data), json.dumps(config.to_dict())],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = sorted(child.communicate(timeout=300)[0].strip() for child in children)
    assert outputs == ["built", "reused"]
