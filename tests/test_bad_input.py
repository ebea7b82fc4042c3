"""Bad input, end to end: broken and unusual files, bad paths, runs and options, all made in tmp_path.

The rule under test: a bad image inside a dataset is skipped with a warning naming it, and listed in
the run's or feature set's ``skipped``; a bad path or option is a one-line ``Error: ...`` with exit
code 1 and no traceback from the command line, and a TlkitError from the library; nothing already on
disk (an earlier run, a cache) is damaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.data import ImageTooLarge, decode_image, decode_images, scan

from conftest import COLOURS, make_dataset, write_image

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

FAST = ["--image-size", "32", "--weights", "none", "--epochs", "1", "--batch-size", "8", "--patience", "0", "--quiet"]
EXTRACT_FAST = ["--image-size", "32", "--weights", "none", "--quiet"]
UNIDENTIFIED = "UnidentifiedImageError: cannot identify image file"
RED, BLUE, WHITE = (220, 30, 30), (30, 40, 210), (255, 255, 255)
#: Runs its arguments as a program without root's power to read any file: CAP_DAC_OVERRIDE and
#: CAP_DAC_READ_SEARCH leave the bounding set, so the program exec'd next never has them. (Becoming
#: ``nobody`` instead would not do: Python itself may live under a root-only folder, such as /root.)
WITHOUT_READ_OVERRIDE = """
import ctypes, os, sys
prctl = ctypes.CDLL(None, use_errno=True).prctl
for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop capability {capability}: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def cli(*args) -> Result:
    """Run ``tlkit ARGS`` in-process, then undo the logging set-up the CLI does."""
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        log = logging.getLogger("tlkit")
        log.handlers.clear()
        log.propagate = True
        log.setLevel(logging.NOTSET)


