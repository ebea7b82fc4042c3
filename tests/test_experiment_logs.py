"""Experiment logs where people already look: history.csv in every run, TensorBoard logs on request."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.training import phases

from conftest import make_dataset


def scalars(folder: Path) -> dict[str, list[float]]:
    """``{tag: [value per epoch]}`` of the TensorBoard event files in ``folder``."""
    import tensorflow as tf

    values: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return {tag: [value for _, value in sorted(steps)] for tag, steps in values.items()}


def test_finetune_writes_history_csv_and_tensorboard_logs_per_phase(tmp_path):
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    run, logs = tmp_path / "run", tmp_path / "logs"
    result = CliRunner().invoke(main, ["train", str(data), "--mode", "finetune", "--image-size", "32", "--weights",
                                       "none", "--epochs", "2", "--warmup-epochs", "3", "--batch-size", "8",
                                       "--patience", "0", "--cache-dir", str(tmp_path / "cache"), "--run-dir",
                                       str(run), "--tensorboard", str(logs), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    history = json.loads((run / "history.json").read_text())
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "phase", "phase_epoch", "accuracy", "learning_rate", "loss", "val_accuracy",
                             "val_loss"]
    assert [(row["epoch"], row["phase"], row["phase_epoch"]) for row in rows] == [
        ("0", "warmup (features)", "1"), ("1", "warmup (features)", "2"), ("2", "warmup (features)", "3"),
        ("3", "finetune", "1"), ("4", "finetune", "2")]
    assert [float(row["val_loss"]) for row in rows] == [*history[0]["history"]["val_loss"],
                                                       *history[1]["history"]["val_loss"]]
    assert tlkit.load_run(run).class_names == ("blue", "red")  # history.csv is checksummed with the run

    assert sorted(p.name for p in logs.iterdir()) == ["1-warmup-features", "2-finetune"]
    for folder, phase, rate in (("1-warmup-features", history[0], 1e-3), ("2-finetune", history[1], 1e-5)):
        train, validation = scalars(logs / folder / "train"), scalars(logs / folder / "validation")
        epochs = len(phase["history"]["loss"])
        assert np.allclose(train["epoch_loss"], phase["history"]["loss"], rtol=1e-5)
        assert np.allclose(validation["epoch_loss"], phase["history"]["val_loss"], rtol=1e-5)
        assert np.allclose(train["epoch_learning_rate"], [rate] * epochs)


@pytest.mark.backend_independent
def test_tensorboard_problems_are_one_line_before_any_work(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=4)
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(main, ["train", str(data), "--weights", "none", "--tensorboard", str(tmp_path / "file")])
    assert result.exit_code != 0 and not Path("runs").exists()
    assert "file" in result.output and "Traceback" not in result.output

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(tlkit.TlkitError, match="needs tensorflow installed"):
        phases.check_tensorboard(tmp_path / "logs")
