"""Real VGG16 ImageNet weights on real photos and on colour images (marked; run in CI)."""

import json
import os

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlkit

from conftest import HYMENOPTERA, NATURAL_IMAGES, make_dataset, require_shared

# What these check on real photos (learning, metrics, reports, class weights) does not depend on the backend;
# each backend's own paths are tested fast in the other files, and with real weights in test_explain/test_export.
pytestmark = [pytest.mark.real_weights, pytest.mark.backend_independent]


def _subset(source, target, per_class):
    """Symlink the first ``per_class`` files (a number, or ``{class: number}``) of each class folder of
    ``source`` into ``target``."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        count = per_class[folder.name] if isinstance(per_class, dict) else per_class
        for path in sorted(folder.iterdir())[:count]:
            os.symlink(path, target / folder.name / path.name)
    return target


@pytest.fixture
def real(config, real_weights):
    return config.replace(train={"weights": real_weights, "epochs": 15, "patience": 5})


def test_colours_are_learned_and_random_labels_are_not(tmp_path, real):
    data = make_dataset(tmp_path / "colours", ("blue", "green", "red"), per_class=10)
    result = tlkit.train(data, real, run_dir=tmp_path / "run", verbose=0)
    assert result.metrics["val_accuracy"] >= 0.9
    for colour in ("blue", "green", "red"):
        assert {p.label for p in tlkit.predict([data / colour], run=tmp_path / "run")} == {colour}
    # The same images with labels shuffled across classes: nothing to learn, so the check must fail.
    scrambled = tmp_path / "scrambled"
    files = sorted(data.rglob("*.jpg"))
    order = np.random.default_rng(0).permutation(len(files))
    for i, j in enumerate(order):
        target = scrambled / ("abc"[i % 3]) / f"{i:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(files[j], target)
    chance = tlkit.train(scrambled, real, run_dir=tmp_path / "chance", verbose=0)
    assert chance.metrics["val_accuracy"] < 0.9


def test_hymenoptera_subset_features_mode_and_what_it_learned(tmp_path, real):
    """A run on real photos, then everything tlkit tells about it: evaluation, Grad-CAM, TTA, the report."""
    data = tmp_path / "hym"
    _subset(require_shared(HYMENOPTERA) / "train", data / "train", 40)
    _subset(HYMENOPTERA / "val", data / "val", 30)
    run = tmp_path / "run"
    result = tlkit.train(data, real.replace(data={"image_size": 96}), run_dir=run, verbose=0)
    assert result.metrics["images"] == {"train": 80, "val": 60}
    assert result.metrics["val_accuracy"] >= 0.8
    report = tlkit.evaluate(data, run=run, split="val", mistakes=3)
    assert report.accuracy == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    # the confusion matrix and the mistakes recomputed from predictions
    predictions = tlkit.predict([data / "val"], run=run, top_k=2)
    truth = [Path(p.path).parent.name for p in predictions]
    confusion = [[sum(t == a and p.label == b for t, p in zip(truth, predictions)) for b in ("ants", "bees")]
                 for a in ("ants", "bees")]
    assert report.confusion_matrix == confusion and 0 < len(report.top_losses) <= 3
    assert {m["path"] for m in report.top_losses} <= {p.path for t, p in zip(truth, predictions) if p.label != t}
    # Grad-CAM of a real photo: at the photo's own size, peaked somewhere, not flat
    photo = Path(predictions[0].path)
    explanation = tlkit.explain(photo, run=run)
    with Image.open(photo) as image:
        assert explanation.heatmap.shape == (image.height, image.width)
    assert explanation.heatmap.max() == pytest.approx(1.0, abs=0.02) and explanation.heatmap.std() > 0.05
    # test-time augmentation: same images, averaged views, a comparable score
    augmented = tlkit.evaluate(data, run=run, split="val", tta=4)
    assert augmented.count == 60 and abs(augmented.accuracy - report.accuracy) <= 0.1
    # the report holds the metrics table and one picture per listed mistake
    shown = tlkit.write_report(tmp_path / "report.html", run, mistakes=3)
    text = (tmp_path / "report.html").read_text()
    assert '<table id="metrics">' in text and f"{shown.per_class['bees']['recall']:.4f}" in text
    assert text.count('<figure class="mistake"') == len(shown.top_losses) > 0
    # 3-fold cross-validation of the head on the same (cached) features
    folds = tlkit.cross_validate(data, real.replace(data={"image_size": 96}), folds=3)
    assert folds.images == 140 and len(folds.fold_results) == 3 and folds.mean_accuracy >= 0.75


def test_natural_images_subset_skips_thumbs_db(tmp_path, real, caplog):
    data = _subset(require_shared(NATURAL_IMAGES), tmp_path / "nat", 25)  # Thumbs.db sorts first where a class has one
    caplog.set_level("WARNING", logger="tlkit")
    result = tlkit.train(data, real.replace(data={"image_size": 48, "val_split": 0.25}), run_dir=tmp_path / "run",
                         verbose=0)
    skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"]
    thumbs = sorted(str(p) for p in data.glob("*/Thumbs.db"))
    assert len(thumbs) >= 5 and sorted(skipped) == thumbs
    assert "Thumbs.db" in caplog.text
    assert result.metrics["val_accuracy"] >= 0.7


def test_class_weight_auto_lifts_minority_recall(tmp_path, real):
    """Hymenoptera with 5 ants per bee in training (balanced validation): --class-weight auto must lift the
    bees' recall (mean over two seeds) and say so in the run record."""
    hymenoptera = require_shared(HYMENOPTERA)
    data = tmp_path / "imbalanced"
    _subset(hymenoptera / "train", data / "train", {"ants": 100, "bees": 20})
    _subset(hymenoptera / "val", data / "val", 40)
    settings = real.replace(data={"image_size": 96}, train={"epochs": 15, "patience": 0, "batch_size": 16})
    recall = {"none": [], "auto": []}
    for mode in recall:
        for seed in (1, 2):
            run = tmp_path / f"{mode}-{seed}"
            tlkit.train(data, settings.replace(train={"class_weight": mode}, data={"seed": seed}), run_dir=run,
                        verbose=0)
            recall[mode].append(tlkit.evaluate(run=run, split="val").per_class["bees"]["recall"])
            record = json.loads((run / "metrics.json").read_text())["class_weight"]
            assert record == (None if mode == "none" else {"ants": pytest.approx(0.6), "bees": pytest.approx(3.0)})
    assert np.mean(recall["auto"]) >= np.mean(recall["none"]) + 0.1, recall
