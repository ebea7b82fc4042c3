"""A run folder is written by one process at a time, and a cache built by one: a second process is told in
one line who holds it (a run) or waits for it (a cache); a lock left by a killed process blocks nobody."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.locks import RUN_LOCK, FolderLock, building_cache, lock_run
from tlkit.runs import CHECKPOINT_DIR, STATE_FILE

from conftest import make_dataset

#: Holds a lock (run folder or cache folder) in a child process, says so on stdout, then sleeps until killed.
HOLDER = """
import sys, time
from pathlib import Path
from tlkit.locks import building_cache, lock_run
kind, folder = sys.argv[1:]
if kind == "run":
    lock = lock_run(folder)
    print("held", flush=True)
    time.sleep(600)
with building_cache(Path(folder)):
    print("held", flush=True)
    time.sleep(float(kind))
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


def hold(*args: str) -> subprocess.Popen:
    """A child process holding a lock (see HOLDER), once it holds it."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


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
    """Another ``tlkit train`` of the same data and settings is running under runs/: a new run starts beside it."""
    caplog.set_level(logging.INFO, logger="tlkit")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    other = Path("runs") / "20260101-000000-features"
    (other / CHECKPOINT_DIR).mkdir(parents=True)
    (other / CHECKPOINT_DIR / STATE_FILE).write_text("{}")  # what it is does not matter: it is not looked at
    child = hold("run", str(other))
    try:
        result = tlkit.train(data, config, verbose=0, resume=None)
    finally:
        child.kill()
        child.wait()
    assert result.run_dir != other and "resuming" not in caplog.text and "left interrupted" not in caplog.text


def test_a_cache_being_built_is_waited_for_and_then_reused(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tlkit")
    folder = tmp_path / "cache" / "features" / "abc"
    folder.parent.mkdir(parents=True)
    child = hold("3", str(folder))  # builds for 3 s
    started = time.monotonic()
    with building_cache(folder):
        waited = time.monotonic() - started
    child.wait()
    assert waited > 1.5
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
