"""Every numeric setting finite and in its documented range, memory checked first, config files as people save them."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import tlkit
import tlkit.limits
from tlkit.backbone import weights_identity
from tlkit.cli import main
from tlkit.config import SECTIONS, Config, load_config
from tlkit.errors import OptionError

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

ABSURD = [
    ({"fit": {"learning_rate": math.inf}}, "invalid learning_rate: inf; expected a number > 0 and <= 10"),
    ({"fit": {"learning_rate": math.nan}}, "invalid learning_rate: nan"),
    ({"fit": {"finetune_learning_rate": -1e-5}}, "invalid finetune_learning_rate: -1e-05"),
    ({"augment": {"rotation_range": math.inf}}, "invalid rotation_range: inf; expected a number >= 0 and <= 180"),
    ({"augment": {"zoom_range": math.nan}}, "invalid zoom_range: nan"),
    ({"augment": {"width_shift_range": -0.1}}, "invalid width_shift_range: -0.1"),
    ({"model": {"head_units": 1_000_000_000}}, "invalid head_units: 1000000000; expected an integer >= 1 and <= 65536"),
    ({"data": {"image_size": 100_000}}, "invalid image_size: 100000; expected an integer >= 32"),
    ({"fit": {"batch_size": -3}}, "invalid batch_size: -3"),
    ({"fit": {"epochs": 10**9}}, "invalid epochs: 1000000000"),
    ({"model": {"dropout": math.nan}}, "invalid dropout: nan"),
    ({"runtime": {"workers": 0}}, "invalid workers: 0"),
]


@pytest.mark.parametrize("changes, message", ABSURD)
def test_absurd_numbers_are_refused_by_the_library(changes, message):
    with pytest.raises(tlkit.TlkitError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        Config().replace(**changes)


@pytest.mark.parametrize("text, message", [
    ("[fit]\nlearning_rate = inf\n", "invalid learning_rate: inf"),
    ("[augment]\nrotation_range = inf\n", "invalid rotation_range: inf"),
    ("[fit]\nlearning_rate = nan\n", "invalid learning_rate: nan"),
    ("[model]\nhead_units = 1000000000\n", "invalid head_units: 1000000000"),
    ("[data]\nimage_size = 100000\n", "invalid image_size: 100000"),
    ("[fit]\nepochs = -2\n", "invalid epochs: -2"),
])
def test_absurd_numbers_in_toml_files_are_refused(tmp_path, text, message):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(tlkit.TlkitError, match=message):
        load_config(tmp_path / "c.toml")


def test_json_infinity_and_nan_are_refused(tmp_path):
    (tmp_path / "c.json").write_text('{"fit": {"learning_rate": Infinity}, "augment": {"shear_range": NaN}}')
    with pytest.raises(tlkit.TlkitError, match="invalid (learning_rate: inf|shear_range: nan)"):
        load_config(tmp_path / "c.json")


def test_every_numeric_field_has_a_range_shown_in_help():
    from click.testing import CliRunner

    from tlkit.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"], terminal_width=300).output.split())
    for section in SECTIONS.values():
        for spec in section.__dataclass_fields__.values():
            if spec.type in ("int", "float"):
                bounds = spec.metadata["bounds"]
                assert bounds is not None, spec.name
                assert f"; {bounds.interval()}]" in text, spec.name
    assert "[default: 0.001; 0<x<=10]" in text and "[default: 224; 32<=x<=1024]" in text


def test_settings_that_cannot_fit_in_memory_are_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    monkeypatch.setattr(tlkit.limits, "machine_memory", lambda: 2**30)  # a 1 GiB machine
    Config().replace(data={"image_size": 224}, fit={"batch_size": 32}).check_memory()  # 0.02 GiB of input: fine
    big_batch = Config().replace(data={"image_size": 512}, fit={"batch_size": 1024})  # made and loaded: fine
    with pytest.raises(tlkit.TlkitError, match=r"more memory than this machine has \(1.0 GiB\): a batch of 1024 "
                                               r"images of 512x512 takes 3.0 GiB"):
        big_batch.check_memory()
    big_head = Config().replace(data={"image_size": 256}, model={"head_units": 4096, "pooling": "flatten"})
    with pytest.raises(tlkit.TlkitError, match="a head of 4096 units on flatten features 2.0 GiB"):
        big_head.check_memory()
    # training and cross-validation refuse them before reading the data (there is none here)
    for call in (tlkit.train, tlkit.cross_validate):
        with pytest.raises(tlkit.TlkitError, match="more memory than this machine has"):
            call(tmp_path / "no-such-data", big_head)
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--image-size", "512", "--batch-size", "1024"])
    assert result.exit_code == 1 and "more memory than this machine has" in result.output


@pytest.mark.parametrize("name, text", [("c.json", '{"fit": {"epochs": 7}}'), ("c.toml", "[fit]\nepochs = 7\n")])
def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path, name, text):
    """Windows Notepad starts UTF-8 files with a BOM."""
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(tmp_path / name).fit.epochs == 7


@pytest.mark.parametrize("name, text", [("deep.json", "[" * 100_000 + "]" * 100_000),
                                        ("deep.toml", "x = " + "[" * 100_000 + "]" * 100_000)])
def test_a_config_nested_too_deeply_is_a_one_line_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(tlkit.TlkitError) as caught:
        load_config(tmp_path / name)
    assert str(caught.value) == f"cannot parse config file {tmp_path / name}: it is nested too deeply to be a config"


def test_an_empty_cache_dir_is_refused(monkeypatch):
    with pytest.raises(OptionError, match="invalid cache_dir: ''"):
        Config().replace(runtime={"cache_dir": ""})


@pytest.mark.parametrize("home", ["", None])
def test_without_a_home_the_cache_is_not_put_at_the_root(monkeypatch, home):
    monkeypatch.delenv("TLKIT_CACHE", raising=False)
    if home is None:
        monkeypatch.delenv("HOME")
    else:
        monkeypatch.setenv("HOME", home)
    assert not Config().runtime.cache_dir.startswith("/.cache")
    assert Config().runtime.cache_dir == tlkit.limits.fallback_cache_dir()


def test_a_relative_weights_path_is_recorded_resolved_with_the_same_identity(tmp_path, monkeypatch):
    (tmp_path / "w.weights.h5").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    config = Config().replace(model={"weights": "w.weights.h5"})
    assert config.model.weights == str(tmp_path / "w.weights.h5")
    assert json.loads(json.dumps(config.to_dict()))["model"]["weights"] == str(tmp_path / "w.weights.h5")
    assert weights_identity(config.model.weights) == weights_identity("w.weights.h5")
    assert Config().replace(model={"weights": "NONE"}).model.weights == "NONE"  # keywords are not paths
