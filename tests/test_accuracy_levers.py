"""What the accuracy work keeps: 224-pixel images by default, augmented copies of the cached features, and
honest numbers (a 95% Wilson interval on every accuracy, and which images chose the kept epoch)."""

import json
import math

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.intervals import wilson

from conftest import make_dataset


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.backend_independent
def test_wilson_intervals_are_scipys():
    from scipy.stats import binomtest

    for right, count in [(141, 153), (0, 10), (10, 10), (965, 1000), (1, 1), (3, 7)]:
        interval = binomtest(right, count).proportion_ci(0.95, method="wilson")
        assert wilson(right / count, count) == pytest.approx((interval.low, interval.high), abs=1e-9)
    assert all(math.isnan(end) for end in wilson(0.5, 0))
    low, high = wilson(0.92, 153)
    assert high - low > 0.08  # 153 validation images pin 0.92 down to about +/- 4 points, no better


@pytest.mark.backend_independent
def test_the_help_says_why_images_are_224_by_default():
    assert "(VGG16 was trained at 224)" in " ".join(invoke("train", "--help").output.split())


class _Batches(keras.callbacks.Callback):
    """Counts the training batches of every fit it is given to."""

    count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def test_augmented_copies_are_transformed_once_and_reused(tmp_path, config, caplog):
    data = make_dataset(tmp_path / "data", per_class=6)
    two = config.replace(fit={"augmented_copies": 2})
    features = tlkit.extract(data, two, verbose=0)
    plain, copies = features.split("train")[0], features.augmented("train")
    assert copies.shape == (2, *plain.shape)
    assert not np.allclose(copies[0], plain) and not np.allclose(copies[0], copies[1])
    # three copies: the plain features and the first two copies are read again, only the third is extracted
    caplog.set_level("INFO", logger="tlkit")
    three = tlkit.extract(data, config.replace(fit={"augmented_copies": 3}), verbose=0)
    assert three.reused and three.path == features.path and three.copies[:2] == features.copies
    np.testing.assert_array_equal(three.augmented("train")[:2], copies)
    assert caplog.text.count("extracting features (augmented copy 3)") == 1
    assert "extracting features (augmented copy 1)" not in caplog.text and "extracting features of" not in caplog.text
    assert tlkit.extract(data, config, verbose=0).copies == ()
    # other augmentation settings give other copies of the same plain features
    other = tlkit.extract(data, two.replace(augment={"rotation_range": 0.0}), verbose=0)
    assert other.path == features.path and not set(other.copies) & set(features.copies)


@pytest.mark.backend_independent  # the copies' extraction runs on every backend in the test above
def test_a_head_trains_on_its_copies_in_features_mode_and_in_cv(tmp_path, config):
    data = make_dataset(tmp_path / "data", per_class=10)
    counted = {}
    for copies in (0, 2):
        batches = _Batches()
        result = tlkit.train(data, config.replace(fit={"augmented_copies": copies}), run_dir=tmp_path / f"run{copies}",
                             verbose=0, callbacks=[batches])
        counted[copies] = (batches.count, result.model.get_layer("head").get_layer("hidden").get_weights()[0])
    train_images = 14  # 10 per class, 30% held out
    assert counted[0][0] == config.fit.epochs * math.ceil(train_images / 8)
    assert counted[2][0] == config.fit.epochs * math.ceil(3 * train_images / 8)
    assert not np.allclose(counted[0][1], counted[2][1])
    # cross-validation trains each fold's head on the copies of its training images, never of its held-out ones
    plain = tlkit.cross_validate(data, config, folds=2)
    copied = tlkit.cross_validate(data, config.replace(fit={"augmented_copies": 2}), folds=2)
    assert [f["train_images"] for f in copied.fold_results] == [f["train_images"] for f in plain.fold_results] == [10, 10]
    assert [f["history"]["loss"] for f in copied.fold_results] != [f["history"]["loss"] for f in plain.fold_results]


@pytest.mark.backend_independent  # figures and words around the scores, computed alike on every backend
def test_every_accuracy_carries_its_interval_and_says_what_chose_the_epoch(tmp_path, config):
    data = make_dataset(tmp_path / "data", per_class=12)
    run = tmp_path / "run"
    settings = config.replace(data={"test_split": 0.25}, fit={"patience": 3})
    train = invoke("train", data, "--run-dir", run, "--image-size", 32, "--weights", "none", "--epochs", 2,
                   "--patience", 3, "--val-split", 0.3, "--test-split", 0.25, "--cache-dir", settings.runtime.cache_dir)
    assert train.exit_code == 0, train.output
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        expected = wilson(metrics[f"{split}_accuracy"], metrics["images"][split])
        assert metrics[f"{split}_accuracy_ci95"] == pytest.approx(list(expected))
        low, high = expected
        assert f"{split}_accuracy: {metrics[f'{split}_accuracy']:.4f} (95% CI {low:.3f}-{high:.3f}, " in train.output
    assert "chosen on the validation images" in metrics["trust"] and "test figures" in metrics["trust"]
    assert f"note: {metrics['trust']}" in train.output
    val, test = tlkit.evaluate(run=run, split="val"), tlkit.evaluate(run=run, split="test")
    assert "optimistic" in val.caveat and test.caveat == ""
    assert "trained on" in tlkit.evaluate(run=run, split="train").caveat
    assert val.to_dict()["accuracy_ci95"] == pytest.approx(list(wilson(val.accuracy, val.count)))
    printed = invoke("evaluate", "--run", run, "--split", "val").output
    assert f"accuracy: {val.accuracy:.4f} (95% CI" in printed and f"note: {val.caveat}" in printed
    assert "note:" not in invoke("evaluate", "--run", run, "--split", "test").output
    # the report says how far its figures can be trusted
    tlkit.write_report(tmp_path / "report.html", run, split="test", mistakes=0)
    page = (tmp_path / "report.html").read_text()
    low, high = test.accuracy_ci95
    assert f"95% CI {low:.3f}-{high:.3f}" in page and "these are the figures to trust" in page
    # and so does cross-validation
    folds = invoke("cv", data, "--folds", 2, "--image-size", 32, "--weights", "none", "--epochs", 1,
                   "--cache-dir", settings.runtime.cache_dir)
    assert "95% CI of the held-out accuracy" in folds.output
