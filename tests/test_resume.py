"""Interrupted training resumes: a real training process is killed (SIGKILL) mid-epoch, then resumed."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.runs import CHECKPOINT_DIR, STATE_FILE

from conftest import COLOURS, make_dataset, write_image

#: Trains with tlkit.train and SIGKILLs its own process at a point given as ``batch:PHASE:EPOCH:BATCH`` (after
#: that batch), ``end:PHASE`` (as that phase's fit ends, after early stopping restored its best weights) or
#: ``state:N`` (in the N-th checkpoint write, after the epoch's arrays are saved, before state.json names them).
KILLER = """
import json, os, signal, sys
import keras, tlkit
from tlkit.config import config_from_dict
from tlkit.training.checkpoint import CheckpointStore

data, run_dir, where, config = sys.argv[1:]
kind, *at = where.split(":")
at = tuple(int(n) for n in at)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class KillAt(keras.callbacks.Callback):
    phase = -1
    def on_train_begin(self, logs=None):
        self.phase += 1
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if kind == "batch" and (self.phase, self.epoch, batch) == at:
            die()
    def on_train_end(self, logs=None):
        if kind == "end" and (self.phase,) == at:
            die()

write_state, writes = CheckpointStore.write_state, []
def dying_write_state(self):
    writes.append(1)
    if kind == "state" and (len(writes),) == at:
        die()
    write_state(self)
CheckpointStore.write_state = dying_write_state

tlkit.train(data, config_from_dict(json.loads(config)), run_dir=run_dir, verbose=0, callbacks=[KillAt()])
"""


def kill_during_training(data: Path, run_dir: Path, config: tlkit.Config, where: str):
    """Train in a child process that is SIGKILLed at ``where`` (see KILLER); returns the finished process."""
    process = subprocess.run([sys.executable, "-c", KILLER, str(data), str(run_dir), where,
                              json.dumps(config.to_dict())], capture_output=True, text=True, timeout=300)
    assert process.returncode == -9, process.stderr[-3000:]  # killed, not finished or crashed
    return process


def history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "d", ("blue", "red"), per_class=10)


@pytest.fixture
def contrary(tmp_path):
    """Validation images labelled against their training class: the better training gets, the worse validation
    gets, so early stopping ends every phase after ``patience`` epochs, on every backend."""
    root = make_dataset(tmp_path / "c", ("blue", "red"), per_class=8, splits=["train"])
    for name, colour in (("blue", "red"), ("red", "blue")):
        for i in range(4):
            write_image(root / "validation" / name / f"{i}.jpg", COLOURS[colour], seed=100 + i)
    return root


@pytest.mark.parametrize("mode, warmup_mode, augment_on, stops_early, where, phase, done", [
    # in the head warm-up on cached features, mid-epoch 2
    ("finetune", "features", "device", True, "batch:0:1:0", 0, 1),
    ("finetune", "features", "device", False, "batch:1:1:0", 1, 1),  # while fine-tuning
    # in a frozen warm-up augmented on the CPU (numpy's random streams: the same on every backend)
    pytest.param("finetune", "frozen", "cpu", False, "batch:0:1:0", 0, 1, marks=pytest.mark.backend_independent),
    ("frozen", "features", "device", True, "batch:0:1:0", 0, 1),
    # after early stopping ended the warm-up, before the phase was recorded as finished (checkpoint logic)
    pytest.param("finetune", "features", "device", True, "end:0", 0, None, marks=pytest.mark.backend_independent),
    # epoch 2's arrays written, state.json still at epoch 1 (write 1 is the start, 2 after epoch 1)
    pytest.param("frozen", "features", "device", False, "state:3", 0, 1, marks=pytest.mark.backend_independent),
])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, data, contrary, config, mode, warmup_mode,
                                                         augment_on, stops_early, where, phase, done):
    epochs = 6 if stops_early else 3
    config = config.replace(train={"mode": mode, "epochs": epochs, "warmup_epochs": epochs, "patience": 2,
                                   "warmup_mode": warmup_mode, "augment_on": augment_on, "learning_rate": 1e-2})
    data = contrary if stops_early else data
    whole = tlkit.train(data, config, run_dir=tmp_path / "whole", verbose=0)
    if stops_early:  # early stopping ended the phase: its state (wait, best weights) must survive the kill too
        assert whole.metrics["epochs_run"][phase] < epochs
    killed = tmp_path / "killed"
    kill_during_training(data, killed, config, where)
    current = json.loads((killed / CHECKPOINT_DIR / STATE_FILE).read_text())["current"]
    assert current["phase"] == phase and not (killed / "model.keras").exists()
    if done is None:  # stopped early: every epoch it ran is checkpointed, and so is the decision to stop
        done = whole.metrics["epochs_run"][phase]
        assert current["stopped"]
    assert current["epochs_done"] == done

    resumed = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(killed), "--resume"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming phase {phase + 1} after epoch {done}" in resumed.output  # resumed, not started again
    assert "starts again" not in resumed.output
    assert not (killed / CHECKPOINT_DIR).exists()
    assert_same_training(killed, whole.run_dir)


def assert_same_training(run: Path, reference: Path) -> None:
    """The same phases and epochs, with the same losses: the same batches, weights and optimizer state."""
    ours, theirs = history(run), history(reference)
    assert [p["name"] for p in ours] == [p["name"] for p in theirs]
    for a, b in zip(ours, theirs):
        assert len(a["history"]["loss"]) == len(b["history"]["loss"])
        np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["history"]["val_loss"], b["history"]["val_loss"], rtol=1e-6)
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert ours["epochs_run"] == theirs["epochs_run"]
    assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-6)


class StopAt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (Ctrl-C) after batch 0 of epoch ``epoch`` of the ``phase``-th fit."""

    def __init__(self, phase: int, epoch: int) -> None:
        super().__init__()
        self.target, self.phase = (phase, epoch), -1

    def on_train_begin(self, logs=None):
        self.phase += 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.phase, self.epoch) == self.target:
            raise KeyboardInterrupt


