import json

import pytest

import tlkit
from tlkit.config import AugmentConfig, Config, load_config


def test_defaults_are_the_classic_recipe_and_documented_sizes():
    assert AugmentConfig() == AugmentConfig(40.0, 0.2, 0.2, 0.2, 0.2, True, "nearest")
    config = Config()
    assert config.data.image_size == 150
    assert config.train.optimizer == "rmsprop"
    assert config.train.finetune_learning_rate == 1e-5
    assert config.train.unfreeze_from == "block5_conv1"


def test_weights_default_comes_from_environment(monkeypatch):
    assert Config().train.weights == "imagenet"
    monkeypatch.setenv("TLKIT_WEIGHTS", "/some/file.h5")
    assert Config().train.weights == "/some/file.h5"


def test_json_and_toml_files_set_options(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"train": {"epochs": 7, "mode": "frozen"}, "augment": {"zoom_range": 0}}))
    (tmp_path / "b.toml").write_text('[data]\nimage_size = 64\n[augment]\nhorizontal_flip = false\n')
    a, b = load_config(tmp_path / "a.json"), load_config(tmp_path / "b.toml")
    assert (a.train.epochs, a.train.mode, a.augment.zoom_range) == (7, "frozen", 0.0)
    assert (b.data.image_size, b.augment.horizontal_flip) == (64, False)


@pytest.mark.parametrize("raw, message", [
    ({"train": {"epochs": -1}}, "invalid epochs"),
    ({"train": {"mode": "magic"}}, "invalid mode"),
    ({"data": {"image_size": 0}}, "invalid image_size"),
    ({"train": {"epocs": 3}}, "unknown option 'epocs'"),
    ({"model": {}}, "unknown config section 'model'"),
    ({"train": {"epochs": "many"}}, "must be int"),
    ({"data": {"val_split": 0.6, "test_split": 0.5}}, r"val_split \+ test_split"),
])
def test_bad_options_are_refused_with_the_name(tmp_path, raw, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(tlkit.TlkitError, match=message):
        load_config(path)


def test_missing_or_unparsable_file(tmp_path):
    with pytest.raises(tlkit.TlkitError, match="not found"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(tlkit.TlkitError, match="cannot parse"):
        load_config(tmp_path / "broken.toml")


def test_replace_changes_only_what_is_named():
    config = Config().replace(train={"epochs": 3})
    assert config.train.epochs == 3
    assert config.train.batch_size == Config().train.batch_size
    assert config.augment == Config().augment
