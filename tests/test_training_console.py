"""What training says while it runs, and the epoch numbers it writes: one line per phase start, one when
early stopping ends a phase, the same phase/epoch numbers in the console, metrics.json, the curves and the
report; a loss that turns NaN stops training with one line and saves no run; runs and checkpoints edited
by hand give their own one-line errors; no TensorFlow retracing or optimizer warnings."""

from __future__ import annotations

import json
import logging
import re
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.io import write_checksums
from tlkit.plots import curves
from tlkit.report import _summary
from tlkit.runs import CHECKPOINT_DIR, STATE_FILE, best_epoch_of, latest_run

from conftest import COLOURS, make_dataset, stop_at, write_image

FORMAT2 = Path(__file__).resolve().parent / "data" / "format2"


@pytest.fixture
def contrary(tmp_path):
    """Validation images labelled against their training colour: early stopping ends every phase."""
    root = make_dataset(tmp_path / "c", ("blue", "red"), per_class=8, splits=["train"])
    for name, colour in (("blue", "red"), ("red", "blue")):
        for i in range(4):
            write_image(root / "validation" / name / f"{i}.jpg", COLOURS[colour], seed=100 + i)
    return root


@pytest.mark.backend_independent
def test_phases_early_stops_and_the_best_epoch_are_numbered_alike_everywhere(tmp_path, contrary, config, caplog):
    caplog.set_level(logging.INFO, logger="tlkit")
    config = config.replace(train={"mode": "finetune", "warmup_mode": "features", "epochs": 6, "warmup_epochs": 6,
                                   "patience": 2, "learning_rate": 1e-2, "finetune_learning_rate": 1e-3})
    result = tlkit.train(contrary, config, run_dir=tmp_path / "run", verbose=0)
    log = caplog.text
    assert "phase 1/2: warm-up of the head on cached features at lr 0.01, up to 6 epochs" in log
    assert "phase 2/2: fine-tuning block5_conv1 and up at lr 0.001, up to 6 epochs" in log
    assert log.index("phase 1/2") < log.index("early stop at phase 1") < log.index("phase 2/2")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    warmup_epochs = metrics["epochs_run"][0]
    assert warmup_epochs < 6  # the contrary validation set stops the warm-up early
    kept = re.search(r"early stop at phase 1 epoch (\d+): val_loss has not improved for 2 epochs; keeping epoch "
                     r"(\d+) \(val_loss ([\d.]+)\)", log)
    assert kept and int(kept[1]) == warmup_epochs
    history = json.loads((result.run_dir / "history.json").read_text())
    assert int(kept[2]) == int(np.argmin(history[0]["history"]["val_loss"])) + 1
    # the last phase's line names the epoch metrics.json, the curves and the report name
    last = re.search(r"(?:early stop at phase 2 epoch \d+: val_loss has not improved for 2 epochs|phase 2 ran its 6 "
                     r"epochs); keeping epoch (\d+) \(val_loss ([\d.]+)\)", log)
    assert last, log
    assert metrics["best_phase"] == "finetune" and metrics["best_phase_number"] == 2
    assert metrics["best_phase_epoch"] == int(last[1])
    assert metrics["best_epoch"] == warmup_epochs + int(last[1])  # overall
    assert metrics["best_val_loss"] == pytest.approx(float(last[2]), abs=1e-4)
    drawn = curves(history, 0.6)
    assert drawn.best_epoch == metrics["best_epoch"]
    assert drawn.best_label == (f"phase 2 epoch {metrics['best_phase_epoch']} (epoch {metrics['best_epoch']} "
                                "overall)")
    assert drawn.boundaries == [warmup_epochs + 0.5]
    run = tlkit.load_run(result.run_dir)
    evaluation = tlkit.evaluate(None, run, verbose=0)
    summary = _summary(run, evaluation, json.loads((result.run_dir / "config.json").read_text())["provenance"])
    assert f"phase 2 epoch {metrics['best_phase_epoch']}" in summary
    assert f"best epoch ({metrics['best_epoch']} overall, in finetune)" in summary


@pytest.mark.parametrize("mode, line", [
    ("features", "phase 1/1: the head on cached features at lr 0.001, up to 2 epochs"),
    ("frozen", "phase 1/1: the head on the frozen base at lr 0.001, up to 2 epochs"),
])
@pytest.mark.backend_independent
def test_one_phase_modes_say_what_they_fit(tmp_path, config, caplog, mode, line):
    caplog.set_level(logging.INFO, logger="tlkit")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    tlkit.train(data, config.replace(train={"mode": mode, "learning_rate": 1e-3}), run_dir=tmp_path / "run",
                verbose=0)
    assert line in caplog.text
    assert "early stop" not in caplog.text and "keeping epoch" not in caplog.text  # patience 0: no early stopping


@pytest.mark.backend_independent
def test_older_metrics_give_the_same_numbers():
    """A format-2 run's metrics.json counted best_epoch within the last phase: read as this format names it."""
    metrics = json.loads((FORMAT2 / "finished" / "metrics.json").read_text())
    assert best_epoch_of(metrics) == {"best_phase": "frozen", "best_phase_number": 1, "best_phase_epoch": 3,
                                      "best_epoch": 3}
    older = {"best_phase": "finetune", "best_epoch": 2, "epochs_run": [10, 7]}
    assert best_epoch_of(older) == {"best_phase": "finetune", "best_phase_number": 2, "best_phase_epoch": 2,
                                    "best_epoch": 12}


