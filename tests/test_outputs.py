"""What tlkit writes, and where: output paths checked before any work, links and device nodes never replaced,
a full disk named with its file and nothing left half-written, no NaN in JSON, confusion matrices of any size
drawn in bounded time."""

import io
import os
import re
import signal
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.inference.evaluate import Evaluation
from tlkit.io import RowFile, atomic_folder, atomic_write, is_built, write_json
from tlkit.outputs import DiskError, check_output
from tlkit.plots import LABELLED_CLASSES, confusion_png, plot_confusion, top_confusions
from tlkit.report import _confusion_table, rerun_command

from conftest import make_dataset, write_image

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

#: Every command that writes a file the user names, as CLI arguments around the output path. The latest run is
#: a fake (:func:`fake_run`): a command that did its work before checking its output would fail on that instead.
COMMANDS = {
    "curves": lambda out: ["curves", "--out", out],
    "explain": lambda out: ["explain", "photo.jpg", "--out", out],
    "report": lambda out: ["report", "--out", out],
    "evaluate --confusion": lambda out: ["evaluate", "--confusion", out],
    "predict --out": lambda out: ["predict", "photo.jpg", "--out", out + ".csv"],
    "export onnx": lambda out: ["export", "--format", "onnx", "--out", out + ".onnx"],
    "export tflite": lambda out: ["export", "--format", "tflite", "--out", out + ".tflite"],
    "export savedmodel": lambda out: ["export", "--format", "savedmodel", "--out", out],
}


@pytest.fixture
def fake_run(tmp_path):
    """What the commands' first checks look for (a run under ``runs/``, the image to explain) but not a run: its
    model file is empty, so loading it fails."""
    (tmp_path / "runs" / "fake").mkdir(parents=True)
    (tmp_path / "runs" / "fake" / "model.keras").write_bytes(b"")
    write_image(tmp_path / "photo.jpg", (200, 30, 30))


def one_error(args: list[str]) -> str:
    """Run the CLI, expecting a failure said in one ``Error:`` line; that line."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def make_special(kind: str, path: Path) -> None:
    """At ``path``: a symbolic link to a file of the user's (``mine.txt`` beside it), a FIFO, or a private
    character device node with ``/dev/null``'s numbers: what a rename over it would replace."""
    if kind == "symlink":
        (path.parent / "mine.txt").write_text("the user's own file")
        path.symlink_to(path.parent / "mine.txt")
    elif kind == "fifo":
        os.mkfifo(path)
    elif os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


#: How each kind is named in the error, and how to tell it is still there.
KINDS = {"symlink": ("a symbolic link", stat.S_ISLNK), "fifo": ("a named pipe (FIFO)", stat.S_ISFIFO),
         "device": ("a character device", stat.S_ISCHR)}


def assert_untouched(kind: str, path: Path) -> None:
    assert KINDS[kind][1](os.lstat(path).st_mode)
    if kind == "symlink":
        assert os.readlink(path) == str(path.parent / "mine.txt")
        assert (path.parent / "mine.txt").read_text() == "the user's own file"
    if kind == "device":
        assert os.lstat(path).st_rdev == os.makedev(1, 3)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_links_and_special_files_are_refused_before_any_work(tmp_path, fake_run, command, kind):
    args = COMMANDS[command](str(tmp_path / "out"))
    target = Path(args[-1])
    make_special(kind, target)
    line = one_error(args)
    assert line.startswith(f"Error: refusing to write over {target}: it is {KINDS[kind][0]}; give the path of a "), line
    assert_untouched(kind, target)


@pytest.mark.parametrize("kind", KINDS)
def test_writing_through_the_library_never_replaces_a_link_or_a_device(tmp_path, kind):
    path = tmp_path / "out.png"
    make_special(kind, path)
    with pytest.raises(tlkit.TlkitError, match=f"refusing to write over {path}: it is {re.escape(KINDS[kind][0])}"):
        plot_confusion([[1, 0], [0, 1]], ["a", "b"], path)
    with pytest.raises(tlkit.TlkitError, match="refusing to write over"):
        atomic_write(path, lambda tmp: Path(tmp).write_text("x"))
    with pytest.raises(tlkit.TlkitError, match="refusing to write over"):
        write_json(path, {"a": 1})
    with pytest.raises(tlkit.TlkitError, match="refusing to write over .*; give the path of a folder"):
        with atomic_folder(path):
            pass
    assert_untouched(kind, path)


