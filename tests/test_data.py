import logging
import os

import numpy as np
import pytest
from PIL import Image

import tlkit
from tlkit.config import DataConfig
from tlkit.data import decode_image, decode_images, list_images, load_split, scan

from conftest import COLOURS, make_dataset, write_image


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


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3, splits=["train", "val"])
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_image(root / "train" / "red" / ".ipynb_checkpoints" / "copy.jpg", COLOURS["red"])
    write_image(root / "train" / ".hidden_class" / "x.jpg", COLOURS["red"])
    index = scan(root, DataConfig())
    assert index.class_names == ("blue", "red") and index.counts() == {"train": 6, "val": 6}


def test_split_is_shuffled_not_the_last_files(tmp_path):
    make_dataset(tmp_path / "d", ("blue", "red"), per_class=50)
    index = scan(tmp_path / "d", DataConfig(val_split=0.2))
    val_names = sorted(p.name for p in index.files["val"] if p.parent.name == "blue")
    last_ten = sorted(f"blue_{i:02d}.jpg" for i in range(40, 50))
    assert val_names != last_ten  # Keras's validation_split would take exactly these


@pytest.mark.parametrize("layout, message", [
    ("missing", "not found"),
    ("file", "not a folder"),
    ("no_classes", "no class sub-folders"),
    ("empty_class", "with no files"),
    ("train_only", "needs both train/ and validation/"),
    ("mismatch", "differ from train/"),
])
def test_bad_dataset_layouts(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "file":
        root.write_text("x")
    elif layout == "no_classes":
        write_image(root / "lonely.jpg", (1, 2, 3))
    elif layout == "empty_class":
        make_dataset(root, per_class=2)
        (root / "green").mkdir()
    elif layout == "train_only":
        make_dataset(root, per_class=2, splits=["train"])
    elif layout == "mismatch":
        make_dataset(root, ("blue", "red"), per_class=2, splits=["train"])
        make_dataset(root, ("blue", "green"), per_class=2, splits=["val"])
    with pytest.raises(tlkit.TlkitError, match=message):
        scan(root, DataConfig())


def test_decode_resizes_and_converts_every_mode(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]).convert("L"),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "sixteen.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)),
        "plain.bmp": Image.fromarray(rgb),
        "plain.webp": Image.fromarray(rgb),
        "plain.tiff": Image.fromarray(rgb),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        out = decode_image(tmp_path / name, 16)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8, name
        red, green, blue = (int(v) for v in out[8, 8])
        if name == "gray.png" or name == "sixteen.png":  # one channel: grey of the red level
            assert 190 <= red <= 210 and red == green == blue, (name, out[8, 8])
        else:
            assert red > 180 and green < 40 and blue < 40, (name, out[8, 8])


def test_transparent_areas_become_white(tmp_path):
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert decode_image(tmp_path / "clear.png", 8)[4, 4].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    # Stored pixels: left half red, right half blue; EXIF orientation 6 means "rotate 90 degrees clockwise
    # to display", after which the red half is on top.
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rotated.jpg", 40).astype(int)
    top, bottom = out[5, 20], out[35, 20]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_bad_files_are_skipped_and_named(tmp_path, caplog):
    good = write_image(tmp_path / "good.jpg", COLOURS["red"])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "Thumbs.db"
    junk.write_bytes(b"\xd0\xcf\x11\xe0" + bytes(200))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        images, kept, skipped = decode_images([good, empty, junk, truncated], 16, workers=2)
    assert kept == [0] and images.shape == (1, 16, 16, 3)
    assert set(skipped) == {str(empty), str(junk), str(truncated)}
    for path in (empty, junk, truncated):
        assert str(path) in caplog.text


def test_list_images_expands_folders_and_refuses_missing(tmp_path):
    write_image(tmp_path / "a" / "x.jpg", (1, 2, 3))
    write_image(tmp_path / "a" / "sub" / "y.png", (1, 2, 3))
    assert sorted(p.name for p in list_images([tmp_path / "a"])) == ["x.jpg", "y.png"]
    with pytest.raises(tlkit.TlkitError, match="no such file"):
        list_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(tlkit.TlkitError, match="no files found"):
        list_images([tmp_path / "empty"])


def test_decoded_images_are_cached_per_split(tmp_path, monkeypatch):
    import tlkit.data

    root = make_dataset(tmp_path / "d", per_class=4, splits=["train", "val"])
    (root / "train" / "blue" / "broken.jpg").write_bytes(b"nope")  # in the first class: shifts every row
    config = DataConfig(image_size=32, cache_dir=str(tmp_path / "cache"))
    index = scan(root, config)
    first = load_split(index, "train", config)
    assert isinstance(first.images, np.memmap) and first.images.dtype == np.uint8
    assert first.images.shape == (8, 32, 32, 3) and len(first.labels) == len(first.files) == 8
    assert list(first.skipped) == [str(root / "train" / "blue" / "broken.jpg")]
    for image, path, label in zip(first.images, first.files, first.labels):  # rows, files, labels stay together
        assert np.array_equal(image, decode_image(path, 32))
        assert index.class_names[label] == path.parent.name

    def no_decoding(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(tlkit.data, "decode_image", no_decoding)
    again = load_split(scan(root, config), "train", config)  # from the cache: nothing decoded
    assert np.array_equal(again.images, first.images) and again.files == first.files
    monkeypatch.undo()
    os.utime(first.files[0], ns=(0, 10**18))  # a changed file rebuilds the split's cache
    monkeypatch.setattr(tlkit.data, "decode_image", no_decoding)
    with pytest.raises(tlkit.TlkitError, match="no readable images"):
        load_split(scan(root, config), "train", config)
    monkeypatch.undo()  # a split with nothing readable was not cached: the next try decodes again
    assert len(load_split(scan(root, config), "train", config).files) == 8
