import json

import keras
import numpy as np
import pytest

import tlkit
import tlkit.backbone
import tlkit.model
from tlkit.data import scan
from tlkit.data.image_cache import load_split
from tlkit.features import extract

from conftest import make_dataset


def _weights(model, layer):
    return [w.copy() for w in model.get_layer("vgg16").get_layer(layer).get_weights()]


def test_features_mode_writes_a_whole_run(tmp_path, config):
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=6)
    result = tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [  # the checkpoint is gone once the run is whole
        "checksums.json", "classes.json", "config.json", "curves.png", "history.csv", "history.json", "metrics.json",
        "model.keras"]
    assert json.loads((run / "classes.json").read_text()) == ["blue", "green", "red"]
    assert result.class_names == ("blue", "green", "red") and result.run_dir == run
    history = json.loads((run / "history.json").read_text())
    assert [p["name"] for p in history] == ["features"]
    assert len(history[0]["history"]["val_accuracy"]) == config.fit.epochs
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == {"train": 12, "val": 6} and metrics["skipped"] == {}
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["best_epoch"] >= 1
    keras.utils.set_random_seed(config.data.seed)
    untrained = tlkit.model.build_head(result.model.get_layer("head").input_shape[1:], 3, config.model,
                                       config.data.seed)
    trained = result.model.get_layer("head").get_layer("hidden").get_weights()[0]
    assert not np.allclose(trained, untrained.get_layer("hidden").get_weights()[0])  # the head was fitted
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["provenance"]["data_dir"] == str(data.resolve())
    assert tlkit.load_config(run / "config.json") == config  # the record reproduces the run
    model = keras.models.load_model(run / "model.keras")
    assert model.output_shape == (None, 3)


def test_saved_model_scores_like_the_head_on_cached_features(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=6)
    result = tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    features = extract(data, config, verbose=0)
    head = result.model.get_layer("head")
    x_val, _, files = features.split("val")
    val = load_split(features.index, "val", config)
    assert [str(f) for f in files] == [str(f) for f in val.files]
    from_images = result.model.predict(val.images, verbose=0)
    from_features = head.predict(x_val, verbose=0)
    assert from_images.shape == (len(files), 1)  # two classes: one sigmoid unit
    np.testing.assert_allclose(from_images, from_features, atol=1e-5)


def test_frozen_mode_trains_the_head_only(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=5)
    result = tlkit.train(data, config.replace(train={"mode": "frozen"}), run_dir=tmp_path / "run", verbose=0)
    reference = tlkit.backbone.build_base("none", 32, config.data.seed)  # same seed, same initial base
    for layer in ("block1_conv1", "block5_conv3"):
        for trained, initial in zip(_weights(result.model, layer), reference.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(trained, initial)
    keras.utils.set_random_seed(config.data.seed)
    # the head's initial weights
    untrained = tlkit.model.build_head(reference.output_shape[1:], 2, config.model, config.data.seed)
    hidden = result.model.get_layer("head").get_layer("hidden").get_weights()[0]
    assert not np.array_equal(hidden, untrained.get_layer("hidden").get_weights()[0])
    history = result.history[0]
    assert history["name"] == "frozen" and len(history["history"]["loss"]) == 2


def test_finetune_trains_block5_and_keeps_block4(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=5)
    warm = tlkit.train(data, config, run_dir=tmp_path / "warm", verbose=0)
    before4, before5 = _weights(warm.model, "block4_conv3"), _weights(warm.model, "block5_conv1")
    tuned = tlkit.train(data, config.replace(train={"mode": "finetune", "finetune_learning_rate": 1e-3}),
                        run_dir=tmp_path / "tuned", from_run=tmp_path / "warm", verbose=0)
    for after, before in zip(_weights(tuned.model, "block4_conv3"), before4):
        np.testing.assert_array_equal(after, before)
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(tuned.model, "block5_conv1"), before5))
    assert [p["name"] for p in tuned.history] == ["finetune"]
    record = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert record["provenance"]["from_run"] == str(tmp_path / "warm")


@pytest.mark.parametrize("warmup", ["features", "frozen"])
def test_finetune_warms_up_then_finetunes(tmp_path, config, warmup):
    data = make_dataset(tmp_path / "d", per_class=4)
    settings = config.replace(train={"mode": "finetune", "warmup_mode": warmup, "unfreeze_from": "block4_conv1"})
    result = tlkit.train(data, settings, run_dir=tmp_path / "run", verbose=0)
    assert [p["name"] for p in result.history] == [f"warmup ({warmup})", "finetune"]
    assert [len(p["history"]["loss"]) for p in result.history] == [1, 2]
    base = result.model.get_layer("vgg16")
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable[0] == "block4_conv1" and "block3_conv3" not in trainable
    initial = tlkit.backbone.build_base("none", 32, config.data.seed)  # the same seed: the same initial base
    kernel = {name: initial.get_layer(name).get_weights()[0] for name in ("block3_conv3", "block4_conv1")}
    np.testing.assert_array_equal(_weights(result.model, "block3_conv3")[0], kernel["block3_conv3"])
    assert not np.allclose(_weights(result.model, "block4_conv1")[0], kernel["block4_conv1"])


def test_presplit_test_split_is_scored(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=3, splits=["train", "val", "test"])
    result = tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    assert {"test_accuracy", "test_loss"} <= set(result.metrics)
    assert result.metrics["images"] == {"train": 6, "val": 6, "test": 6}


