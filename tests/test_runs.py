"""Run folders and every file tlkit writes: whole or absent, checked before use, loaded without running code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.io import atomic_write, write_checksums, write_json
from tlkit.runs import RUN_CHECKSUM

from conftest import REPO, make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

RUN_FILES = ["model.keras", "classes.json", "config.json", "history.json", "history.csv", "metrics.json",
             "curves.png", "checksums.json"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One small features-mode run, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root / "d", per_class=4)
    config = tlkit.Config().replace(data={"image_size": 32, "cache_dir": str(root / "cache"), "val_split": 0.25},
                                    train={"weights": "none", "epochs": 1, "batch_size": 8})
    return tlkit.train(data, config, run_dir=root / "run", verbose=0).run_dir


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def refused(run: Path, *phrases: str) -> None:
    """load_run raises a TlkitError with ``phrases``; ``tlkit predict`` says it in one line and exits 1."""
    with pytest.raises(tlkit.TlkitError) as error:
        tlkit.load_run(run)
    for phrase in phrases:
        assert phrase in str(error.value)
    result = CliRunner().invoke(main, ["predict", str(run), "--run", str(run)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_truncated_run_file_is_refused(run, name):
    path = run / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    if name == "config.json":  # read first, for its format: a damaged one says so itself
        refused(run, f"damaged {path}")
    else:
        refused(run, f"run {run} is damaged or was modified", name)


@pytest.mark.parametrize("name", ["model.keras", "metrics.json"])
def test_a_same_size_change_is_refused(run, name):
    content = bytearray((run / name).read_bytes())
    content[len(content) // 2] ^= 0x01
    (run / name).write_bytes(bytes(content))
    refused(run, f"{name} does not match its sha256 checksum")


def test_a_model_carrying_code_is_refused_even_with_matching_checksums(run, tmp_path):
    """A model file swapped for one with a Python lambda (checksums rewritten to match) is not run."""
    marker = tmp_path / "pwned"  # the tests run in tmp_path: the lambda would write it there
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: (__import__("pathlib").Path("pwned").write_text("ran"), x)[1])(inputs)
    keras.Model(inputs, outputs).save(run / "model.keras")
    marker.unlink()  # written while the model was built here
    write_checksums(run, RUN_CHECKSUM)
    refused(run, "refused", "Lambda", "code")
    assert not marker.exists()


def test_interrupted_writes_leave_the_old_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"val_accuracy": 0.9})

    def crash_half_way(temporary):
        Path(temporary).write_text('{"val_accur')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash_half_way)
    assert target.read_text() == '{\n  "val_accuracy": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_no_pickle_anywhere():
    """Every array tlkit reads is loaded with allow_pickle=False, and nothing imports pickle."""
    for source in (REPO / "tlkit").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|joblib|dill)", text, re.M), source
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (source, call)


def test_checkpoint_arrays_hold_no_objects(tmp_path):
    """The checkpoint's .npz files (all tlkit writes besides .npy, .json, .png and .keras) load without pickle."""
    data = make_dataset(tmp_path / "d", per_class=4)
    config = tlkit.Config().replace(data={"image_size": 32, "cache_dir": str(tmp_path / "cache")},
                                    train={"weights": "none", "epochs": 2, "batch_size": 8, "patience": 1})

    class Inspect(keras.callbacks.Callback):
        arrays: list = []

        def on_epoch_end(self, epoch, logs=None):
            for path in sorted((tmp_path / "run" / "checkpoint").glob("*.npz")):
                with np.load(path, allow_pickle=False) as stored:
                    self.arrays.extend(stored[name].dtype for name in stored.files)

    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0, callbacks=[Inspect()])
    assert Inspect.arrays and all(dtype != object for dtype in Inspect.arrays)
