"""The same ``tlkit train DATA ...`` after Ctrl-C continues the interrupted run (no --run-dir, no --resume);
other data or settings start a new run and name the one left; --new always starts afresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.runs import CHECKPOINT_DIR, STATE_FILE

from conftest import make_dataset, stop_at

#: The options of every command here (the run's settings, given as flags).
FLAGS = {"image_size": 32, "weights": "none", "batch_size": 8, "mode": "frozen", "epochs": 3, "patience": 0,
         "val_split": 0.3, "workers": 2}


def flags(cache: Path, **changes) -> list[str]:
    options = {**FLAGS, "cache_dir": str(cache), **changes}
    return [part for name, value in options.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def same_config(cache: Path) -> tlkit.Config:
    """The config the command line builds from :func:`flags`."""
    data = {key: FLAGS[key] for key in ("image_size", "val_split", "workers")}
    return tlkit.Config().replace(data={**data, "cache_dir": str(cache)},
                                  train={key: FLAGS[key] for key in ("weights", "batch_size", "mode", "epochs",
                                                                     "patience")})


@pytest.fixture
def interrupted(tmp_path, caplog) -> tuple[Path, Path]:
    """``(data, run)``: a frozen run under runs/ stopped by Ctrl-C in its 3rd epoch (2 finished), started with
    ``tlkit.train``'s default ``resume=False`` (as ``--new``), which the same call again would not continue."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=8)
    with pytest.raises(KeyboardInterrupt):
        tlkit.train(data, same_config(tmp_path / "cache"), verbose=0, callbacks=[stop_at(2)])
    (run,) = Path("runs").iterdir()
    assert (f"the finished epochs are kept in {run}: continue with `tlkit train {data} --run-dir {run} --resume`"
            in caplog.text)
    assert "the same command" not in caplog.text
    assert json.loads((run / CHECKPOINT_DIR / STATE_FILE).read_text())["current"]["epochs_done"] == 2
    return data, run


def losses(run: Path) -> list[float]:
    return json.loads((run / "history.json").read_text())[0]["history"]["loss"]


@pytest.mark.backend_independent
def test_the_same_command_continues_the_interrupted_run(tmp_path, interrupted):
    data, run = interrupted
    result = CliRunner().invoke(main, ["train", str(data), *flags(tmp_path / "cache")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (f"resuming interrupted run {run} at phase 1 epoch 3 (same data and settings); --new starts afresh"
            in result.output)
    assert "resuming phase 1 after epoch 2" in result.output
    assert list(Path("runs").iterdir()) == [run] and (run / "model.keras").is_file()
    assert not (run / CHECKPOINT_DIR).exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == [3]  # epochs 1-2 before the interruption, 3 after: not started over
    whole = tlkit.train(data, same_config(tmp_path / "cache"), run_dir=tmp_path / "whole", verbose=0)
    np.testing.assert_allclose(losses(run), losses(whole.run_dir), rtol=1e-6)  # the history continues


@pytest.mark.backend_independent
def test_the_stop_message_says_the_same_command_continues_the_run(tmp_path, caplog):
    """Started as ``tlkit train DATA`` (``resume=None``) and stopped: the same command continues it, as said."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=8)
    with pytest.raises(KeyboardInterrupt):
        tlkit.train(data, same_config(tmp_path / "cache"), verbose=0, callbacks=[stop_at(1)], resume=None)
    (run,) = Path("runs").iterdir()
    assert (f"the finished epochs are kept in {run}: the same command continues them, as does `tlkit train {data} "
            f"--run-dir {run} --resume`") in caplog.text


@pytest.mark.parametrize("change, why", [({"epochs": 4}, "other settings"), ({"learning_rate": 0.01}, "other settings"),
                                         (None, "other data")])
@pytest.mark.backend_independent
def test_other_settings_or_data_start_a_new_run_and_name_the_one_left(tmp_path, interrupted, change, why):
    data, run = interrupted
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if change is None:
        data = make_dataset(tmp_path / "other", ("blue", "red"), per_class=7)
    result = CliRunner().invoke(main, ["train", str(data), *flags(tmp_path / "cache", **(change or {}))],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"left interrupted run {run} ({why}); starting a new run" in result.output
    assert "resuming" not in result.output
    (new,) = set(Path("runs").iterdir()) - {run}
    assert (new / "model.keras").is_file() and f"run: {new}" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # left as it was


@pytest.mark.backend_independent
def test_new_starts_afresh(tmp_path, interrupted):
    data, run = interrupted
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["train", str(data), *flags(tmp_path / "cache"), "--new"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output
    (new,) = set(Path("runs").iterdir()) - {run}
    assert json.loads((new / "metrics.json").read_text())["epochs_run"] == [3]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    refused = CliRunner().invoke(main, ["train", str(data), "--new", "--resume"])
    assert refused.exit_code == 2 and "give one of them" in refused.output


@pytest.mark.backend_independent
def test_resume_still_continues_the_latest(tmp_path, interrupted):
    data, run = interrupted
    result = CliRunner().invoke(main, ["train", str(data), "--resume", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == [3]


#: Runs its arguments as a command with SIGINT as a terminal's foreground job has it: a test run started
#: in the background (``pytest &``) ignores SIGINT, and its children would inherit that (a launcher,
#: not ``preexec_fn``: forking the multithreaded test process could deadlock).
AS_IN_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); os.execv(sys.argv[1], sys.argv[1:])")


def test_ctrl_c_then_the_same_command(tmp_path):
    """A real Ctrl-C (SIGINT) to ``tlkit train``, then the same command: it continues where it stopped."""
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=8)
    command = [str(Path(sys.executable).parent / "tlkit"), "train", str(data),
               *flags(tmp_path / "cache", epochs=12), "--quiet"]
    process = subprocess.Popen([sys.executable, "-c", AS_IN_A_TERMINAL, *command], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # until an epoch is checkpointed
            states = list(Path("runs").glob(f"*/{CHECKPOINT_DIR}/{STATE_FILE}")) if Path("runs").is_dir() else []
            if states and (json.loads(states[0].read_text() or "{}").get("current") or {}).get("epochs_done"):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no epoch was checkpointed in 240 s")
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode != 0, output  # stopped, not finished
    (run,) = Path("runs").iterdir()
    done = json.loads((run / CHECKPOINT_DIR / STATE_FILE).read_text())["current"]["epochs_done"]
    assert 1 <= done < 12 and not (run / "model.keras").exists()
    again = CliRunner().invoke(main, ["train", str(data), *flags(tmp_path / "cache", epochs=12)],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert f"resuming interrupted run {run} at phase 1 epoch {done + 1}" in again.output
    assert list(Path("runs").iterdir()) == [run]
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == [12]