def assert_error(result: Result, *phrases: str) -> None:
    """Exit code 1; the output is log lines then one ``Error: ...`` line holding every phrase; no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    *before, last = result.output.rstrip("\n").split("\n")
    assert last.startswith("Error: "), result.output
    assert all(line.startswith(("WARNING: ", "INFO: ")) for line in before), result.output
    for phrase in phrases:
        assert phrase in last, (phrase, last)


def assert_usage_error(result: Result, phrase: str) -> None:
    """A usage error: exit code 2, one line ``Error: Invalid value...`` holding ``phrase``; no traceback."""
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and phrase in result.output, \
        result.output


def assert_raises_one_line(call, *phrases: str) -> None:
    """``call()`` raises a TlkitError whose message is one line holding every phrase."""
    with pytest.raises(tlkit.TlkitError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(phrase in message for phrase in phrases), message


def run_tlkit(*args, cwd: Path, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """The ``tlkit`` console script in a new process; ``unprivileged``: as root, without reading every file."""
    command = [sys.executable, str(Path(sys.executable).with_name("tlkit")), *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        command = [sys.executable, "-c", WITHOUT_READ_OVERRIDE, *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: relative name -> (contents, mtime)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def header_only_png(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` RGB pixels but holding one byte row: tiny, never decodable whole."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
            + chunk(b"IEND", b""))


def too_large(pixels: int) -> str:
    """How the skip reason of an image of ``pixels`` pixels starts, against the current limit."""
    return (f"ImageTooLarge: image has {pixels} pixels, above the limit of {Image.MAX_IMAGE_PIXELS} "
            "(PIL.Image.MAX_IMAGE_PIXELS)")


# ---------------------------------------------------------------------------------------------------
# The corpus: one split dataset holding every kind of bad entry, built and trained once per module.


@dataclass
class Corpus:
    """A split dataset (classes ``café`` and ``蜜蜂``) whose ``train/`` holds bad entries beside good images.

    Attributes:
        root: The dataset folder.
        good: The readable images of ``train/``, in index order.
        undecodable: Files skipped at decoding: path -> how their skip reason starts.
        unreachable: Entries skipped by the scan (bad symlinks): path -> their skip reason.
        hidden: The hidden entries, relative to ``root``, in the order they are listed.
    """

    root: Path
    good: list[Path]
    undecodable: dict[str, str]
    unreachable: dict[str, str]
    hidden: list[str]


def build_corpus(root: Path) -> Corpus:
    """Write the corpus under ``root``: good images (odd formats among them), then every kind of bad entry."""
    for split, count in (("train", 6), ("validation", 3)):
        for name, colour in (("café", RED), ("蜜蜂", BLUE)):
            for i in range(count):
                write_image(root / split / name / f"{i:02d}.jpg", colour, size=32,
                            seed=zlib.crc32(f"{split}{name}{i}".encode()))
    cafe, bees = root / "train" / "café", root / "train" / "蜜蜂"
    write_image(cafe / "été 1.jpg", RED, size=32)
    frames = [Image.new("RGB", (32, 32), BLUE), Image.new("RGB", (32, 32), RED)]
    frames[0].save(bees / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((32, 32), 20000, np.uint16)).save(bees / "sixteen.png")
    good = sorted(cafe.iterdir()) + sorted(bees.iterdir())

    (cafe / "empty.jpg").write_bytes(b"")
    (cafe / "truncated.jpg").write_bytes((cafe / "00.jpg").read_bytes()[:(cafe / "00.jpg").stat().st_size // 2])
    (cafe / "random.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (cafe / "notes.jpg").write_text("not a picture")
    (cafe / "notes.txt").write_text("not a picture")
    (cafe / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
    (cafe / "huge.png").write_bytes(header_only_png(20000, 20000))
    undecodable = {"empty.jpg": UNIDENTIFIED, "truncated.jpg": "OSError: ", "random.jpg": UNIDENTIFIED,
                   "notes.jpg": UNIDENTIFIED, "notes.txt": UNIDENTIFIED, "Thumbs.db": UNIDENTIFIED,
                   "huge.png": too_large(20000 * 20000)}

    (cafe / "broken.jpg").symlink_to("missing.jpg")
    (cafe / "up").symlink_to("..", target_is_directory=True)
    (bees / "loop").symlink_to("loop")
    (bees / "café").symlink_to("../café", target_is_directory=True)  # would put café's images in 蜜蜂
    unreachable = {
        str(cafe / "broken.jpg"): "broken symlink: its target missing.jpg does not exist",
        str(cafe / "up"): f"symlink loop: leads back to {os.path.realpath(root / 'train')}, a folder it is inside",
        str(bees / "loop"): "symlink loop: too many levels of symbolic links",
        str(bees / "café"): f"reached again through a symlink: {os.path.realpath(cafe)} is already scanned",
    }

    write_image(root / "train" / ".hidden_class" / "x.jpg", RED)
    (cafe / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_image(bees / ".ipynb_checkpoints" / "copy.jpg", BLUE)
    hidden = ["train/.hidden_class", "train/café/.DS_Store", "train/蜜蜂/.ipynb_checkpoints"]
    return Corpus(root, good, {str(cafe / name): reason for name, reason in undecodable.items()}, unreachable, hidden)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """The corpus, written once for the module (tests must not change it)."""
    return build_corpus(tmp_path_factory.mktemp("corpus") / "photos")


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory) -> tuple[Result, Path]:
    """``tlkit train`` on the corpus (features mode): its result and its run folder."""
    folder = tmp_path_factory.mktemp("corpus-run")
    result = cli("train", corpus.root, *FAST, "--cache-dir", folder / "cache", "--run-dir", folder / "run")
    assert result.exit_code == 0, result.output
    return result, folder / "run"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A small dataset with nothing wrong in it."""
    return make_dataset(tmp_path_factory.mktemp("clean") / "d", ("blue", "red"), per_class=4)


# ---------------------------------------------------------------------------------------------------
# 1, 5, 6. Bad files, bad symlinks and hidden files in a dataset; names beyond ASCII.


def test_a_dataset_with_bad_files_trains_and_names_each_one(corpus, corpus_run):
    """Every bad file and bad symlink is in a warning line and in metrics.json's ``skipped``, with its reason."""
    result, run = corpus_run
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for path, reason in corpus.undecodable.items():
        assert metrics["skipped"][path].startswith(reason), (path, metrics["skipped"].get(path))
        assert f"WARNING: skipped {path} (not a readable image: {reason}" in result.stderr
    for path, reason in corpus.unreachable.items():
        assert metrics["skipped"][path] == reason
        assert f"WARNING: skipped {path} ({reason})" in result.stderr
    assert set(metrics["skipped"]) == {*corpus.undecodable, *corpus.unreachable}
    assert metrics["images"] == {"train": len(corpus.good), "val": 6}


