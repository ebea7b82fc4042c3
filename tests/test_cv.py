import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

import tlkit
import tlkit.training.cv
import tlkit.extraction
from tlkit.training.cv import cross_validate, stratified_folds
from tlkit.features import extract

from conftest import make_dataset

#: A head that learns fast on the weak features of the random-weight 32-pixel test base.
QUICK_LEARNER = {"epochs": 20, "learning_rate": 3e-2, "optimizer": "adam", "dropout": 0.0}


@pytest.mark.backend_independent
def test_folds_are_stratified_disjoint_and_drawn_from_the_seed_and_repeat():
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [7, 5, 11]))
    first = stratified_folds(labels, 4, seed=1337, repeat=0)
    for repeat in (0, 1):
        assignment = stratified_folds(labels, 4, seed=1337, repeat=repeat)
        members = [np.flatnonzero(assignment == fold) for fold in range(4)]
        np.testing.assert_array_equal(np.sort(np.concatenate(members)), np.arange(len(labels)))  # each image once
        sizes = [len(fold) for fold in members]
        assert max(sizes) - min(sizes) <= 1
        for label in range(3):
            per_fold = [np.sum(labels[fold] == label) for fold in members]
            assert max(per_fold) - min(per_fold) <= 1  # stratified
        np.testing.assert_array_equal(assignment, stratified_folds(labels, 4, seed=1337, repeat=repeat))
    assert not np.array_equal(stratified_folds(labels, 4, seed=1337, repeat=1), first)  # each repeat shuffles anew
    assert not np.array_equal(stratified_folds(labels, 4, seed=7, repeat=0), first)


def test_the_report_is_what_its_folds_say(tmp_path, config):
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=4, splits=["train", "val", "test"])
    for split in ("train", "test"):  # left out: one of the pool, one of the held-out test split
        (data / split / "blue" / "broken.jpg").write_bytes(b"not an image")
    settings = config.replace(train={"epochs": 3, "class_weight": "auto"})
    result = cross_validate(data, settings, folds=3, repeats=2)
    features = extract(data, settings, verbose=0)
    labels = np.concatenate([features.split(name)[1] for name in ("train", "val")])
    assert result.images == len(labels) == 24 and result.class_names == ("blue", "green", "red")  # test held out
    assert list(result.skipped) == [str(data / "train" / "blue" / "broken.jpg")]
    assert [(f["repeat"], f["fold"]) for f in result.fold_results] == [(r, k) for r in range(2) for k in range(3)]
    for fold in result.fold_results:
        held_out = stratified_folds(labels, 3, settings.data.seed, fold["repeat"]) == fold["fold"]
        assert fold["val_images"] == held_out.sum() and fold["train_images"] == 24 - held_out.sum()
        history = fold["history"]
        assert len(history["val_loss"]) == 3  # no early stopping
        # scored on the held-out fold that fit validated on, with the weights of the last epoch
        assert fold["val_accuracy"] == pytest.approx(history["val_accuracy"][-1])
        assert fold["val_loss"] == pytest.approx(history["val_loss"][-1], rel=1e-3, abs=1e-5)
    accuracy = np.array([f["val_accuracy"] for f in result.fold_results])
    assert result.mean_accuracy == pytest.approx(accuracy.mean())
    assert result.std_accuracy == pytest.approx(np.sqrt(np.mean((accuracy - accuracy.mean()) ** 2)))
    assert result.repeat_accuracy == pytest.approx([accuracy[:3].mean(), accuracy[3:].mean()])
    assert result.mean_loss == pytest.approx(np.mean([f["val_loss"] for f in result.fold_results]))
    for name in ("val_accuracy", "val_loss"):
        curves = [f["history"][name] for f in result.fold_results]
        assert getattr(result, f"epoch_{name}") == pytest.approx([np.mean(epoch) for epoch in zip(*curves)])
    assert result.best_epoch == 1 + result.epoch_val_loss.index(min(result.epoch_val_loss))
    assert json.loads(json.dumps(result.to_dict()))["class_names"] == ["blue", "green", "red"]