@dataclass
class Interrupted:
    """A finetune run stopped by Ctrl-C in epoch 2 of fine-tuning (its warm-up finished), and what it logged."""

    data: Path
    config: tlkit.Config
    run: Path
    whole: Path  # the same run, uninterrupted
    log: str


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Interrupted:
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "d", ("blue", "red"), per_class=10)
    config = tlkit.Config().replace(
        data={"image_size": 32, "cache_dir": str(root / "cache"), "workers": 2, "val_split": 0.3},
        train={"weights": "none", "batch_size": 8, "mode": "finetune", "epochs": 3, "warmup_epochs": 2,
               "patience": 2})
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("tlkit").addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            tlkit.train(data, config, run_dir=root / "run", verbose=0, callbacks=[StopAt(1, 1)])
    finally:
        logging.getLogger("tlkit").removeHandler(handler)
    whole = tlkit.train(data, config, run_dir=root / "whole", verbose=0).run_dir
    return Interrupted(data, config, root / "run", whole, "\n".join(messages))


@pytest.fixture
def interrupted(origin, tmp_path) -> Interrupted:
    """A copy of the interrupted run, for one test to resume or damage."""
    return dataclasses.replace(origin, run=Path(shutil.copytree(origin.run, tmp_path / "run")))


def test_interrupted_run_keeps_its_checkpoint_and_resumes(interrupted, caplog):
    assert "--resume" in interrupted.log  # it said how to continue
    run = interrupted.run
    assert (run / CHECKPOINT_DIR / STATE_FILE).is_file() and not (run / "model.keras").exists()
    caplog.set_level(logging.INFO, logger="tlkit")
    tlkit.train(interrupted.data, run_dir=run, verbose=0, resume=True)  # settings come from the checkpoint
    assert "resuming phase 2 after epoch 1" in caplog.text
    assert_same_training(run, interrupted.whole)


def test_resume_finds_the_same_files_at_another_path(tmp_path, interrupted):
    """A preempted job restarting on another machine finds its data copied elsewhere (new paths and times)."""
    moved = Path(shutil.copytree(interrupted.data, tmp_path / "elsewhere"))  # new mtimes and ctimes too
    tlkit.train(moved, run_dir=interrupted.run, verbose=0, resume=True)
    assert_same_training(interrupted.run, interrupted.whole)


@pytest.mark.backend_independent  # which settings a resume may change
def test_resume_may_name_other_devices(interrupted):
    """--distribute describes the machine, as --workers does: a resume may change it."""
    tlkit.train(interrupted.data, interrupted.config.replace(train={"distribute": "none"}), run_dir=interrupted.run,
                verbose=0, resume=True)
    assert_same_training(interrupted.run, interrupted.whole)