def test_extract_names_scan_and_decode_skips(corpus, config, caplog):
    """Through the library: the FeatureSet lists both kinds of skip and keeps exactly the good images."""
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        features = tlkit.extract(corpus.root, config, verbose=0)
    assert features.index.skipped == corpus.unreachable
    assert {path: features.skipped[path] for path in corpus.unreachable} == corpus.unreachable
    assert set(features.skipped) == {*corpus.undecodable, *corpus.unreachable}
    assert features.split("train")[2] == corpus.good
    for path in (*corpus.undecodable, *corpus.unreachable):
        assert f"skipped {path} (" in caplog.text


def test_hidden_entries_are_ignored_and_named_in_one_info_line(corpus, caplog):
    """.DS_Store, a dot-folder in a class, a dot-class: in no split, not skipped, but named at INFO."""
    with caplog.at_level(logging.INFO, logger="tlkit"):
        index = scan(corpus.root, tlkit.DataConfig())
    hidden = [r for r in caplog.records if "hidden" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in hidden] == [
        (logging.INFO, f"ignored 3 hidden file(s)/folder(s) in {corpus.root}: {', '.join(corpus.hidden)}")]
    assert index.class_names == ("café", "蜜蜂")  # .hidden_class is no class
    everything = [*index.all_files(), *map(Path, index.skipped)]
    assert not any(part.startswith(".") for p in everything for part in p.relative_to(corpus.root).parts)


