"""Regularising the head (L2 on its dense kernels, label smoothing) and top-5 accuracy past 5 classes."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.config import ModelConfig
from tlkit.inference.evaluate import classification_metrics
from tlkit.model import build_head, compile_model

from conftest import make_dataset, write_image

#: Six classes, each a colour of its own.
SIX = {"black": (20, 20, 20), "blue": (30, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40),
       "white": (235, 235, 235), "yellow": (220, 210, 40)}


def head(classes: int, l2: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_head((2, 2, 8), classes, ModelConfig(weights="none", head_units=16, dropout=0.0, l2=l2), seed=3)


def features(classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(24, 2, 2, 8)) * 30).astype("float32"), np.arange(24) % classes


def loss_of(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(model.evaluate(x, y.reshape(-1, 1).astype("float32") if model.output_shape[-1] == 1 else y,
                                verbose=0, return_dict=True)["loss"])


@pytest.mark.parametrize("classes", [2, 3])
def test_l2_adds_its_penalty_to_the_loss(classes):
    x, y = features(classes)
    plain, penalised = head(classes), head(classes, l2=0.01)
    penalised.set_weights(plain.get_weights())
    for model in (plain, penalised):
        compile_model(model, classes, "sgd", 0.1)
    kernels = [layer.kernel for layer in penalised.layers if isinstance(layer, keras.layers.Dense)]
    assert len(kernels) == 2  # the hidden layer and the output layer
    penalty = 0.01 * sum(float(np.sum(np.square(keras.ops.convert_to_numpy(kernel)))) for kernel in kernels)
    assert penalty > 0.01
    assert loss_of(penalised, x, y) - loss_of(plain, x, y) == pytest.approx(penalty, rel=1e-3)


@pytest.mark.parametrize("classes", [2, 3])
def test_label_smoothing_changes_the_loss_as_keras_defines_it(classes):
    x, y = features(classes)
    plain, smoothed = head(classes), head(classes)
    compile_model(plain, classes, "sgd", 0.1)
    compile_model(smoothed, classes, "sgd", 0.1, label_smoothing=0.2)
    probabilities = smoothed.predict(x, verbose=0)
    if classes == 2:
        targets = y.reshape(-1, 1).astype("float32")
        expected = [keras.losses.BinaryCrossentropy(label_smoothing=s)(targets, probabilities) for s in (0, 0.2)]
    else:
        expected = [keras.losses.CategoricalCrossentropy(label_smoothing=s)(np.eye(classes)[y], probabilities)
                    for s in (0, 0.2)]
    assert loss_of(plain, x, y) == pytest.approx(float(expected[0]), rel=1e-5)
    assert loss_of(smoothed, x, y) == pytest.approx(float(expected[1]), rel=1e-5)
    assert float(expected[1]) != pytest.approx(float(expected[0]), rel=1e-4)


@pytest.mark.backend_independent
def test_top_5_accuracy_counts_the_true_class_among_the_five_most_probable():
    names = tuple(SIX)
    probabilities = np.array([[0.30, 0.20, 0.15, 0.14, 0.11, 0.10],   # true class 4: 5th most probable
                              [0.30, 0.20, 0.15, 0.14, 0.11, 0.10],   # true class 5: 6th
                              [0.20, 0.20, 0.20, 0.20, 0.10, 0.10]])  # true class 5: tied for 5th
    report = classification_metrics(probabilities, np.array([4, 5, 5]), names)
    assert report["top_5_accuracy"] == pytest.approx(2 / 3)
    assert report["accuracy"] == 0.0
    assert "top_5_accuracy" not in classification_metrics(probabilities[:, :5] / probabilities[:, :5].sum(1, keepdims=True),
                                                          np.array([4, 3, 2]), names[:5])


def test_options_reach_the_run_and_six_classes_report_top_5_everywhere(tmp_path):
    data = tmp_path / "six"
    for c, (name, rgb) in enumerate(SIX.items()):
        for i in range(5):
            write_image(data / name / f"{name}_{i}.png", rgb, seed=10 * c + i)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(data), "--image-size", "32", "--weights", "none", "--epochs", "2",
                                       "--batch-size", "8", "--val-split", "0.4", "--cache-dir", str(tmp_path / "cache"),
                                       "--run-dir", str(run), "--l2", "0.001", "--label-smoothing", "0.1", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "val_top_5_accuracy: " in result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["l2"], config["fit"]["label_smoothing"]) == (0.001, 0.1)
    (phase,) = json.loads((run / "history.json").read_text())
    assert len(phase["history"]["top_5_accuracy"]) == len(phase["history"]["val_top_5_accuracy"]) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    evaluation = tlkit.evaluate(run=run)
    assert evaluation.split == "val" and evaluation.count == 12
    assert evaluation.top_5_accuracy == metrics["val_top_5_accuracy"] >= evaluation.accuracy
    shown = CliRunner().invoke(main, ["evaluate", "--run", str(run)], catch_exceptions=False).output
    assert f"top-5 accuracy: {evaluation.top_5_accuracy:.4f}" in shown
    loaded = tlkit.load_run(run).model.get_layer("head").get_layer("hidden")
    assert loaded.kernel_regularizer is not None and loaded.kernel_regularizer.l2 == pytest.approx(0.001)


def test_three_classes_report_no_top_5(tmp_path, config):
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=4)
    trained = tlkit.train(data, config.replace(train={"epochs": 1}), run_dir=tmp_path / "run", verbose=0)
    assert "val_top_5_accuracy" not in trained.metrics
    assert "top_5_accuracy" not in trained.history[0]["history"]
    assert tlkit.evaluate(run=trained.run_dir).top_5_accuracy is None


@pytest.mark.backend_independent
def test_out_of_range_values_are_refused():
    with pytest.raises(tlkit.TlkitError, match="label_smoothing"):
        tlkit.Config().replace(fit={"label_smoothing": 1.0})
    with pytest.raises(tlkit.TlkitError, match="l2"):
        tlkit.Config().replace(model={"l2": -0.1})
