import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tlkit
from tlkit.augment import tta_views, view_images
from tlkit.inference.evaluate import classification_metrics
from tlkit.model import class_probabilities

from conftest import make_dataset, write_image


@pytest.fixture
def trained(tmp_path, config):
    """A features-mode run on three colour classes, with a held-out test split."""
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=6)
    tlkit.train(data, config.replace(data={"test_split": 0.2}), run_dir=tmp_path / "run", verbose=0)
    return data, tmp_path / "run"


def test_class_names_come_from_the_run_not_the_folders(tmp_path, trained):
    data, run = trained
    shutil.move(data / "blue", data / "renamed")  # predictions must not re-scan folders
    predictions = tlkit.predict([data / "renamed", data / "red" / "red_00.jpg"], run=run, top_k=3)
    assert len(predictions) == 7
    for prediction in predictions:
        assert prediction.label in ("blue", "green", "red")
        assert [label for label, _ in prediction.top_k][0] == prediction.label
        assert sorted(label for label, _ in prediction.top_k) == ["blue", "green", "red"]
        assert abs(sum(p for _, p in prediction.top_k) - 1) < 1e-5
        assert prediction.top_k[0][1] >= prediction.top_k[1][1] >= prediction.top_k[2][1]


def test_predictions_match_the_model_and_skip_bad_files(tmp_path, trained):
    data, run_dir = trained
    run = tlkit.load_run(run_dir)
    good = write_image(tmp_path / "in" / "a.png", (200, 30, 30), size=32)
    (tmp_path / "in" / "b.jpg").write_bytes(b"garbage")
    [prediction] = tlkit.predict([tmp_path / "in"], run=run, top_k=2)
    probs = class_probabilities(run.model, tlkit.decode_image(good, 32)[None])[0]
    assert prediction.path == str(good)
    assert prediction.label == run.class_names[int(np.argmax(probs))]
    assert prediction.probability == pytest.approx(probs.max(), abs=1e-6)
    assert len(prediction.top_k) == 2


def test_predictions_stream_a_batch_at_a_time(trained, monkeypatch):
    """Each batch is decoded when its predictions are near: memory holds a batch and the next, not the list."""
    data, run_dir = trained
    decoded = []
    module = importlib.import_module("tlkit.inference.predict")
    real = module.decode_images
    monkeypatch.setattr(module, "decode_images", lambda paths, **k: decoded.append(len(paths)) or real(paths, **k))
    stream = module.iter_predictions([data], run=run_dir, batch_size=5)  # 18 images
    first = next(stream)
    assert decoded in ([5], [5, 5]) and first.path.endswith(".jpg")  # this batch, perhaps the next one ahead
    assert len([first, *stream]) == 18 and decoded == [5, 5, 5, 3]


def test_cli_predictions_are_written_as_they_come(trained, tmp_path):
    """An interrupted ``tlkit predict`` keeps every line it printed: output is flushed per prediction."""
    data, run_dir = trained
    script = ("import importlib, sys; from tlkit.cli import main\n"
              "p = importlib.import_module('tlkit.inference.predict')\n"
              "real = p.iter_probabilities\n"
              "def dying(*a, **k):\n"
              "    for n, item in enumerate(real(*a, **k)):\n"
              "        if n == 2: import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
              "        yield item\n"
              "p.iter_probabilities = dying\n"
              "main(['predict', sys.argv[1], '--run', sys.argv[2], '--batch-size', '4', '--quiet'])\n")
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout:  # a file, not a terminal: Python would buffer it unless flushed
        code = subprocess.run([sys.executable, "-c", script, str(data), str(run_dir)], stdout=stdout,
                              stderr=subprocess.DEVNULL, timeout=300).returncode
    assert code == -9  # killed while predicting the third batch of 4
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and all(line.startswith(str(data)) for line in lines), lines


@pytest.mark.backend_independent
def test_latest_run_is_used_when_none_is_given(tmp_path, config, caplog):
    data = make_dataset(tmp_path / "d", per_class=4)
    tlkit.train(data, config, verbose=0)
    import time

    time.sleep(0.01)
    newest = tlkit.train(data, config.replace(train={"epochs": 1}), verbose=0)
    caplog.set_level("INFO", logger="tlkit")
    predictions = tlkit.predict([data / "red"])
    assert len(predictions) == 4
    assert str(newest.run_dir) in caplog.text


@pytest.mark.backend_independent
def test_no_runs_is_a_clear_error(tmp_path):
    write_image(tmp_path / "x.jpg", (1, 2, 3))
    with pytest.raises(tlkit.TlkitError, match="no runs found"):
        tlkit.predict([tmp_path / "x.jpg"])


