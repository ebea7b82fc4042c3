import os

import numpy as np
import pytest

import tlkit
from tlkit.data.image_cache import load_split
from tlkit.features import extract

from conftest import make_dataset


def test_extract_caches_then_reuses(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=4)
    first = extract(data, config, verbose=0)
    assert not first.reused and (first.path / "manifest.json").is_file()
    x, y, files = first.split("train")
    assert x.shape[1:] == (1, 1, 512) and len(x) == len(y) == len(files) > 0
    assert [f.parent.name for f in files] == [first.index.class_names[label] for label in y]
    second = extract(data, config, verbose=0)
    assert second.reused and second.path == first.path
    assert np.array_equal(second.split("train")[0], x)


def test_cache_is_reused_across_splits(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=6)
    first = extract(data, config, verbose=0)
    resplit = extract(data, config.replace(data={"val_split": 0.5}), verbose=0)
    assert resplit.reused and resplit.path == first.path
    assert len(resplit.split("val")[0]) != len(first.split("val")[0])
    # Random weights are drawn from the seed, so the seed is part of their identity.
    assert extract(data, config.replace(data={"seed": 99}), verbose=0).path != first.path


@pytest.mark.backend_independent
def test_cache_is_found_however_the_folder_is_spelled(tmp_path, config, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=4)
    (data / "red" / "broken.jpg").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    relative = extract("d", config, verbose=0)
    absolute = extract(data.resolve(), config, verbose=0)
    assert absolute.reused and absolute.path == relative.path
    assert list(absolute.skipped) == [str(data.resolve() / "red" / "broken.jpg")]
    x, _, files = absolute.split("train")
    assert len(x) == len(files) and str(data.resolve() / "red" / "broken.jpg") not in map(str, files)


@pytest.mark.backend_independent
def test_changed_inputs_recompute(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=4)
    first = extract(data, config, verbose=0)
    victim = sorted(data.rglob("*.jpg"))[0]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = extract(data, config, verbose=0)
    assert not touched.reused and touched.path != first.path
    resized = extract(data, config.replace(data={"image_size": 48}), verbose=0)
    assert not resized.reused and resized.path not in (first.path, touched.path)
    (data / "red" / "extra.jpg").write_bytes(victim.read_bytes())
    assert not extract(data, config, verbose=0).reused


@pytest.mark.backend_independent
def test_weights_file_identity_is_its_content(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=3)
    import keras

    keras.utils.set_random_seed(0)
    weights = tmp_path / "w.weights.h5"
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(weights)
    with_file = config.replace(train={"weights": str(weights)})
    first = extract(data, with_file, verbose=0)
    assert extract(data, with_file, verbose=0).reused
    assert extract(data, with_file.replace(data={"seed": 5}), verbose=0).path == first.path  # seed is irrelevant
    keras.utils.set_random_seed(1)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(weights)
    assert extract(data, with_file, verbose=0).path != first.path


@pytest.mark.backend_independent
def test_undecodable_file_is_skipped_and_recorded(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=4)
    bad = data / "blue" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    (data / "blue" / "Thumbs.db").write_bytes(b"\x00" * 64)
    features = extract(data, config, verbose=0)
    assert set(features.skipped) == {str(bad), str(data / "blue" / "Thumbs.db")}
    every = [p for split in features.index.files for p in features.split(split)[2]]
    assert str(bad) not in map(str, every) and len(every) == 8
    assert extract(data, config, verbose=0).skipped == features.skipped  # remembered by the cache


@pytest.mark.backend_independent
def test_library_exposes_extract():
    assert tlkit.extract is extract


@pytest.mark.backend_independent
def test_chunks_span_splits_and_keep_each_image_with_its_row(tmp_path):
    from tlkit.io import RowFile
    from tlkit.extraction import _chunks

    first = np.arange(5, dtype=np.float32).reshape(5, 1)
    second = np.arange(10, 13, dtype=np.float32).reshape(3, 1)
    with RowFile(tmp_path / "a.npy", first.shape) as a, RowFile(tmp_path / "b.npy", second.shape) as b:
        a.write(0, first)
        b.write(0, second)
        chunks = list(_chunks([(a, [7, 6, 5, 4, 3]), (b, [0, 1, 2])], size=3))
    assert [len(rows) for _, rows in chunks] == [3, 3, 2]  # the middle chunk spans both sources
    pairs = {row: float(image[0]) for images, rows in chunks for row, image in zip(rows, images)}
    assert pairs == {7: 0, 6: 1, 5: 2, 4: 3, 3: 4, 0: 10, 1: 11, 2: 12}


CACHE_DAMAGE = [*((kind, name, "truncated") for kind, names in (
    ("features", ("features.npy", "skipped.json", "manifest.json", "checksums.json")),
    ("images", ("images.npy", "kept.json", "skipped.json", "manifest.json", "checksums.json"))) for name in names),
    ("features", "features.npy", "altered"), ("images", "images.npy", "altered")]


@pytest.mark.backend_independent
@pytest.mark.parametrize("kind, name, how", CACHE_DAMAGE)
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path, config, kind, name, how, caplog):
    data = make_dataset(tmp_path / "d", per_class=4)
    first = extract(data, config, verbose=0)
    features = first.split("train")[0]
    split = load_split(first.index, "train", config)
    images = np.array(split.images)
    damaged = (first.path if kind == "features" else split.cache) / name
    content = bytearray(damaged.read_bytes())
    if how == "truncated":
        content = content[:len(content) // 2]
    else:  # same size, one byte changed: only the checksum can tell
        content[len(content) // 2] ^= 0xFF
    damaged.write_bytes(bytes(content))
    if kind == "features":
        again = extract(data, config, verbose=0)
        assert not again.reused  # the damaged cache was not loaded
        np.testing.assert_array_equal(again.split("train")[0], features)
    else:
        np.testing.assert_array_equal(load_split(first.index, "train", config).images, images)
    assert f"is damaged ({name}" in caplog.text or "checksums.json is missing or damaged" in caplog.text
