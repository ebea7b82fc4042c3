import os

import numpy as np
import pytest

from tlkit.config import DataConfig
from tlkit.data import decode_image, list_images, scan
from tlkit.data.image_cache import load_split

from conftest import COLOURS, make_dataset, write_image

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


def test_presplit_folder_with_val_and_test(tmp_path):
    make_dataset(tmp_path / "d", ("red", "blue"), per_class=3, splits=["train", "val", "test"])
    index = scan(tmp_path / "d", DataConfig())
    assert index.presplit
    assert index.class_names == ("blue", "red")  # sorted by name
    assert index.counts() == {"train": 6, "val": 6, "test": 6}
    assert list(index.labels["val"]) == [0, 0, 0, 1, 1, 1]
    assert all(p.parent.name == index.class_names[l] for p, l in zip(index.files["train"], index.labels["train"]))


def test_validation_folder_name_is_accepted(tmp_path):
    make_dataset(tmp_path / "d", per_class=2, splits=["train", "validation"])
    assert scan(tmp_path / "d", DataConfig()).counts() == {"train": 4, "val": 4}


def test_plain_folder_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, ("blue", "green", "red"), per_class=20)
    config = DataConfig(val_split=0.2, test_split=0.1, seed=3)
    index = scan(root, config)
    for split, expected in (("train", 14), ("val", 4), ("test", 2)):
        per_class = np.bincount(index.labels[split], minlength=3)
        assert list(per_class) == [expected] * 3, split
    sets = [set(index.files[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(root.rglob("*.jpg"))
    assert scan(root, config).files == index.files  # stable when run again
    other = scan(root, DataConfig(val_split=0.2, test_split=0.1, seed=4))
    assert other.files["val"] != index.files["val"]


def test_split_barely_moves_when_a_file_is_added(tmp_path):
    root = make_dataset(tmp_path / "d", ("blue", "red"), per_class=40)
    before = scan(root, DataConfig(val_split=0.25))
    write_image(root / "blue" / "new.jpg", COLOURS["blue"])
    after = scan(root, DataConfig(val_split=0.25))
    moved_to_val = set(after.files["val"]) - set(before.files["val"]) - {root / "blue" / "new.jpg"}
    assert len(moved_to_val) <= 1  # a reshuffle would move about three quarters of the ten


def test_split_is_shuffled_not_the_last_files(tmp_path):
    make_dataset(tmp_path / "d", ("blue", "red"), per_class=50)
    index = scan(tmp_path / "d", DataConfig(val_split=0.2))
    val_names = sorted(p.name for p in index.files["val"] if p.parent.name == "blue")
    last_ten = sorted(f"blue_{i:02d}.jpg" for i in range(40, 50))
    assert val_names != last_ten  # Keras's validation_split would take exactly these


def test_list_images_expands_folders_recursively(tmp_path):
    write_image(tmp_path / "a" / "x.jpg", (1, 2, 3))
    write_image(tmp_path / "a" / "sub" / "y.png", (1, 2, 3))
    assert sorted(p.name for p in list_images([tmp_path / "a"])) == ["x.jpg", "y.png"]


def test_decoded_images_are_cached_per_split(tmp_path, monkeypatch):
    import tlkit.data.decode

    root = make_dataset(tmp_path / "d", per_class=4, splits=["train", "val"])
    (root / "train" / "blue" / "broken.jpg").write_bytes(b"nope")  # in the first class: shifts every row
    config = tlkit.Config().replace(data={"image_size": 32}, runtime={"cache_dir": str(tmp_path / "cache")})
    index = scan(root, config.data)
    first = load_split(index, "train", config)
    assert isinstance(first.images, np.memmap) and first.images.dtype == np.uint8
    assert first.images.shape == (8, 32, 32, 3) and len(first.labels) == len(first.files) == 8
    assert list(first.skipped) == [str(root / "train" / "blue" / "broken.jpg")]
    for image, path, label in zip(first.images, first.files, first.labels):  # rows, files, labels stay together
        assert np.array_equal(image, decode_image(path, 32))
        assert index.class_names[label] == path.parent.name

    def no_decoding(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(tlkit.data.decode, "decode_image", no_decoding)
    again = load_split(scan(root, config.data), "train", config)  # from the cache: nothing decoded
    assert np.array_equal(again.images, first.images) and again.files == first.files
    monkeypatch.undo()
    os.utime(first.files[0], ns=(0, 10**18))  # a changed file rebuilds the split's cache
    monkeypatch.setattr(tlkit.data.decode, "decode_image", no_decoding)
    with pytest.raises(tlkit.TlkitError, match="no readable images"):
        load_split(scan(root, config.data), "train", config)
    monkeypatch.undo()  # a split with nothing readable was not cached: the next try decodes again
    assert len(load_split(scan(root, config.data), "train", config).files) == 8