def test_it_learns_colours_but_not_shuffled_labels(tmp_path, config):
    settings = config.replace(train=QUICK_LEARNER)
    data = make_dataset(tmp_path / "d", per_class=12)
    assert cross_validate(data, settings, folds=2).mean_accuracy >= 0.9
    shuffled = shutil.copytree(data, tmp_path / "shuffled")
    for i in range(0, 12, 2):  # half of each class swapped: the colour says nothing of the label
        (shuffled / "blue" / f"blue_{i:02d}.jpg").rename(shuffled / "red" / f"blue_{i:02d}.jpg")
        (shuffled / "red" / f"red_{i:02d}.jpg").rename(shuffled / "blue" / f"red_{i:02d}.jpg")
    assert cross_validate(shuffled, settings, folds=2).mean_accuracy <= 0.7


@pytest.mark.backend_independent
def test_held_out_images_are_never_trained_on(tmp_path, config):
    """Random labels on images distinct enough to memorise: the heads learn their training folds by
    heart, yet score about chance on the held-out ones. A head that trained on (or was scored on) the
    images it is scored on would score near 1."""
    rng = np.random.default_rng(0)
    for i in range(24):
        pattern = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.NEAREST)
        (tmp_path / "d" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        pattern.save(tmp_path / "d" / "ab"[i % 2] / f"{i:02d}.png")
    settings = config.replace(data={"image_size": 64}, train={**QUICK_LEARNER, "epochs": 30, "pooling": "flatten"})
    result = cross_validate(tmp_path / "d", settings, folds=2)
    assert all(fold["history"]["accuracy"][-1] >= 0.9 for fold in result.fold_results)  # memorised
    assert result.mean_accuracy <= 0.75


@pytest.mark.backend_independent
def test_features_are_extracted_once_and_then_reused(tmp_path, config, monkeypatch, caplog):
    looked_up, built = [], []
    monkeypatch.setattr(tlkit.training.cv, "extract", lambda *a: looked_up.append(a) or extract(*a))
    original = tlkit.extraction.build_feature_extractor
    monkeypatch.setattr(tlkit.extraction, "build_feature_extractor", lambda *a: built.append(a) or original(*a))
    data = make_dataset(tmp_path / "d", per_class=4)
    settings = config.replace(train={"epochs": 1})
    first = cross_validate(data, settings, folds=2, repeats=2)
    assert len(looked_up) == len(built) == 1  # one extraction for all 4 folds
    with caplog.at_level(logging.INFO, logger="tlkit"):
        second = cross_validate(data, settings, folds=2, repeats=2)
    assert len(looked_up) == 2 and len(built) == 1 and "feature cache up to date" in caplog.text
    assert "repeat 2/2, fold 2/2: val_accuracy" in caplog.text
    assert [f["val_loss"] for f in second.fold_results] == pytest.approx([f["val_loss"] for f in first.fold_results])


@pytest.mark.backend_independent
@pytest.mark.parametrize("folds, repeats, message", [
    (1, 1, "invalid folds: 1; expected an integer >= 2"),
    (2, 0, "invalid repeats: 0; expected an integer >= 1"),
    (4, 1, "too few images for 4 folds: class 'red' has 3 image(s) (train and validation pooled)"),
])
def test_bad_folds_are_refused(tmp_path, config, folds, repeats, message):
    data = make_dataset(tmp_path / "d", per_class=5)
    for i in range(2):
        (data / "red" / f"red_{i:02d}.jpg").unlink()
    with pytest.raises(tlkit.TlkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cross_validate(data, config, folds=folds, repeats=repeats)


@pytest.mark.backend_independent
def test_one_class_is_refused(tmp_path, config):
    with pytest.raises(tlkit.TlkitError, match="at least 2"):
        cross_validate(make_dataset(tmp_path / "d", ("red",), per_class=4), config, folds=2)
