"""Learning curves: smoothing, phases on one axis, the best epoch; drawn by `tlkit curves` from a run."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.plots import curves, smooth

from conftest import make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

PHASES = [
    {"name": "warmup (features)", "history": {"loss": [0.9, 0.5, 0.4], "val_loss": [0.8, 0.6, 0.5],
                                              "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.7]}},
    {"name": "finetune", "history": {"loss": [0.3, 0.2, 0.1, 0.1], "val_loss": [0.45, 0.4, 0.42, 0.5],
                                     "accuracy": [0.9, 0.9, 1.0, 1.0], "val_accuracy": [0.8, 0.8, 0.8, 0.7]}},
]


def test_exponential_moving_average():
    assert smooth([1.0, 0.0, 0.0, 1.0], 0.5) == pytest.approx([1.0, 0.5, 0.25, 0.625])
    assert smooth([0.3, 0.9], 0.0) == [0.3, 0.9]  # 0: the raw values


def test_phases_share_one_epoch_axis_with_the_boundary_and_best_epoch():
    drawn = curves(PHASES, smoothing=0.5)
    assert drawn.epochs == [1, 2, 3, 4, 5, 6, 7]
    assert drawn.boundaries == [3.5]
    assert drawn.best_epoch == 5  # the finetune phase's lowest val_loss, its 2nd epoch
    raw, smoothed = drawn.series["val_loss"]
    assert raw == [0.8, 0.6, 0.5, 0.45, 0.4, 0.42, 0.5]
    assert smoothed == pytest.approx([0.8, 0.7, 0.6, 0.45, 0.425, 0.4225, 0.46125])  # restarts at each phase


def test_tlkit_curves_redraws_a_run_with_another_smoothing(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=4)
    run = tlkit.train(data, config.replace(train={"mode": "finetune"}), run_dir=tmp_path / "run", verbose=0).run_dir
    result = CliRunner().invoke(main, ["curves", "--run", str(run), "--out", str(tmp_path / "c.png"), "--smoothing", "0.3"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "c.png") as image:
        assert image.size == (1100, 600)  # accuracy and loss, the learning rate under them
    smoother = CliRunner().invoke(main, ["curves", "--run", str(run), "--out", str(tmp_path / "s.png"), "--smoothing", "0.9"])
    assert smoother.exit_code == 0 and (tmp_path / "s.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    phases = json.loads((run / "history.json").read_text())
    assert [p["name"] for p in phases] == ["warmup (features)", "finetune"]
    assert tlkit.load_run(run).path == run  # the run's own files are untouched (their checksums still match)
    bad = CliRunner().invoke(main, ["curves", "--run", str(run), "--out", str(tmp_path / "d.png"), "--smoothing", "1"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: Invalid value for '--smoothing'")
    missing = CliRunner().invoke(main, ["curves", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "e.png")])
    assert missing.exit_code == 1 and "run folder not found" in missing.output
