"""Labels from a CSV file (as flow_from_dataframe reads them): the same run as class folders, its own split,
bad rows skipped and named, bad files refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.config import DataConfig
from tlkit.data import scan
from tlkit.errors import TlkitError
from tlkit.training.identity import RunIdentity

from conftest import make_dataset

pytestmark = pytest.mark.backend_independent  # reading labels is Python; the training after it is the folders'


def write_csv(path: Path, rows: list[list[str]], header=("path", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([list(header), *rows])
    return path


def rows_of(folder: Path) -> list[list[str]]:
    """``[relative path, class]`` of every image of a folder of class folders."""
    return [[image.relative_to(folder).as_posix(), image.parent.name] for image in sorted(folder.glob("*/*.jpg"))]


@pytest.fixture
def folders(tmp_path) -> Path:
    return make_dataset(tmp_path / "d", ("blue", "red"), per_class=10)


def test_a_csv_gives_the_same_split_run_and_accuracy_as_class_folders(tmp_path, folders, config):
    table = write_csv(folders / "labels.csv", rows_of(folders))
    by_folder, by_table = scan(folders, config.data), scan(table, config.data)
    assert by_table.class_names == by_folder.class_names
    assert by_table.files == by_folder.files and not by_table.presplit
    assert all(np.array_equal(by_table.labels[s], by_folder.labels[s]) for s in by_folder.labels)
    config = config.replace(fit={"epochs": 3})
    first = tlkit.train(folders, config, run_dir=tmp_path / "folders", verbose=0)
    second = tlkit.train(table, config, run_dir=tmp_path / "table", verbose=0)
    assert second.metrics["val_accuracy"] == first.metrics["val_accuracy"]
    assert second.metrics["val_loss"] == pytest.approx(first.metrics["val_loss"], rel=1e-6)
    history = [json.loads((run / "history.json").read_text())[0]["history"]["loss"] for run in (first.run_dir,
                                                                                               second.run_dir)]
    np.testing.assert_allclose(history[0], history[1], rtol=1e-6)
    flat = tmp_path / "flat"  # the same images in one folder, labels beside it (--labels)
    flat.mkdir()
    moved = []
    for name, label in rows_of(folders):
        shutil.copy2(folders / name, flat / Path(name).name)
        moved.append([Path(name).name, label])
    labels = write_csv(tmp_path / "flat-labels.csv", moved)
    index = scan(flat, DataConfig(labels=str(labels), val_split=0.3))
    assert [[p.name for p in index.files[s]] for s in index.files] == \
        [[p.name for p in by_folder.files[s]] for s in by_folder.files]  # the split follows the names
    again = tlkit.evaluate(run=second.run_dir)  # the run's own data: the CSV
    assert again.accuracy == pytest.approx(second.metrics["val_accuracy"]) and again.count == 6


def test_a_split_column_replaces_the_drawn_split(tmp_path, folders, config):
    rows = rows_of(folders)
    splits = ["validation" if i % 5 == 0 else "test" if i % 5 == 1 else "train" for i in range(len(rows))]
    table = write_csv(folders / "labels.csv", [[*row, split] for row, split in zip(rows, splits)],
                      header=("filename", "label", "split"))
    index = scan(table, config.data)
    assert index.presplit and set(index.files) == {"train", "val", "test"}
    for name, split in zip(rows, splits):
        assert folders / name[0] in index.files[{"validation": "val"}.get(split, split)]
    result = tlkit.train(table, config, run_dir=tmp_path / "run", verbose=0)
    assert "test_accuracy" in result.metrics
    assert tlkit.evaluate(run=result.run_dir).split == "test"
    scores = tlkit.cross_validate(table, config.replace(fit={"epochs": 1}), folds=2)
    assert scores.images == len(index.files["train"]) + len(index.files["val"])  # test rows held out


def test_rows_whose_file_cannot_be_used_are_skipped_and_named(tmp_path, folders, config, caplog):
    rows = rows_of(folders)
    table = write_csv(folders / "labels.csv", [*rows, ["blue/gone.jpg", "blue"], ["../outside.jpg", "red"],
                                               rows[0], ["", ""]])
    (tmp_path / "outside.jpg").write_bytes((folders / rows[0][0]).read_bytes())
    index = scan(table, config.data)
    assert len(index.all_files()) == len(rows)
    assert index.skipped == {str(folders / "blue" / "gone.jpg"): "row 22: file not found",
                             str(tmp_path / "outside.jpg"): "row 23: outside the images folder",
                             str(folders / rows[0][0]): "row 24: listed already on row 2"}
    assert "skipped" in caplog.text and "gone.jpg" in caplog.text
    (folders / rows[1][0]).write_bytes(b"not an image")  # unreadable: skipped like any bad image
    features = tlkit.extract(table, config, verbose=0)  # what a run lists as skipped in its metrics.json
    assert set(features.skipped) >= {str(folders / rows[1][0]), str(folders / "blue" / "gone.jpg")}


@pytest.mark.parametrize("rows, header, message", [
    ([["a.jpg", "x"]], ("file", "label"), "has no path (or filename) column (its columns: file, label)"),
    ([["a.jpg", "x"]], ("path", "class"), "has no label column"),
    ([["a.jpg", ""]], ("path", "label"), "row 2 (a.jpg): empty label"),
    ([["a.jpg", "x", "holdout"]], ("path", "label", "split"), "row 2: split 'holdout' is not one of"),
    ([], ("path", "label"), "has no rows under its header"),
    ([["missing.jpg", "x"]], ("path", "label"), "has no usable row"),
])
def test_a_bad_labels_file_is_one_line_before_any_work(tmp_path, rows, header, message):
    (tmp_path / "a.jpg").write_bytes(b"")
    table = write_csv(tmp_path / "labels.csv", rows, header)
    with pytest.raises(TlkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan(table, DataConfig())
    done = CliRunner().invoke(main, ["train", str(table)])
    assert done.exit_code == 1 and message in done.output and len(done.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(main, ["train", str(tmp_path), "--labels", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "labels file not found" in missing.output
    assert "--labels" in CliRunner().invoke(main, ["evaluate", "--help"]).output


def test_a_label_changed_in_the_csv_is_other_data_for_resume(tmp_path, folders, config):
    rows = rows_of(folders)
    table = write_csv(folders / "labels.csv", rows)
    before = RunIdentity.of(table, scan(table, config.data), config, None)
    rows[0][1] = "red"
    write_csv(table, rows)
    after = RunIdentity.of(table, scan(table, config.data), config, None)
    assert before.dataset != after.dataset