@pytest.mark.backend_independent
def test_metrics_match_a_hand_computation():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0, 1])
    report = classification_metrics(probs, labels, ("ant", "bee"))
    assert report["confusion_matrix"] == [[1, 1], [1, 2]]
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.3, 0.6])))
    assert report["per_class"]["bee"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert report["per_class"]["ant"]["precision"] == pytest.approx(0.5)
    np.testing.assert_allclose(report["confusion_matrix_normalized"], [[1 / 2, 1 / 2], [1 / 3, 2 / 3]])
    ant, bee = report["per_class"]["ant"], report["per_class"]["bee"]
    for metric in ("precision", "recall", "f1"):
        assert report["macro_avg"][metric] == pytest.approx((ant[metric] + bee[metric]) / 2)
        assert report["weighted_avg"][metric] == pytest.approx((2 * ant[metric] + 3 * bee[metric]) / 5)


@pytest.mark.backend_independent
def test_a_class_without_images_keeps_a_zero_row():
    report = classification_metrics(np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]]), np.array([0, 1]),
                                    ("a", "b", "c"))
    assert report["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    assert report["weighted_avg"]["recall"] == pytest.approx(1.0)  # c has no support: no weight
    assert report["macro_avg"]["recall"] == pytest.approx(2 / 3)


@pytest.mark.backend_independent
def test_top_losses_are_the_most_confident_mistakes(tmp_path, trained):
    """On a folder labelled against the colours, the listed mistakes are real, ranked, and their numbers
    match a recomputation from the predictions."""
    data, run = trained
    swapped = tmp_path / "swapped"
    for name, other in (("blue", "green"), ("green", "red"), ("red", "blue")):
        shutil.copytree(data / other, swapped / name)
    report = tlkit.evaluate(swapped, run=run, mistakes=5)
    by_path = {p.path: p for p in tlkit.predict([swapped], run=run, top_k=3)}
    expected_mistakes = sum(by_path[str(path)].label != path.parent.name for path in swapped.rglob("*.jpg"))
    top = report.top_losses
    assert len(top) == min(5, expected_mistakes) > 0
    for mistake in top:
        prediction = by_path[mistake["path"]]
        probabilities = dict(prediction.top_k)
        assert mistake["true"] == Path(mistake["path"]).parent.name != mistake["predicted"] == prediction.label
        assert mistake["probability"] == pytest.approx(prediction.probability, abs=1e-6)
        assert mistake["loss"] == pytest.approx(-np.log(probabilities[mistake["true"]]), rel=1e-5)
    assert [m["loss"] for m in top] == sorted((m["loss"] for m in top), reverse=True)
    losses_of_all_mistakes = sorted((-np.log(dict(p.top_k)[Path(path).parent.name]) for path, p in by_path.items()
                                     if p.label != Path(path).parent.name), reverse=True)
    assert [m["loss"] for m in top] == pytest.approx(losses_of_all_mistakes[:len(top)], rel=1e-5)


@pytest.mark.backend_independent
def test_confusion_png_shows_both_matrices(tmp_path):
    from PIL import Image

    from tlkit.plots import plot_confusion

    plot_confusion([[1, 0], [0, 1]], ["$5 bills", "x^$"], tmp_path / "money.png")  # names, not mathtext
    plot_confusion([[5, 1], [2, 7]], ["ant", "bee"], tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert pixels.shape[1] > 1.8 * pixels.shape[0]  # two square panels side by side
    left, right = pixels[:, :pixels.shape[1] // 2], pixels[:, pixels.shape[1] // 2:]
    for panel in (left, right):  # each holds the dark blue of its largest cell and the pale blue of its smallest
        dark = (panel[..., 0] < 60) & (panel[..., 2] > 90)
        pale = (panel[..., 0] > 180) & (panel[..., 0] < 240) & (panel[..., 2] > 230)
        assert dark.mean() > 0.05 and pale.mean() > 0.05


@pytest.mark.backend_independent
def test_a_batch_of_only_unreadable_files_is_skipped(tmp_path, trained):
    data, run = trained
    mixed = shutil.copytree(data, tmp_path / "mixed")
    for i in range(3):  # sorted first in their class: the whole first batch of 2 is unreadable
        (mixed / "blue" / f"000_broken_{i}.jpg").write_bytes(b"not an image")
    report = tlkit.evaluate(mixed, run=run, batch_size=2)
    assert report.count == 18 and len(report.skipped) == 3
    assert report.accuracy == pytest.approx(tlkit.evaluate(data, run=run).accuracy)


def test_evaluate_agrees_with_predict(trained):
    data, run = trained
    report = tlkit.evaluate(run=run)  # the run's own data: its test split
    assert report.split == "test" and report.count == 3
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert report.accuracy == pytest.approx(run_metrics["test_accuracy"], abs=1e-6)
    assert report.loss == pytest.approx(run_metrics["test_loss"], abs=1e-4)
    whole = tlkit.evaluate(data, run=run)  # a plain folder given explicitly: every image
    assert whole.split == "all" and whole.count == 18
    predictions = tlkit.predict([data], run=run)
    truth = {p: p.split("/")[-2] for p in (pred.path for pred in predictions)}
    accuracy = np.mean([pred.label == truth[pred.path] for pred in predictions])
    assert whole.accuracy == pytest.approx(accuracy)
    assert sum(row["support"] for row in whole.per_class.values()) == 18
    assert np.trace(np.array(whole.confusion_matrix)) == round(accuracy * 18)


@pytest.mark.backend_independent
def test_evaluate_refuses_unknown_classes_and_splits(tmp_path, trained):
    _, run = trained
    other = make_dataset(tmp_path / "other", ("blue", "green"), per_class=2)
    (other / "purple").mkdir()
    write_image(other / "purple" / "p.jpg", (120, 0, 120))
    with pytest.raises(tlkit.TlkitError, match="unknown to run"):
        tlkit.evaluate(other, run=run)
    with pytest.raises(tlkit.TlkitError, match="no val split|no test split"):
        tlkit.evaluate(make_dataset(tmp_path / "s", per_class=2, splits=["train", "val"]), run=run, split="test")


def test_tta_views_mirror_then_shift_by_whole_pixels():
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 20, 3)).astype(np.uint8)
    views = tta_views(18)
    assert views[0] == (0.0, 0.0, False) and view_images(images, views[0], "nearest") is images
    assert np.array_equal(view_images(images, views[1], "nearest"), images[:, :, ::-1])
    assert len(set(views)) == 18 and all(abs(dx) <= 0.1 and abs(dy) <= 0.1 for dx, dy, _ in views)
    right = view_images(images, (0.1, 0.0, False), "nearest")  # 2 pixels of 20: content moves left
    assert np.array_equal(right[:, :, :-2], images[:, :, 2:])
    assert np.array_equal(right[:, :, -2:], np.repeat(images[:, :, -1:], 2, axis=2))  # nearest fill
    down = view_images(images, (0.0, 0.1, True), "constant")
    assert np.array_equal(down[:, :-2], images[:, 2:, ::-1]) and not down[:, -2:].any()
    for count in (0, 19):
        with pytest.raises(tlkit.TlkitError, match="invalid tta"):
            tta_views(count)


def test_tta_averages_the_views(tmp_path, trained):
    """--tta 2 is the mean of the image's and its mirror image's probabilities; 1 is plain prediction."""
    data, run_dir = trained
    run = tlkit.load_run(run_dir)
    files = sorted((data / "red").glob("*.jpg"))[:3]
    pixels = np.stack([tlkit.decode_image(path, 32) for path in files])
    plain = class_probabilities(run.model, pixels)
    mirrored = class_probabilities(run.model, pixels[:, :, ::-1])
    assert not np.allclose(plain, mirrored)  # noisy images: the views differ
    for tta, expected in ((1, plain), (2, (plain + mirrored) / 2)):
        predictions = tlkit.predict(files, run=run, top_k=3, tta=tta)
        got = np.array([[dict(p.top_k)[name] for name in run.class_names] for p in predictions])
        np.testing.assert_allclose(got, expected, atol=1e-6)
    report = tlkit.evaluate(run=run, tta=3)
    assert report.tta == 3 and report.count == 3
    test_files = tlkit.scan(data, run.config.data).files["test"]
    averaged = {p.path: dict(p.top_k) for p in tlkit.predict(test_files, run=run, top_k=3, tta=3)}
    losses = [-np.log(averaged[str(path)][path.parent.name]) for path in test_files]
    assert report.loss == pytest.approx(np.mean(losses), rel=1e-5)  # the views' average was scored
    assert tlkit.evaluate(run=run).tta == 1


@pytest.mark.backend_independent
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_tta(trained, command):
    from click.testing import CliRunner

    from tlkit.cli import main

    data, run = trained
    target = [str(data / "red")] if command == "predict" else []
    good = CliRunner().invoke(main, [command, *target, "--run", str(run), "--tta", "4", "--json", "-q"])
    assert good.exit_code == 0, good.output
    if command == "evaluate":
        assert json.loads(good.output)["tta"] == 4
    else:
        expected = tlkit.predict([data / "red"], run=run, tta=4)
        assert [row["probability"] for row in json.loads(good.output)] == pytest.approx(
            [p.probability for p in expected], abs=1e-6)
    bad = CliRunner().invoke(main, [command, *target, "--run", str(run), "--tta", "19"])
    assert bad.exit_code == 1 and bad.output.strip() == "Error: invalid tta: 19; expected an integer from 1 " \
                                                       "(no augmentation) to 18"