class PoisonAt(keras.callbacks.Callback):
    """Makes the loss NaN for real: the output layer's weights become NaN before batch 0 of ``epoch`` (a NaN
    hidden weight is not enough: oneDNN's ReLU can turn NaN into 0)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.target = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == self.target and batch == 0:
            for variable in self.model.trainable_variables[-2:]:  # the output layer's kernel and bias
                variable.assign(np.full(variable.shape, np.nan, dtype="float32"))


@pytest.mark.backend_independent
def test_a_loss_that_turns_nan_stops_training_and_saves_no_run(tmp_path, config):
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3, "learning_rate": 0.05})
    with pytest.raises(tlkit.TlkitError) as error:
        tlkit.train(data, config, verbose=0, callbacks=[PoisonAt(1)])  # the default folder, under runs/
    message = str(error.value)
    assert message.startswith("loss became nan at phase 1 epoch 2: lower --learning-rate (it is 0.05)")
    assert "\n" not in message
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # no run, whole or resumable
    with pytest.raises(tlkit.TlkitError, match="no runs found"):
        latest_run()


@pytest.fixture
def three_classes(tmp_path, config) -> Path:
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=4)
    return tlkit.train(data, config.replace(train={"epochs": 1}), run_dir=tmp_path / "run", verbose=0).run_dir


@pytest.mark.backend_independent
@pytest.mark.parametrize("also_config", [False, True])
def test_a_run_whose_classes_lost_a_name_is_refused_in_one_line(three_classes, also_config):
    """classes.json edited (and the record in config.json too), the checksums written again to match."""
    run = three_classes
    (run / "classes.json").write_text(json.dumps(["blue", "green"]))
    if also_config:
        record = json.loads((run / "config.json").read_text())
        record["provenance"]["class_names"] = ["blue", "green"]
        (run / "config.json").write_text(json.dumps(record))
    write_checksums(run, "sha256")
    with pytest.raises(tlkit.TlkitError, match=f"run {run} is inconsistent"):
        tlkit.load_run(run)
    image = next((run.parent / "d").rglob("*.jpg"))
    result = CliRunner().invoke(main, ["predict", str(image), "--run", str(run)])
    assert result.exit_code == 1 and "is inconsistent" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("edit, named", [
    (lambda state: state.__setitem__("dataset_sha", state.pop("dataset")), "has no 'dataset'"),
    (lambda state: state["current"].__setitem__("done", state["current"].pop("epochs_done")),
     "has no current.'epochs_done'"),
    (lambda state: state.__setitem__("phases", {}), "holds a dict as 'phases'"),
])
@pytest.mark.backend_independent
def test_a_checkpoint_state_with_a_renamed_key_is_refused_in_one_line(tmp_path, config, edit, named):
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    config = config.replace(train={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0, callbacks=[stop_at(1)])
    path = tmp_path / "run" / CHECKPOINT_DIR / STATE_FILE
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    result = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "cannot be used" in result.output and named in result.output and "Traceback" not in result.output


@pytest.mark.backend_independent
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function retracing is TensorFlow's")
def test_cross_validation_traces_once_not_once_per_fold(tmp_path, config, caplog):
    caplog.set_level(logging.WARNING, logger="tensorflow")
    data = make_dataset(tmp_path / "d", ("blue", "red"), per_class=6)
    result = tlkit.cross_validate(data, config.replace(train={"epochs": 1}), folds=3, repeats=2)
    assert len(result.fold_results) == 6
    assert "retracing" not in caplog.text


def test_a_mixed_precision_run_loads_without_optimizer_warnings(tmp_path, config):
    """The saved classifier holds no optimizer (the fits compile a wrapper): loading meets no state to skip."""
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=4)
    for mode in ("features", "frozen"):
        tlkit.train(data, config.replace(train={"precision": "mixed_float16", "mode": mode, "epochs": 1}),
                    run_dir=tmp_path / mode, verbose=0)
        with zipfile.ZipFile(tmp_path / mode / "model.keras") as archive:
            saved = json.loads(archive.read("config.json"))
        assert not (saved.get("compile_config") or {}).get("optimizer")  # no optimizer state was saved
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = tlkit.load_run(tmp_path / mode)
        assert loaded.class_names == ("blue", "green", "red")
        assert loaded.model.layers[-1].get_layer("probabilities").dtype_policy.name == "float32"


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler while the test runs, whatever the test runner installed."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_is_raised_at_the_next_batch_end_and_a_second_one_at_once(default_sigint):
    """The first SIGINT during a fit only marks it (numpy can swallow a KeyboardInterrupt raised inside a
    JAX array conversion); the next batch end raises it; a second SIGINT raises at once; the handler
    that was there comes back."""
    import signal

    from tlkit.training.interrupt import CtrlC

    with CtrlC() as ctrl_c:
        signal.raise_signal(signal.SIGINT)  # to this thread, handled before the next line
        assert ctrl_c.pressed
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.on_train_batch_end(0)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        ctrl_c.pressed = False  # as if the fit had ended on the first KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    CtrlC().on_epoch_end(0)  # nothing pressed: nothing raised


def test_ctrl_c_after_the_last_batch_still_stops(default_sigint):
    """Pressed after the fit's last batch and epoch end: the stop comes when the fit returns, not never;
    an error already on its way out is not replaced."""
    import signal

    from tlkit.training.interrupt import CtrlC

    with pytest.raises(KeyboardInterrupt), CtrlC():
        signal.raise_signal(signal.SIGINT)
    with pytest.raises(ValueError, match="the fit's own error"), CtrlC():
        signal.raise_signal(signal.SIGINT)
        raise ValueError("the fit's own error")
    with CtrlC():
        pass  # not pressed: nothing raised
