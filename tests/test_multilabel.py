"""Multi-label classification: labels from a CSV (several in a cell, or 0/1 columns), a sigmoid per label
trained with binary cross-entropy, thresholds, per-label figures, and what predict, evaluate, report and
export say of it."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.config import DataConfig
from tlkit.data import scan
from tlkit.data.split import iterative_split
from tlkit.errors import TlkitError
from tlkit.inference.multilabel import average_precision, multilabel_metrics, tune_thresholds

#: The labels of image i: red square, blue square, both, neither, in turn.
PATTERN = [("red",), ("blue",), ("red", "blue"), ()]


def squares(root: Path, images: int = 48, shuffled: bool = False, columns: bool = False) -> Path:
    """Noisy grey images with a red square (top left) and/or a blue one (bottom right), and their labels.csv:
    a ``label`` cell ``red;blue`` (images with neither get ``none``), or 0/1 ``red`` and ``blue`` columns."""
    rng = np.random.default_rng(0)
    labels = [PATTERN[i % 4] for i in range(images)]
    if shuffled:
        labels = [labels[i] for i in rng.permutation(images)]
    rows = []
    for i in range(images):
        pixels = np.clip(rng.normal(128, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
        kind = PATTERN[i % 4]
        if "red" in kind:
            pixels[4:18, 4:18] = (220, 30, 30)
        if "blue" in kind:
            pixels[22:36, 22:36] = (30, 30, 220)
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        given = labels[i]
        rows.append([f"img{i:03d}.png", *(["1" if name in given else "0" for name in ("red", "blue")] if columns
                                           else [";".join(given) or "none"])])
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", *(["red", "blue"] if columns else ["label"])], *rows])
    return root / "labels.csv"


@pytest.fixture
def multi_config(config):
    return config.replace(data={"val_split": 0.25, "label_columns": "red,blue"},
                          fit={"epochs": 60, "optimizer": "adam", "learning_rate": 0.01})


def test_squares_are_learned_label_by_label_and_shuffled_labels_are_not(tmp_path, multi_config):
    learned = tlkit.train(squares(tmp_path / "d", columns=True), multi_config, run_dir=tmp_path / "run", verbose=0)
    assert learned.metrics["val_micro_f1"] >= 0.9 and learned.metrics["val_mean_average_precision"] >= 0.9
    assert learned.metrics["thresholds"] == {"red": 0.5, "blue": 0.5}
    history = json.loads((learned.run_dir / "history.json").read_text())[0]["history"]
    assert "val_micro_f1" in history and history["val_micro_f1"][-1] >= 0.9
    shuffled = tlkit.train(squares(tmp_path / "s", shuffled=True, columns=True), multi_config, run_dir=tmp_path / "shuffled",
                           verbose=0)
    assert shuffled.metrics["val_micro_f1"] < 0.75 and shuffled.metrics["val_subset_accuracy"] < 0.5
    run = tlkit.load_run(learned.run_dir)
    assert run.multi_label and run.class_names == ("red", "blue")
    assert run.model.output_shape == (None, 2)  # a sigmoid per label, not a softmax

    both = tlkit.predict([tmp_path / "d" / "img002.png", tmp_path / "d" / "img003.png"], run=run)
    assert [p.labels for p in both] == [("red", "blue"), ()]
    assert both[0].to_dict()["probabilities"].keys() == {"red", "blue"}
    assert tlkit.predict([tmp_path / "d" / "img003.png"], run=run, threshold=0.0)[0].labels == ("red", "blue")
    printed = CliRunner().invoke(main, ["predict", str(tmp_path / "d" / "img002.png"), "--run", str(run.path)])
    assert printed.exit_code == 0
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'd' / 'img002.png'))}: red 0\.\d{{4}}, blue 0\.\d{{4}}\n",
                        printed.output)  # the labels predicted, each with its probability

    evaluation = tlkit.evaluate(run=run)
    assert evaluation.multi_label and evaluation.micro_f1 == pytest.approx(learned.metrics["val_micro_f1"])
    assert set(evaluation.per_label) == {"red", "blue"} and evaluation.per_label["red"]["support"] > 0
    shown = CliRunner().invoke(main, ["evaluate", "--run", str(run.path)])
    assert shown.exit_code == 0 and "micro F1: " in shown.output and "\nred " in shown.output

    page = tlkit.write_report(tmp_path / "report.html", run)
    html = (tmp_path / "report.html").read_text()
    assert page.multi_label and 'id="labels"' in html and 'id="confusion"' not in html and "mAP" in html

    from tlkit.deploy import _contract, probability_model
    assert probability_model(run).output_shape == (None, 2)  # a probability per label, not [1 - p, p] of each
    contract = _contract(run, "onnx")
    assert contract["multi_label"] and contract["thresholds"] == [0.5, 0.5]


@pytest.mark.backend_independent
def test_labels_in_one_cell_or_in_columns_read_alike(tmp_path):
    cells, columns = squares(tmp_path / "a", 16), squares(tmp_path / "b", 16, columns=True)
    by_cell = scan(cells, DataConfig(val_split=0.25))
    by_column = scan(columns, DataConfig(val_split=0.25, label_columns="red,blue"))
    assert by_cell.multi_label and by_column.multi_label
    assert by_cell.class_names == ("blue", "none", "red") and by_column.class_names == ("red", "blue")
    rows = {path.name: row for split in by_cell.files for path, row in zip(by_cell.files[split], by_cell.labels[split])}
    assert rows["img002.png"].tolist() == [1, 0, 1] and rows["img001.png"].tolist() == [1, 0, 0]
    assert scan(cells, DataConfig(label_separator="")).multi_label is False  # "red;blue" is then one class


@pytest.mark.backend_independent
def test_iterative_stratification_spreads_every_label_over_the_splits():
    rng = np.random.default_rng(1)
    labels = (rng.random((400, 5)) < [0.5, 0.3, 0.1, 0.05, 0.02]).astype(np.uint8)
    files = [Path(f"{i}.jpg") for i in range(400)]
    split = iterative_split(files, labels, DataConfig(val_split=0.2, test_split=0.1))
    assert sorted(i for rows in split.values() for i in rows) == list(range(400))  # each image once
    for name, share in (("val", 0.2), ("test", 0.1), ("train", 0.7)):
        assert len(split[name]) == pytest.approx(400 * share, abs=3)
        counts, totals = labels[split[name]].sum(axis=0), labels.sum(axis=0)
        assert np.all(np.abs(counts - totals * share) <= 1.5)  # every label, even the rarest, in proportion
    assert split == iterative_split(files, labels, DataConfig(val_split=0.2, test_split=0.1))


@pytest.mark.backend_independent
def test_multi_label_figures_as_defined():
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.3], [0.1, 0.1]])
    report = multilabel_metrics(p, truth, ["a", "b"])
    # a: decided [1, 0, 1, 0] -> tp 1, fp 1, fn 1; b: decided [0, 1, 0, 0] -> tp 1, fn 1
    assert report["per_label"]["a"]["precision"] == 0.5 and report["per_label"]["b"]["precision"] == 1.0
    assert report["micro_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert report["subset_accuracy"] == 0.5  # the first and the last image have both decisions right
    # a ranked 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision(p[:, 0], truth[:, 0]) == pytest.approx(0.5 + 1 / 3)
    assert report["mean_average_precision"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    assert tune_thresholds(p, truth).tolist() == [0.4, 0.3]  # a: 0.4 keeps both positives; b: 0.3


@pytest.mark.backend_independent
def test_bad_multi_label_input_is_one_line(tmp_path, multi_config):
    table = squares(tmp_path / "d", 12, columns=True)
    text = table.read_text().replace("img001.png,0,1", "img001.png,0,yes")
    table.write_text(text)
    with pytest.raises(TlkitError, match=r"row 3 \(img001.png\): blue='yes'; a label column holds 0 or 1"):
        scan(table, multi_config.data)
    table.write_text(text.replace("yes", "1"))
    weighted = CliRunner().invoke(main, ["train", str(table), "--label-columns", "red,blue", "--class-weight", "auto",
                                         "--weights", "none", "--image-size", "32", "--cache-dir", str(tmp_path)])
    assert weighted.exit_code == 1 and "multi-label data has none to weigh" in weighted.output
    with pytest.raises(TlkitError, match="tlkit cv and tlkit tune are for single-label data"):
        tlkit.cross_validate(table, multi_config, folds=2)
    one = CliRunner().invoke(main, ["train", str(table), "--label-columns", "red"])
    assert one.exit_code == 1 and "two or more columns" in one.output


@pytest.mark.backend_independent  # the loss and metrics per backend: the features-mode test above
def test_frozen_and_finetune_train_a_sigmoid_per_label_on_images(tmp_path, multi_config):
    table = squares(tmp_path / "d", 16, columns=True)
    for mode in ("frozen", "finetune"):
        config = multi_config.replace(fit={"mode": mode, "epochs": 1, "warmup_epochs": 1, "warmup_mode": "frozen"})
        result = tlkit.train(table, config, run_dir=tmp_path / mode, verbose=0)
        assert set(result.metrics["thresholds"]) == {"red", "blue"} and 0 <= result.metrics["val_micro_f1"] <= 1
        history = json.loads((result.run_dir / "history.json").read_text())
        assert all("val_micro_f1" in phase["history"] for phase in history)
        assert tlkit.load_run(result.run_dir).model.output_shape == (None, 2)