def test_resume_without_run_dir_takes_the_latest_interrupted_run(tmp_path, interrupted):
    (tmp_path / "runs").mkdir()
    run = interrupted.run.rename(tmp_path / "runs" / "20260101-000000-finetune")
    result = CliRunner().invoke(main, ["train", str(interrupted.data), "--resume", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_same_training(run, interrupted.whole)
    again = CliRunner().invoke(main, ["train", str(interrupted.data), "--resume"])
    assert again.exit_code == 1 and "no interrupted run under runs/" in again.output


def test_a_run_with_a_checkpoint_is_never_overwritten(interrupted):
    data, run = interrupted.data, interrupted.run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(run), "--quiet"])
    assert refused.exit_code == 1 and "add --resume" in refused.output
    other = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(run), "--resume", "--epochs", "9"])
    assert other.exit_code == 1 and "epochs=3 (not 9)" in other.output and "Traceback" not in other.output
    extra = shutil.copy(data / "red" / "red_00.jpg", data / "red" / "added.jpg")
    try:
        changed = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(run), "--resume"])
    finally:
        Path(extra).unlink()  # the dataset is shared by this module's tests
    assert changed.exit_code == 1 and "changed since" in changed.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_of_a_finished_run_is_refused(interrupted):
    result = CliRunner().invoke(main, ["train", str(interrupted.data), "--run-dir", str(interrupted.whole),
                                       "--resume"])
    assert result.exit_code == 1 and "has finished" in result.output


@pytest.mark.backend_independent  # checkpoint files and their checksums
@pytest.mark.parametrize("damaged", ["epoch", "best", "phase"])
def test_damaged_checkpoint_arrays_start_their_phase_again(interrupted, damaged, caplog):
    folder = interrupted.run / CHECKPOINT_DIR
    target = {"epoch": "p1-e1.npz", "best": "p1-best-e1.npz", "phase": "phase-0.npz"}[damaged]
    assert (folder / target).is_file(), sorted(p.name for p in folder.iterdir())
    (folder / target).write_bytes((folder / target).read_bytes()[:100])  # truncated
    tlkit.train(interrupted.data, run_dir=interrupted.run, verbose=0, resume=True)
    assert f"checkpoint file {folder / target} is missing or damaged; that phase starts again" in caplog.text
    assert_same_training(interrupted.run, interrupted.whole)  # the phase (or the run) again: the same result


def test_a_damaged_checkpoint_state_is_refused_and_said_what_to_do(interrupted):
    state = interrupted.run / CHECKPOINT_DIR / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    before = {p: p.read_bytes() for p in interrupted.run.rglob("*") if p.is_file()}
    args = ["train", str(interrupted.data), "--run-dir", str(interrupted.run), "--resume"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert "cannot be used" in refused.output and f"delete {state.parent}" in refused.output
    assert {p: p.read_bytes() for p in interrupted.run.rglob("*") if p.is_file()} == before  # nothing deleted
    shutil.rmtree(state.parent)  # as the message says: the run starts again from the beginning
    again = CliRunner().invoke(main, [*args, *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in {
        "image_size": 32, "weights": "none", "batch_size": 8, "mode": "finetune", "epochs": 3, "warmup_epochs": 2,
        "patience": 2, "val_split": 0.3, "cache_dir": interrupted.config.runtime.cache_dir}.items()), []), "--quiet"])
    assert again.exit_code == 0, again.output
    assert_same_training(interrupted.run, interrupted.whole)


def test_resume_never_clears_a_folder_tlkit_did_not_write(tmp_path, interrupted):
    """A --run-dir holding someone's own ``checkpoint/`` (no tlkit state in it) is refused, not emptied."""
    folder = tmp_path / "mine"
    (folder / CHECKPOINT_DIR).mkdir(parents=True)
    (folder / CHECKPOINT_DIR / "notes.txt").write_text("keep me")
    (folder / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["train", str(interrupted.data), "--run-dir", str(folder), "--resume"])
    assert result.exit_code == 1 and "already exists and is not empty" in result.output
    assert (folder / CHECKPOINT_DIR / "notes.txt").read_text() == "keep me"
    assert (folder / "config.json").read_text() == "{}"
