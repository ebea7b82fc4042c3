import json

import pytest

import tlkit
from tlkit.config import AugmentConfig, Config, load_config

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


def test_defaults_are_the_classic_recipe_and_documented_sizes():
    assert AugmentConfig() == AugmentConfig(40.0, 0.2, 0.2, 0.2, 0.2, True, "nearest")
    config = Config()
    assert config.data.image_size == 224  # the size ImageNet VGG16 was trained at
    assert config.fit.optimizer == "rmsprop"
    assert config.fit.finetune_learning_rate == 1e-5
    assert config.model.unfreeze_from == "block5_conv1"


def test_weights_default_comes_from_environment(monkeypatch):
    assert Config().model.weights == "imagenet"
    monkeypatch.setenv("TLKIT_WEIGHTS", "/some/file.h5")
    assert Config().model.weights == "/some/file.h5"


def test_json_and_toml_files_set_options(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"train": {"epochs": 7, "mode": "frozen"}, "augment": {"zoom_range": 0}}))
    (tmp_path / "b.toml").write_text('[data]\nimage_size = 64\n[augment]\nhorizontal_flip = false\n')
    a, b = load_config(tmp_path / "a.json"), load_config(tmp_path / "b.toml")
    assert (a.fit.epochs, a.fit.mode, a.augment.zoom_range) == (7, "frozen", 0.0)
    assert (b.data.image_size, b.augment.horizontal_flip) == (64, False)


@pytest.mark.parametrize("raw, message", [
    ({"train": {"epochs": -1}}, "invalid epochs"),
    ({"train": {"mode": "magic"}}, "invalid mode"),
    ({"data": {"image_size": 0}}, "invalid image_size"),
    ({"train": {"epocs": 3}}, "unknown option 'epocs'"),
    ({"data": {"epocs": 3}}, "known: image_size, val_split, test_split, labels, label_separator, label_columns, seed, "
                             "workers, cache_dir$"),  # in order
    ({"network": {}}, "unknown config section 'network'"),
    ({"model": {"epochs": 3}}, "unknown option 'epochs' in config section 'model'"),  # fit's, not model's
    ({"runtime": {"mode": "frozen"}}, "unknown option 'mode'"),
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
    config = Config().replace(fit={"epochs": 3})
    assert config.fit.epochs == 3
    assert config.fit.batch_size == Config().fit.batch_size
    assert config.augment == Config().augment
    assert Config().replace(train={"epochs": 3}) == config  # the former section's name is understood


def test_the_former_sections_load_into_the_new_ones(tmp_path):
    """A config file (or a run's config.json) of run format 2: sections data, augment, train."""
    former = {"data": {"image_size": 64, "workers": 3, "cache_dir": "/c"}, "augment": {"zoom_range": 0.1},
              "train": {"mode": "finetune", "weights": "none", "head_units": 8, "precision": "mixed_bfloat16",
                        "distribute": "none", "augment_on": "cpu", "patience": 2},
              "provenance": {"run_format": 2}}
    (tmp_path / "config.json").write_text(json.dumps(former))
    config = load_config(tmp_path / "config.json")
    assert config.data.image_size == 64 and config.augment.zoom_range == 0.1
    assert (config.model.weights, config.model.head_units) == ("none", 8)
    assert (config.fit.mode, config.fit.patience) == ("finetune", 2)
    assert config.runtime == tlkit.RuntimeConfig("mixed_bfloat16", "cpu", "none", 3, "/c")
    assert load_config(tmp_path / "config.json").to_dict()["runtime"]["workers"] == 3


def test_machine_settings_are_marked_on_their_fields():
    """The settings a resume may change are the machine's: marked once, on the field."""
    config = Config().replace(runtime={"workers": 3, "cache_dir": "/c", "distribute": "none"})
    assert config.machine_settings() == {"distribute": "none", "workers": 3, "cache_dir": "/c"}
    assert "workers" not in config.run_settings()["runtime"] and "precision" in config.run_settings()["runtime"]
    assert Config().with_machine_settings(config).runtime.workers == 3


def test_every_option_has_a_flag_with_its_help_and_choices():
    from click.testing import CliRunner

    from tlkit.cli import main
    from tlkit.config import SECTIONS

    text = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    for section in SECTIONS.values():
        for spec in section.__dataclass_fields__.values():
            assert f"--{spec.name.replace('_', '-')}" in text
            assert spec.metadata["help"].split()[0] in text
    assert "[features|frozen|finetune]" in text and "[auto|none|mirrored|multiworker]" in text