def test_non_ascii_names_come_back_intact(corpus, corpus_run):
    """Classes ``café`` and ``蜜蜂``, file ``été 1.jpg``: trained, predicted, evaluated; unescaped in JSON."""
    _, run = corpus_run
    assert json.loads((run / "classes.json").read_text(encoding="utf-8")) == ["café", "蜜蜂"]
    ete = corpus.root / "train" / "café" / "été 1.jpg"
    predicted = cli("predict", ete, ete.parent, "--run", run, "--json", "--top-k", "2")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert [row["path"] for row in rows] == [str(ete)] + [str(p) for p in corpus.good if p.parent == ete.parent]
    assert all(row["label"] in ("café", "蜜蜂") for row in rows) and "蜜蜂" in predicted.stdout
    for path in (*corpus.undecodable, str(ete.parent / "broken.jpg"), str(ete.parent / "up")):
        assert f"WARNING: skipped {path} (" in predicted.stderr
    assert tlkit.predict([ete], run=run)[0].path == str(ete)
    evaluated = cli("evaluate", corpus.root, "--run", run, "--split", "train", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["class_names"] == ["café", "蜜蜂"] and list(report["per_class"]) == ["café", "蜜蜂"]
    assert report["count"] == len(corpus.good)
    assert report["skipped"] == sorted({*corpus.undecodable, *corpus.unreachable})


# ---------------------------------------------------------------------------------------------------
# 2. Images that must decode, and decode right.


def two_halves(mode: str, left, right) -> Image.Image:
    """A 24x24 image: ``left`` on the left half, ``right`` on the right."""
    image = Image.new(mode, (24, 24), right)
    image.paste(left, (0, 0, 12, 24))
    return image


def write_palette_png(path: Path) -> None:
    """A palette PNG: left half palette index 1 (blue, marked transparent), right half index 0 (red)."""
    image = two_halves("P", 1, 0)
    image.putpalette([*RED, *BLUE])
    image.save(path, transparency=1)


def write_animated_gif(path: Path) -> None:
    """Two frames: red, then blue."""
    first, second = Image.new("RGB", (24, 24), RED), Image.new("RGB", (24, 24), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)


DECODED = {  # file -> (how to write it, colour expected on the left half, on the right half)
    "plain.gif": (lambda p: Image.new("RGB", (24, 24), RED).save(p), RED, RED),
    "animated.gif": (write_animated_gif, RED, RED),  # the first frame
    "alpha.png": (lambda p: two_halves("RGBA", (*BLUE, 0), (*RED, 255)).save(p), WHITE, RED),
    "palette.png": (write_palette_png, WHITE, RED),  # palette index 1 is transparent
    "grey.png": (lambda p: Image.new("L", (24, 24), 90).save(p), (90, 90, 90), (90, 90, 90)),
    "cmyk.jpg": (lambda p: Image.new("RGB", (24, 24), RED).convert("CMYK").save(p, quality=95), RED, RED),
    "plain.bmp": (lambda p: Image.new("RGB", (24, 24), RED).save(p), RED, RED),
    "plain.webp": (lambda p: Image.new("RGB", (24, 24), RED).save(p, quality=95), RED, RED),
    "plain.tiff": (lambda p: Image.new("RGB", (24, 24), RED).save(p), RED, RED),
}


@pytest.mark.parametrize("name", DECODED)
def test_odd_images_decode_to_the_right_colours(tmp_path, name):
    write, left, right = DECODED[name]
    write(tmp_path / name)
    out = decode_image(tmp_path / name, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out[8, 2].astype(int) - left).max() <= 12, (out[8, 2], left)
    assert np.abs(out[8, 13].astype(int) - right).max() <= 12, (out[8, 13], right)


@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tiff", "I;16"), (".pgm", "I")])
@pytest.mark.parametrize("value, expected", [(200, 1), (50000, 195)])
def test_sixteen_bit_images_are_scaled_by_their_mode(tmp_path, suffix, mode, value, expected):
    """0-65535 -> 0-255 whatever the values: a dark 16-bit image (all <= 255) stays dark."""
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.full((20, 20), value, np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode  # what Pillow makes of a 16-bit file of this kind
    assert (decode_image(path, 16) == expected).all()


@pytest.mark.parametrize("orientation, corner", [(1, (0, 0)), (3, (1, 1)), (6, (0, 1)), (8, (1, 0))])
def test_exif_orientation_moves_the_corner_where_the_viewer_sees_it(tmp_path, orientation, corner):
    """Stored: blue, red top-left corner. Shown: 3 turns it half round, 6 a quarter clockwise, 8 anticlockwise."""
    pixels = np.empty((30, 40, 3), np.uint8)
    pixels[...] = BLUE
    pixels[:10, :10] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "photo.jpg", 32).astype(int)
    for row in (0, 1):
        for column in (0, 1):
            pixel = out[3 + 25 * row, 3 + 25 * column]
            assert (pixel[0] > 150 and pixel[2] < 100) == ((row, column) == corner), ((row, column), pixel)


# ---------------------------------------------------------------------------------------------------
# 3. Decompression bombs.


def test_images_above_the_pixel_limit_are_refused_without_a_warning(tmp_path):
    """Above the limit Pillow warns, above twice it raises; both are tlkit skips naming the limit."""
    warned = tmp_path / "warned.png"
    warned.write_bytes(header_only_png(10000, 10000))
    refused = tmp_path / "refused.png"
    refused.write_bytes(header_only_png(20000, 20000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, kept, skipped = decode_images([warned, refused], 32)
    assert kept == [] and not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert skipped[str(warned)].startswith(too_large(10000 * 10000))
    assert skipped[str(refused)].startswith(too_large(20000 * 20000))


def test_the_pixel_limit_is_read_at_each_call_and_refuses_before_decoding(tmp_path, monkeypatch):
    """A valid 64x64 image decodes at a limit of 4096 pixels and is refused (it would decode) just below."""
    path = write_image(tmp_path / "small.png", RED, size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    assert decode_image(path, 32).shape == (32, 32, 3)
    for limit in (64 * 64 - 1, 64 * 64 // 2 - 1):  # Pillow itself would warn, then raise
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with warnings.catch_warnings(record=True) as caught, pytest.raises(ImageTooLarge) as refused:
            warnings.simplefilter("always")
            decode_image(path, 32)
        assert str(refused.value).startswith(f"image has 4096 pixels, above the limit of {limit} "
                                             "(PIL.Image.MAX_IMAGE_PIXELS)")
        assert not caught


# ---------------------------------------------------------------------------------------------------
# 4. Unreadable files, in a real process.


def test_an_unreadable_file_is_skipped_with_its_permission_error(tmp_path):
    """As root (who reads anything), the CLI runs without that power, so chmod 000 bites; no bomb warning either."""
    data = make_dataset(tmp_path / "d", per_class=3, splits=["train", "val"])
    locked = write_image(data / "train" / "red" / "locked.jpg", COLOURS["red"])
    locked.chmod(0)
    (data / "train" / "blue" / "huge.png").write_bytes(header_only_png(10000, 10000))
    result = run_tlkit("extract", data, *EXTRACT_FAST, "--cache-dir", tmp_path / "cache", cwd=tmp_path,
                       unprivileged=True)
    if result.stderr.startswith("cannot drop capability"):
        pytest.skip(f"root here cannot give up reading every file: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("features written: ") and result.stdout.endswith("(2 file(s) skipped)\n")
    assert (f"WARNING: skipped {locked} (not a readable image: PermissionError: [Errno 13] Permission denied"
            in result.stderr)
    assert f"WARNING: skipped {data / 'train' / 'blue' / 'huge.png'} (not a readable image: {too_large(10**8)}" \
        in result.stderr
    assert "Traceback" not in result.stderr and "DecompressionBombWarning" not in result.stderr


def test_an_error_in_a_real_process_is_one_line_without_traceback(tmp_path):
    """The console script itself: stdout empty, stderr ending in the one ``Error:`` line."""
    result = run_tlkit("train", tmp_path / "missing", "--quiet", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"Error: dataset folder not found: {tmp_path / 'missing'}"


# ---------------------------------------------------------------------------------------------------
# 7. Datasets that cannot be trained on.


def bad_dataset(root: Path, problem: str) -> str:
    """Make a dataset at ``root`` with ``problem``; returns the error message it must give."""
    if problem == "missing":
        return f"dataset folder not found: {root}"
    if problem == "a_file":
        root.write_text("x")
        return f"dataset path is not a folder: {root}; give the folder that holds the class folders"
    if problem == "no_class_folders":
        write_image(root / "lonely.jpg", RED)
        return f"no class sub-folders in {root}; expected one folder of images per class"
    if problem == "empty_class":
        make_dataset(root, per_class=3)
        (root / "green").mkdir()
        return f"class folder(s) with no files in {root}: green; add images to them or remove them"
    if problem == "one_class":
        make_dataset(root, ("red",), per_class=4)
        return f"{root} has 1 class folder(s); a classifier needs at least 2"
    if problem == "train_only":
        make_dataset(root, per_class=2, splits=["train"])
        return f"{root} has train/ but a split dataset needs both train/ and validation/ (or val/)"
    if problem == "classes_differ":
        make_dataset(root, ("blue", "red"), per_class=2, splits=["train"])
        make_dataset(root, ("blue", "green"), per_class=2, splits=["validation"])
        return ("classes of validation/ (blue, green) differ from train/ (blue, red); "
                "every split needs the same class folders")
    assert problem == "unreadable_class"
    make_dataset(root, ("blue",), per_class=3, splits=["train", "validation"])
    for split in ("train", "validation"):
        (root / split / "green").mkdir()
        (root / split / "green" / "Thumbs.db").write_bytes(bytes(100))
    (root / "train" / "green" / "empty.jpg").write_bytes(b"")
    return (f"class 'green' has no readable image in the train split of {root}: Thumbs.db, empty.jpg could "
            "not be decoded; replace them, or remove the class folder")


DATASET_PROBLEMS = ["missing", "a_file", "no_class_folders", "empty_class", "one_class", "train_only",
                    "classes_differ", "unreadable_class"]


@pytest.mark.parametrize("problem", DATASET_PROBLEMS)
def test_a_dataset_that_cannot_be_trained_on_is_a_one_line_error(tmp_path, config, problem):
    """From the CLI and the library alike; no run folder is left behind."""
    root = tmp_path / "d"
    message = bad_dataset(root, problem)
    assert_error(cli("train", root, *FAST, "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "cli-run"),
                 message)
    assert_raises_one_line(lambda: tlkit.train(root, config, run_dir=tmp_path / "lib-run", verbose=0), message)
    assert not (tmp_path / "cli-run").exists() and not (tmp_path / "lib-run").exists()


# ---------------------------------------------------------------------------------------------------
# 8. Run folders that cannot be used.


def set_run_format(run: Path, value: int) -> None:
    """Make ``run`` look written whole by a tlkit of another run format (its checksums kept consistent)."""
    config = run / "config.json"
    record = json.loads(config.read_text(encoding="utf-8"))
    record["provenance"]["run_format"] = value
    config.write_text(json.dumps(record), encoding="utf-8")
    checksums = json.loads((run / "checksums.json").read_text(encoding="utf-8"))
    data = config.read_bytes()
    checksums["files"]["config.json"] = [len(data), hashlib.new(checksums["algorithm"], data).hexdigest()]
    (run / "checksums.json").write_text(json.dumps(checksums), encoding="utf-8")


def broken_run(run: Path, tmp_path: Path, problem: str) -> tuple[Path, tuple[str, ...]]:
    """A run folder with ``problem`` (a copy of ``run`` when it needs one); returns it and its error's phrases."""
    if problem == "missing":
        return tmp_path / "norun", (f"run folder not found: {tmp_path / 'norun'}",)
    if problem == "not_a_run":
        folder = make_dataset(tmp_path / "d", per_class=1)
        return folder, (f"{folder} is not a tlkit run folder (no model.keras)",)
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    if problem == "other_format":
        set_run_format(copy, 99)
        return copy, (f"run {copy} has format 99; this tlkit reads format", "retrain it")
    damaged = copy / problem
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 2])
    return copy, ("damaged", str(copy), problem)


@pytest.mark.parametrize("problem", ["missing", "not_a_run", "other_format", "classes.json", "config.json"])
def test_a_run_that_cannot_be_used_is_a_one_line_error(tmp_path, corpus, corpus_run, problem):
    """predict (printing nothing), evaluate and load_run all refuse it in one line."""
    run, phrases = broken_run(corpus_run[1], tmp_path, problem)
    image = corpus.good[0]
    predicted = cli("predict", image, "--run", run, "--json")
    assert_error(predicted, *phrases)
    assert predicted.stdout == ""
    assert_error(cli("evaluate", corpus.root, "--run", run, "--quiet"), *phrases)
    assert_raises_one_line(lambda: tlkit.load_run(run), *phrases)


# ---------------------------------------------------------------------------------------------------
# 9. Predicting on nothing usable.


def no_images(target: Path, problem: str) -> str:
    """Make ``target`` hold no usable image in the way ``problem`` says; returns the error message expected."""
    if problem == "missing_file":
        return f"no such file or folder: {target}"
    target.mkdir()
    if problem == "empty_folder":
        return f"no files found in {target}; give image files or folders holding some"
    (target / "notes.jpg").write_text("not a picture")
    (target / "notes.txt").write_text("not a picture")
    return "none of the 2 file(s) given is a readable image (each was skipped: see the warnings)"


@pytest.mark.parametrize("problem", ["missing_file", "only_text_files", "empty_folder"])
def test_predict_on_no_usable_image_is_an_error_printing_nothing(tmp_path, corpus_run, problem):
    """Not even the opening ``[`` of ``--json`` is printed; each unreadable file is named in a warning."""
    target = tmp_path / "in"
    message = no_images(target, problem)
    result = cli("predict", target, "--run", corpus_run[1], "--json")
    assert_error(result, message)
    assert result.stdout == ""
    if problem == "only_text_files":
        for name in ("notes.jpg", "notes.txt"):
            assert f"WARNING: skipped {target / name} (not a readable image: {UNIDENTIFIED}" in result.stderr
    assert_raises_one_line(lambda: tlkit.predict([target], run=corpus_run[1]), message)


# ---------------------------------------------------------------------------------------------------
# 10. Nonsense options.


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "invalid epochs: -1; expected an integer >= 1"),
    (["--image-size", "0"], "invalid image_size: 0; expected an integer >= 32 (VGG16's smallest input)"),
    (["--weights", "{tmp}/no.h5"], "weights file not found: {tmp}/no.h5; give --weights imagenet, none, or the path"),
    (["--val-split", "1.5"], "invalid val_split: 1.5; expected a fraction in [0, 1)"),
    (["--batch-size", "0"], "invalid batch_size: 0; expected an integer >= 1"),
])
def test_nonsense_train_options_are_one_line_errors(tmp_path, clean, args, message):
    """Refused before anything is written: no run folder."""
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli("train", clean, *FAST, *args, "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "run")
    assert_error(result, message.format(tmp=tmp_path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "{data}", "--mode", "sideways"], "Invalid value for '--mode': 'sideways' is not one of"),
    (["predict", "{data}", "--run", "{tmp}/norun", "--top-k", "0"],
     "Invalid value for '--top-k': 0 is not in the range"),
    (["evaluate", "--run", "{tmp}/norun", "--split", "nope"], "Invalid value for '--split': 'nope' is not one of"),
])
def test_unknown_choices_are_click_usage_errors(tmp_path, clean, args, message):
    """A value outside a choice or range is refused by click, in one line: exit code 2."""
    assert_usage_error(cli(*[a.format(data=clean, tmp=tmp_path) for a in args]), message)


@pytest.mark.parametrize("call, message", [
    (lambda tmp, data: tlkit.Config().replace(train={"epochs": -1}), "invalid epochs: -1"),
    (lambda tmp, data: tlkit.Config().replace(data={"image_size": 0}), "invalid image_size: 0"),
    (lambda tmp, data: tlkit.Config().replace(train={"mode": "sideways"}), "invalid mode: 'sideways'"),
    (lambda tmp, data: tlkit.Config().replace(data={"val_split": 1.5}), "invalid val_split: 1.5"),
    (lambda tmp, data: tlkit.Config().replace(train={"batch_size": 0}), "invalid batch_size: 0"),
    (lambda tmp, data: tlkit.extract(data, tlkit.Config().replace(train={"weights": str(tmp / "no.h5")},
                                                                  data={"cache_dir": str(tmp / "cache")})),
     "weights file not found"),
    (lambda tmp, data: tlkit.predict([data], run=tmp / "norun", top_k=0), "invalid top_k: 0"),
    (lambda tmp, data: tlkit.evaluate(data, run=tmp / "norun", split="nope"), "invalid split: 'nope'"),
])
def test_nonsense_library_options_raise_tlkit_error(tmp_path, clean, call, message):
    """The same values through the library; the checks come before any run is loaded."""
    assert_raises_one_line(lambda: call(tmp_path, clean), message)


# ---------------------------------------------------------------------------------------------------
# Nothing already on disk is damaged.


def test_failed_commands_leave_an_earlier_run_untouched(tmp_path, clean, corpus_run):
    """Bad data, a taken --run-dir, bad paths: the run's files keep their bytes and mtimes."""
    run = corpus_run[1]
    before = snapshot(run)
    assert_error(cli("train", tmp_path / "missing", *FAST, "--run-dir", run), "dataset folder not found")
    assert_error(cli("train", clean, *FAST, "--cache-dir", tmp_path / "cache", "--run-dir", run),
                 f"run folder {run} already exists and is not empty; choose another --run-dir")
    assert_error(cli("predict", tmp_path / "ghost.jpg", "--run", run), "no such file or folder")
    assert_error(cli("evaluate", tmp_path / "missing", "--run", run, "--quiet"), "dataset folder not found")
    assert snapshot(run) == before


def test_failed_extracts_leave_the_cache_untouched(tmp_path, clean):
    """A bad weights path writes nothing; a class with no readable image caches no features, only decoded images."""
    cache = tmp_path / "cache"
    assert cli("extract", clean, *EXTRACT_FAST, "--cache-dir", cache).exit_code == 0
    before = snapshot(cache)
    unreadable = tmp_path / "unreadable"
    message = bad_dataset(unreadable, "unreadable_class")
    assert_error(cli("extract", unreadable, *EXTRACT_FAST, "--cache-dir", cache), message)
    assert_error(cli("extract", clean, *EXTRACT_FAST, "--weights", tmp_path / "no.h5", "--cache-dir", cache),
                 "weights file not found")
    after = snapshot(cache)
    assert {name: after[name] for name in before} == before
    assert all(name.startswith("images/") for name in set(after) - set(before))
    assert not [p for p in cache.rglob(".*")]  # no staging folder left behind


def test_a_class_unreadable_only_in_validation_is_a_warning(tmp_path, caplog):
    """Training needs every class; validation without one still trains, and the warning says what is missing."""
    root = make_dataset(tmp_path / "d", ("blue", "green"), per_class=3, splits=["train"])
    make_dataset(root, ("blue",), per_class=2, splits=["validation"])
    (root / "validation" / "green").mkdir()
    (root / "validation" / "green" / "Thumbs.db").write_bytes(bytes(100))
    config = tlkit.Config().replace(data={"image_size": 32, "cache_dir": str(tmp_path / "cache")},
                                    train={"weights": "none", "epochs": 1, "batch_size": 8})
    result = tlkit.train(root, config, run_dir=tmp_path / "run", verbose=0)
    assert "class 'green' has no readable image in the val split" in caplog.text
    assert str(root / "validation" / "green" / "Thumbs.db") in result.metrics["skipped"]