def test_a_regular_file_is_replaced_whole_and_a_folder_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(tlkit.TlkitError, match="it is a folder; give the path of a regular file"):
        atomic_write(tmp_path / "folder", lambda tmp: Path(tmp).write_text("x"))
    (tmp_path / "plain.png").write_text("replaced whole, as before")
    plot_confusion([[1, 0], [0, 1]], ["a", "b"], tmp_path / "plain.png")
    assert (tmp_path / "plain.png").read_bytes().startswith(b"\x89PNG")
    assert check_output(tmp_path / "new.png") == tmp_path / "new.png"
    assert check_output(tmp_path / "folder", folder=True) == tmp_path / "folder"


@pytest.mark.parametrize("command", COMMANDS)
def test_output_paths_are_checked_before_any_work(tmp_path, fake_run, command):
    """A missing folder, a folder where a file goes (or a file where a folder goes), a read-only folder: each
    fails at once, before the fake run is loaded."""
    missing = one_error(COMMANDS[command]("nowhere/out.png"))
    assert missing.startswith("Error: folder not found for nowhere/out.png") and "create nowhere first" in missing
    if command.startswith("export"):  # the others' --out refuses a folder in click already
        args = COMMANDS[command]("taken")
        if command == "export savedmodel":
            Path(args[-1]).write_text("mine")
            kind = "a file; give the path of a folder"
        else:
            Path(args[-1]).mkdir()
            kind = "a folder; give the path of a regular file"
        line = one_error(args)
        assert line == f"Error: refusing to write over {args[-1]}: it is {kind} or of nothing yet", line
    with read_only_folder(tmp_path / "ro") as folder:
        line = one_error(COMMANDS[command](str(folder / "out.png")))
        assert line.startswith(f"Error: cannot write {folder}/out.png") and "is not writable" in line, line


@contextmanager
def read_only_folder(folder: Path):
    """A folder even root cannot write into: a read-only tmpfs (skips where mounting is not allowed)."""
    with mounted(folder, "ro,size=64k"):
        yield folder


@contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs at ``folder`` for the block, unmounted after it; skips the test where mounting is not allowed."""
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a file a traceback keeps open


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: a real file system that fills up."""
    with mounted(tmp_path / "disk", "size=64k") as folder:
        yield folder


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir())


def test_a_full_disk_is_named_and_leaves_nothing_half_written(full_disk):
    (full_disk / "kept.json").write_text('{"old": true}')
    big = "x" * 200_000
    with pytest.raises(DiskError, match=f"^no space left on device writing {full_disk}/kept.json: free space and "
                                        "rerun$"):
        write_json(full_disk / "kept.json", {"text": big})
    with pytest.raises(DiskError, match=f"writing {full_disk}/page.html: free space"):
        atomic_write(full_disk / "page.html", lambda tmp: Path(tmp).write_text(big))
    assert files_in(full_disk) == ["kept.json"] and (full_disk / "kept.json").read_text() == '{"old": true}'
    # a folder built whole (a cache, a SavedModel): the file that did not fit, under its final name
    with pytest.raises(DiskError, match=f"^no space left on device writing {full_disk}/cache/rows.npy: "):
        with atomic_folder(full_disk / "cache") as staging:
            with RowFile(staging / "rows.npy", (100, 1000), np.float32) as rows:
                rows.write(0, np.ones((100, 1000), np.float32))
    assert files_in(full_disk) == ["kept.json"]


