"""Runs written before the package was reshaped (run format 2) still predict, evaluate, report and resume.

tests/data/format2 was written by scripts/make_format2_runs.py with the tlkit of commit 6ab28fd: a finished
frozen run, an interrupted one (its checkpoint after epoch 1 of 3), and their dataset of BMP images. The
finished run's model is kept without its weights (VGG16's 59 MB): the archive's own config.json and
metadata.json as that tlkit wrote them, packed again here with weights for that architecture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main

FORMAT2 = Path(__file__).resolve().parent / "data" / "format2"


@pytest.fixture
def format2(tmp_path) -> Path:
    """A copy of tests/data/format2 whose finished run has its model.keras back."""
    import tlkit.model  # noqa: F401  the layers the saved architecture names

    root = tmp_path / "format2"
    shutil.copytree(FORMAT2, root)
    run = root / "finished"
    architecture = (run / "model.keras.config.json").read_bytes()
    keras.utils.set_random_seed(0)  # the same weights every time
    model = keras.saving.deserialize_keras_object(json.loads(architecture))
    model.save_weights(tmp_path / "model.weights.h5")
    with zipfile.ZipFile(run / "model.keras", "w") as archive:
        archive.writestr("metadata.json", (run / "model.keras.metadata.json").read_bytes())
        archive.writestr("config.json", architecture)
        archive.write(tmp_path / "model.weights.h5", "model.weights.h5")
    for name in ("model.keras.config.json", "model.keras.metadata.json"):
        (run / name).unlink()
    checksums = json.loads((run / "checksums.json").read_text())
    data = (run / "model.keras").read_bytes()
    checksums["files"]["model.keras"] = [len(data), hashlib.sha256(data).hexdigest()]  # the weights are new
    (run / "checksums.json").write_text(json.dumps(checksums))
    return root


def test_the_kept_runs_are_of_the_former_layout():
    """What this file tests is there: format 2, the former config sections, a checkpoint of format 1."""
    record = json.loads((FORMAT2 / "finished" / "config.json").read_text())
    assert record["provenance"]["run_format"] == 2 and set(record) == {"data", "augment", "train", "provenance"}
    state = json.loads((FORMAT2 / "interrupted" / "checkpoint" / "state.json").read_text())
    assert state["format"] == 1 and state["current"]["epochs_done"] == 1 and "train" in state["config"]


def test_a_format2_run_loads_predicts_evaluates_and_reports(format2, tmp_path):
    run = tlkit.load_run(format2 / "finished")
    assert run.class_names == ("blue", "red") and run.image_size == 32
    assert (run.config.fit.mode, run.config.model.head_units, run.config.fit.patience) == ("frozen", 8, 2)
    assert run.config.runtime.workers == 1  # data.workers of the former layout
    images = sorted((format2 / "data").rglob("*.bmp"))
    predictions = tlkit.predict(images, run=run, top_k=2)
    assert [p.path for p in predictions] == [str(p) for p in images]
    assert all(p.label in run.class_names and sum(q for _, q in p.top_k) == pytest.approx(1) for p in predictions)
    evaluation = tlkit.evaluate(format2 / "data", run=run, split="val", mistakes=2)
    assert evaluation.count == 4 and evaluation.class_names == ["blue", "red"]
    probabilities = np.array([[1 - q, q] for q in np.asarray(run.model.predict(np.stack(
        [tlkit.decode_image(p, 32) for p in images]), verbose=0))[:, 0]])
    assert [p.probability for p in predictions] == pytest.approx(probabilities.max(axis=1).tolist(), abs=1e-5)
    page = tmp_path / "report.html"
    shown = tlkit.write_report(page, run, format2 / "data", "val", mistakes=2)
    html = page.read_text(encoding="utf-8")
    assert shown == evaluation and "frozen run on" in html and "head_units" in html
    listed = CliRunner().invoke(main, ["predict", str(images[0]), "--run", str(run.path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["label"] == predictions[0].label


def test_a_format2_checkpoint_resumes_and_finishes_as_this_format(format2, tmp_path):
    run = format2 / "interrupted"
    saved = json.loads((run / "checkpoint" / "state.json").read_text())
    result = CliRunner().invoke(main, ["train", str(format2 / "data"), "--run-dir", str(run), "--resume",
                                       "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    history = json.loads((run / "history.json").read_text())
    assert [phase["name"] for phase in history] == ["frozen"]
    epochs = history[0]["history"]
    assert len(epochs["loss"]) == 3  # epoch 1 from the checkpoint, epochs 2 and 3 trained now
    assert {key: values[:1] for key, values in epochs.items()} == saved["current"]["history"]
    record = json.loads((run / "config.json").read_text())
    assert record["provenance"]["run_format"] == 3 and record["fit"]["epochs"] == 3
    assert record["runtime"]["cache_dir"] == str(tmp_path / "cache")  # a machine setting, given now
    assert not (run / "checkpoint").exists() and tlkit.load_run(run).class_names == ("blue", "red")