@pytest.mark.backend_independent
def test_existing_run_is_never_overwritten(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=3)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_text("precious")
    with pytest.raises(tlkit.TlkitError, match="already exists"):
        tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    assert (tmp_path / "run" / "model.keras").read_text() == "precious"


class Fail(keras.callbacks.Callback):
    """Fails in the first training batch, before any epoch has finished."""

    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("out of memory, say")


@pytest.mark.backend_independent
def test_failed_training_leaves_no_half_run(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0, callbacks=[Fail()])
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # an empty folder the user made stays, empty
    with pytest.raises(RuntimeError, match="out of memory"):
        tlkit.train(data, config.replace(train={"mode": "frozen"}), run_dir=tmp_path / "mine", verbose=0,
                    callbacks=[Fail()])
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


@pytest.mark.backend_independent
def test_an_unknown_layer_to_unfreeze_from_is_refused_before_anything_runs():
    with pytest.raises(tlkit.TlkitError, match="invalid unfreeze_from: 'block9_conv1'; expected a VGG16 layer"):
        tlkit.Config().replace(train={"unfreeze_from": "block9_conv1"})


def test_from_run_fixes_the_split_and_the_head(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=6)
    tlkit.train(data, config.replace(data={"seed": 7}, train={"head_units": 8}), run_dir=tmp_path / "warm", verbose=0)
    tuned = tlkit.train(data, config.replace(train={"mode": "finetune"}), run_dir=tmp_path / "tuned",
                        from_run=tmp_path / "warm", verbose=0)
    assert tuned.config.data.seed == 7 and tuned.config.model.head_units == 8  # no leak into the new val split


@pytest.mark.backend_independent
@pytest.mark.parametrize("change, message", [
    ({"data": {"val_split": 0.0}}, "no validation images"),
])
def test_untrainable_data_is_refused(tmp_path, config, change, message):
    with pytest.raises(tlkit.TlkitError, match=message):
        tlkit.train(make_dataset(tmp_path / "d", per_class=3), config.replace(**change), verbose=0)


@pytest.mark.backend_independent
def test_one_class_is_refused_for_training(tmp_path, config):
    with pytest.raises(tlkit.TlkitError, match="at least 2"):
        tlkit.train(make_dataset(tmp_path / "d", ("red",), per_class=3), config, verbose=0)


@pytest.mark.backend_independent
def test_default_run_folder_is_under_runs(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=3)
    result = tlkit.train(data, config, verbose=0)
    assert result.run_dir.resolve().parent == tmp_path / "runs" and result.run_dir.name.endswith("-features")


def test_mixed_precision_keeps_the_output_float32(tmp_path, config):
    import keras

    data = make_dataset(tmp_path / "d", per_class=4)
    settings = config.replace(train={"mode": "frozen", "precision": "mixed_bfloat16", "epochs": 1})
    result = tlkit.train(data, settings, run_dir=tmp_path / "run", verbose=0)
    assert result.model.get_layer("vgg16").get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert result.model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["precision"] == "mixed_bfloat16"


def test_augmentation_runs_where_asked_and_never_stays_in_the_model(tmp_path, config, monkeypatch):
    import tlkit.augment

    calls = []
    original = tlkit.augment.augment_batch
    monkeypatch.setattr(tlkit.augment, "augment_batch", lambda *a: calls.append(1) or original(*a))
    data = make_dataset(tmp_path / "d", per_class=4)
    for where in ("cpu", "device"):
        calls.clear()
        tlkit.train(data, config.replace(train={"mode": "frozen", "augment_on": where}),
                    run_dir=tmp_path / where, verbose=0)
        assert (len(calls) > 0) == (where == "cpu")  # the classic ImageDataGenerator ran only when asked
        saved = keras.models.load_model(tmp_path / where / "model.keras")
        assert not any(isinstance(layer, tlkit.augment.RandomAffine) for layer in saved._flatten_layers())


def test_class_weights_balance_the_classes_and_reach_the_loss(tmp_path, config):
    from tlkit.data.batches import Batches
    from tlkit.training.phases import class_weights, row_weights

    labels = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(class_weights(labels, 2, "auto"), [4 / 6, 4 / 2])  # each class weighs 2 in all
    assert class_weights(labels, 2, "none") is None
    batch = Batches(np.zeros((4, 1)), labels, 4, weights=row_weights(labels, 2, "auto"))[0]
    assert len(batch) == 3 and batch[2].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2])
    data = make_dataset(tmp_path / "d", per_class=12)
    for extra in range(8):  # 8 of the 12 red images removed: about 3 red to 8 blue in training
        (data / "red" / f"red_{extra:02d}.jpg").unlink()
    for mode in ("features", "frozen"):
        losses = {}
        for weighting in ("none", "auto"):
            result = tlkit.train(data, config.replace(train={"mode": mode, "class_weight": weighting}),
                                 run_dir=tmp_path / f"{mode}-{weighting}", verbose=0)
            losses[weighting] = result.history[0]["history"]["loss"][0]
        train_counts = np.bincount(load_split(scan(data, config.data), "train", config).labels)
        expected = {name: sum(train_counts) / (2 * count) for name, count in zip(("blue", "red"), train_counts)}
        assert result.metrics["class_weight"] == pytest.approx(expected)
        assert losses["auto"] != pytest.approx(losses["none"], rel=1e-4)  # the weights reach the loss
