"""Grad-CAM (tlkit explain): the gradient it uses, the heatmap's shape, and that it finds the evidence."""

import importlib

import numpy as np
import pytest
from click.testing import CliRunner
from keras import ops
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.backends import gradient
from tlkit.inference.explain import GradCam, explain

from conftest import make_dataset, write_image


@pytest.fixture
def run(tmp_path, config):
    """A features-mode run on three colour classes (random weights: fast, and enough for the mechanics)."""
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=6)
    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    return tlkit.load_run(tmp_path / "run")


def test_gradient_is_the_logits_derivative(run):
    """The backend's autodiff gives what finite differences of the class logit give."""
    cam = GradCam(run.model)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    classes = np.array([0, 2])
    maps = ops.cast(cam.maps(images, training=False), "float32")
    derivative = gradient(lambda m: cam.logits(m, classes), maps)
    maps, derivative = ops.convert_to_numpy(maps).astype(np.float64), ops.convert_to_numpy(derivative)
    # the logit of a class moves with a feature as its gradient says (central differences)
    largest = float(np.abs(derivative).max())
    assert largest > 1e-5
    for spot in [np.unravel_index(np.abs(derivative).argmax(), derivative.shape), (1, 0, 0, 7), (0, 1, 0, 300)]:
        step = np.zeros_like(maps)
        step[spot] = 1e-3  # small: max pooling and relu switch at larger steps
        up = ops.convert_to_numpy(cam.logits(ops.convert_to_tensor(maps + step, "float32"), classes))
        down = ops.convert_to_numpy(cam.logits(ops.convert_to_tensor(maps - step, "float32"), classes))
        assert (up - down)[spot[0]] / 2e-3 == pytest.approx(derivative[spot], rel=0.02, abs=0.01 * largest)


def test_heatmap_has_the_image_shape_and_follows_the_class(tmp_path, run):
    photo = write_image(tmp_path / "wide.png", (200, 40, 40), size=50)
    Image.open(photo).resize((90, 50)).save(photo)  # not square: 90 wide, 50 high
    predicted = explain(photo, run)
    assert predicted.heatmap.shape == (50, 90) and predicted.image.size == (90, 50)
    assert 0.0 <= predicted.heatmap.min() and predicted.heatmap.max() <= 1.0
    probabilities = tlkit.predict([photo], run=run, top_k=3)[0]
    assert predicted.class_name == predicted.predicted == probabilities.label
    assert predicted.probability == pytest.approx(probabilities.probability, abs=1e-6)
    other = next(name for name in run.class_names if name != predicted.predicted)
    chosen = explain(photo, run, other)
    assert chosen.class_name == other and chosen.predicted == predicted.predicted
    assert chosen.probability == pytest.approx(dict(probabilities.top_k)[other], abs=1e-6)
    assert not np.allclose(chosen.heatmap, predicted.heatmap)


def test_many_images_are_explained_a_batch_at_a_time_with_the_same_result(tmp_path, run, monkeypatch):
    module = importlib.import_module("tlkit.inference.explain")

    paths = [write_image(tmp_path / f"{i}.png", (40 * i, 90, 200 - 30 * i), size=32, seed=i) for i in range(5)]
    pixels = np.stack([tlkit.decode_image(path, 32) for path in paths])
    pictures = [Image.open(path).convert("RGB") for path in paths]
    whole = module.explain_images(run, paths, pixels, pictures)
    calls = []
    real = module.GradCam.__call__
    monkeypatch.setattr(module, "CAM_BATCH", 2)
    monkeypatch.setattr(module.GradCam, "__call__", lambda self, x, c: calls.append(len(x)) or real(self, x, c))
    batched = module.explain_images(run, paths, pixels, pictures)
    assert calls == [2, 2, 1]
    for one, other in zip(whole, batched):
        assert one.class_name == other.class_name
        np.testing.assert_allclose(one.heatmap, other.heatmap, atol=1e-5)


def test_cli_writes_the_overlay_and_refuses_bad_input(tmp_path, run):
    photo = write_image(tmp_path / "photo.jpg", (30, 60, 200), size=40)
    out = tmp_path / "heat.png"
    result = CliRunner().invoke(main, ["explain", str(photo), "--run", str(run.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{out}: evidence for ")
    explanation = explain(photo, run)
    assert Image.open(out).size == (40, 40)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(explanation.overlay()))
    # opacity 0 leaves the photo as it was decoded
    CliRunner().invoke(main, ["explain", str(photo), "--run", str(run.path), "--out", str(out), "--opacity", "0"])
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(explanation.image))
    for args, message in ((["--class", "purple"], "unknown class 'purple'; run "),
                          (["--out", str(tmp_path / "gone" / "x.png")], f"folder not found for {tmp_path}/gone/x.png")):
        bad = CliRunner().invoke(main, ["explain", str(photo), "--run", str(run.path), "--out", str(out), *args])
        assert bad.exit_code == 1 and message in bad.output and len(bad.output.strip().splitlines()) == 1
    (tmp_path / "notes.jpg").write_text("not an image")
    bad = CliRunner().invoke(main, ["explain", str(tmp_path / "notes.jpg"), "--run", str(run.path), "--out", str(out)])
    assert bad.exit_code == 1 and "is not a readable image" in bad.output


def _marked(size: int, seed: int, corner: tuple[int, int] | None) -> np.ndarray:
    """Grey noise, with a red square (a third of the side) at ``corner`` when given."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(120 + rng.normal(0, 20, (size, size, 3)), 0, 255)
    if corner is not None:
        y, x = corner
        pixels[y:y + size * 3 // 8, x:x + size * 3 // 8] = (230, 30, 30)
    return pixels.astype(np.uint8)


@pytest.mark.real_weights
def test_heatmap_is_highest_where_the_evidence_is(tmp_path, config, real_weights):
    """Class "marked" differs from "plain" only by a red square near the top-left corner; in a new,
    wider picture the heatmap for "marked" must sit on its square."""
    for name in ("marked", "plain"):
        for i in range(20):
            corner = tuple(np.random.default_rng(i).integers(0, 8, 2)) if name == "marked" else None
            (tmp_path / "d" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_marked(64, 100 * len(name) + i, corner)).save(tmp_path / "d" / name / f"{i}.png")
    settings = config.replace(data={"image_size": 64, "val_split": 0.25},
                              train={"weights": real_weights, "epochs": 20, "batch_size": 8})
    result = tlkit.train(tmp_path / "d", settings, run_dir=tmp_path / "run", verbose=0)
    assert result.metrics["val_accuracy"] == 1.0
    picture = np.clip(120 + np.random.default_rng(999).normal(0, 20, (96, 128, 3)), 0, 255)
    picture[4:40, 6:52] = (230, 30, 30)  # the square, stretched as the model will see it
    Image.fromarray(picture.astype(np.uint8)).save(tmp_path / "new.png")
    explanation = explain(tmp_path / "new.png", tmp_path / "run", "marked")
    heatmap = explanation.heatmap
    assert heatmap.shape == (96, 128) and explanation.predicted == "marked"
    inside = heatmap[4:40, 6:52].mean()
    outside = np.concatenate([heatmap[48:].ravel(), heatmap[:, 64:].ravel()]).mean()  # the other three quarters
    assert inside > 2 * outside, (inside, outside)
    row, column = np.unravel_index(heatmap.argmax(), heatmap.shape)
    assert row < 48 and column < 64