def test_json_is_never_written_with_nan_or_infinity(tmp_path):
    write_json(tmp_path / "metrics.json", {"ok": 1})
    for bad, key in (({"val_loss": float("nan")}, "val_loss"), ({"history": {"loss": [0.5, float("inf")]}},
                                                                "history.loss[1]")):
        with pytest.raises(tlkit.TlkitError, match=rf"not writing {tmp_path}/metrics.json: {re.escape(key)} is "
                                                   r"(nan|inf), which JSON cannot hold \(a bug in tlkit"):
            write_json(tmp_path / "metrics.json", bad)
    assert (tmp_path / "metrics.json").read_text() == '{\n  "ok": 1\n}\n'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_cv_json_never_prints_nan(tmp_path, monkeypatch):
    """A fold whose loss diverged: ``tlkit cv --json`` says so in one line instead of printing ``NaN``."""
    import tlkit.training.cv

    make_dataset(tmp_path / "d", ("blue", "red"), per_class=4)
    diverged = SimpleNamespace(to_dict=lambda: {"mean_loss": float("nan")})
    monkeypatch.setattr(tlkit.training.cv, "cross_validate", lambda *args, **kwargs: diverged)
    result = CliRunner().invoke(main, ["cv", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 1 and "mean_loss is nan, which JSON cannot hold" in result.output, result.output
    assert "NaN" not in result.output


def confusion(classes: int, seed: int = 0) -> tuple[list[list[int]], list[str]]:
    """A confusion matrix of ``classes`` classes: 20 right per class, a few mistakes scattered everywhere."""
    counts = np.random.default_rng(seed).integers(0, 3, (classes, classes))
    np.fill_diagonal(counts, 20)
    return counts.tolist(), [f"class {i:04d}" for i in range(classes)]


@contextmanager
def deadline(seconds: float):
    """Fail the block once it has run ``seconds`` (a drawing that grows with the cells is stopped, not waited for)."""
    def stop(signum, frame):
        raise TimeoutError(f"still drawing after {seconds:.1f} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: A 1000-class matrix (100,000 times the cells) may take at most this many times a 10-class one.
RATIO = 20


def test_a_1000_class_confusion_matrix_draws_in_a_few_times_a_10_class_one(monkeypatch):
    import matplotlib.axes

    labels = []  # the cell labels drawn: what made the drawing grow with the square of the classes
    text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda axis, *a, **k: labels.append(a) or text(axis, *a, **k))
    confusion_png(*confusion(3))  # fonts and caches loaded once, outside the timing
    times = []
    for _ in range(3):  # the median of three: one slow moment on a shared machine does not set the bar
        labels.clear()
        start = time.perf_counter()
        small = confusion_png(*confusion(10))
        times.append(time.perf_counter() - start)
    assert len(labels) == 2 * 100  # every cell of both panels (counts, row-normalised) labelled
    matrix, names = confusion(1000)
    labels.clear()
    with deadline(RATIO * sorted(times)[1]):
        big = confusion_png(matrix, names)
    assert labels == []  # no cell labelled past LABELLED_CLASSES
    with Image.open(io.BytesIO(small)) as picture:
        assert picture.size == (1700, 800)  # 10 classes: as before, every cell labelled
    with Image.open(io.BytesIO(big)) as picture:
        assert picture.width <= 2500 and picture.height <= 1600
    found = top_confusions(matrix, names)
    counts = np.array(matrix)
    np.fill_diagonal(counts, 0)
    assert len(found) == 10 and found[0][2] == counts.max() == 2
    assert [(t, p) for t, p, _, _ in found][:2] == [(names[0], names[9]), (names[0], names[11])]  # matrix order


def test_top_confusions():
    matrix = [[5, 3, 0], [1, 4, 0], [0, 0, 6]]
    assert top_confusions(matrix, ["a", "b", "c"]) == [("a", "b", 3, 3 / 8), ("b", "a", 1, 1 / 5)]
    assert top_confusions([[2, 0], [0, 2]], ["a", "b"]) == []


def evaluation_of(matrix: list[list[int]], names: list[str], loss: float = 0.5) -> Evaluation:
    """An evaluation with this confusion matrix (per-class figures left out)."""
    counts = np.array(matrix, dtype=float)
    average = {"precision": 0.9, "recall": 0.9, "f1": 0.9}
    return Evaluation("data", "test", 1, names, int(counts.sum()), loss, 0.9, "", matrix,
                      (counts / counts.sum(axis=1, keepdims=True)).tolist(), {}, average, average, [], [])


def test_evaluate_lists_the_top_confusions_of_many_classes_and_never_prints_nan(fake_run, monkeypatch):
    matrix, names = confusion(1000)
    monkeypatch.setattr("tlkit.inference.evaluate.evaluate", lambda *args, **kwargs: evaluation_of(matrix, names))
    result = CliRunner().invoke(main, ["evaluate", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "most frequent confusions (the whole matrix of 1000 classes: --json):" in lines and len(lines) < 20
    assert "  class 0000 taken for class 0009: 2 image(s), 0.2% of class 0000" in lines
    broken = evaluation_of(*confusion(3), loss=float("nan"))
    monkeypatch.setattr("tlkit.inference.evaluate.evaluate", lambda *args, **kwargs: broken)
    assert one_error(["evaluate", "--json", "-q"]) == ("Error: not writing the evaluation: loss is nan, which JSON "
                                                       "cannot hold (a bug in tlkit: please report it)")


def test_the_reports_confusion_section_lists_the_top_confusions_past_a_size():
    small = _confusion_table(evaluation_of(*confusion(LABELLED_CLASSES)))
    assert '<table id="confusion">' in small and small.count("<td>") == LABELLED_CLASSES ** 2
    big = _confusion_table(evaluation_of(*confusion(1000)))  # not a table of a million cells
    assert '<table id="confusion">' not in big and '<table id="top-confusions">' in big
    assert big.count("<tr>") == 1 + 10 and len(big) < 5000
    assert "<td>class 0000</td><td>class 0009</td><td>2</td>" in big


def test_the_reports_rerun_line_names_the_run_it_started_from():
    run = SimpleNamespace(path=Path("runs/b"))
    assert rerun_command(run, {"from_run": None}) == "tlkit train DATA --config runs/b/config.json"
    assert rerun_command(run, {"from_run": "runs/my a"}) == \
        "tlkit train DATA --config runs/b/config.json --from 'runs/my a'"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small two-class run, trained once for this module."""
    root = tmp_path_factory.mktemp("outputs-run")
    config = tlkit.Config().replace(
        data={"image_size": 32, "cache_dir": str(root / "cache"), "workers": 2, "val_split": 0.3},
        train={"weights": "none", "epochs": 1, "batch_size": 8, "patience": 0},
    )
    data = make_dataset(root / "data", per_class=4)
    tlkit.train(data, config, run_dir=root / "run", verbose=0)
    return root / "run"


def test_evaluate_says_where_it_drew_the_confusion_matrix(tmp_path, trained):
    result = CliRunner().invoke(main, ["evaluate", "--run", str(trained), "--confusion", "cm.png", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "confusion matrix: cm.png"
    assert (tmp_path / "cm.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "savedmodel"])
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(full_disk, trained, fmt):
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"{fmt} export onto a full disk is checked on the TensorFlow backend")
    out = full_disk / {"onnx": "model.onnx", "tflite": "model.tflite", "savedmodel": "model"}[fmt]
    line = one_error(["export", "--run", str(trained), "--format", fmt, "--out", str(out), "-q"])
    assert line.startswith(f"Error: no space left on device writing {out}") and "free space and rerun" in line, line
    assert files_in(full_disk) == [] and list(full_disk.iterdir()) == []


def test_a_cache_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, full_disk):
    data = make_dataset(tmp_path / "d", per_class=4)
    line = one_error(["extract", str(data), "--cache-dir", str(full_disk), "--weights", "none", "--image-size",
                      "32", "-q"])
    assert line.startswith(f"Error: no space left on device writing {full_disk}/features/"), line
    assert line.endswith(": free space and rerun")
    # the decoded-image cache fitted and is whole; of the feature cache that did not, nothing is left
    assert [folder.parent.name for folder in full_disk.glob("*/*")] == ["images"]
    assert all(is_built(folder) for folder in full_disk.glob("*/*"))
    assert [path for path in full_disk.rglob(".*")] == []
