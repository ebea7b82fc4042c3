"""Exported models (SavedModel, TFLite, ONNX), run by their own runtimes: the run's probabilities, its class names."""

import importlib
import json
import os

import keras
import numpy as np
import pytest

import tlkit
from tlkit.deploy import BACKENDS, FORMATS, check_exportable, export, probability_model, read_contract, sidecar_path
from tlkit.model import class_probabilities

from conftest import HYMENOPTERA, make_dataset, require_shared

#: Where each format is exported to, in a test's folder.
OUT = {"savedmodel": "model", "tflite": "model.tflite", "onnx": "model.onnx"}
#: Largest difference allowed between an exported model's probabilities and the Keras model's (float32).
TOLERANCE = 1e-4


def exportable(fmt: str) -> None:
    """Skip a format that this backend does not export; its packages must be installed (the test extra)."""
    if keras.backend.backend() not in BACKENDS[fmt]:
        pytest.skip(f"{fmt} is not exported on the {keras.backend.backend()} backend")
    check_exportable(fmt)


def load_exported(fmt: str, path):
    """An exported artifact loaded as a consumer would, without tlkit (TensorFlow, LiteRT or ONNX Runtime):
    ``(function from pixels to probabilities, the class names found inside)``."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures["serving_default"]
        names = [name.decode() for name in loaded.class_names()["class_names"].numpy()]
        return lambda pixels: serve(image=tf.constant(pixels))["probabilities"].numpy(), names
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(str(path)).get_signature_runner()
        names = read_contract(path)["class_names"]  # TFLite metadata has no reader in the runtime
        return lambda pixels: runner(image=pixels)["probabilities"], names
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    return lambda pixels: session.run(["probabilities"], {"image": pixels})[0], names


def assert_parity(fmt: str, out, images: np.ndarray, expected: np.ndarray) -> list[str]:
    """The exported model gives the Keras model's probabilities ``expected`` (within TOLERANCE) and top class, for
    one image and for a whole batch; returns the class names found inside it."""
    exported, names = load_exported(fmt, out)
    pixels = images.astype(np.float32)
    got, single = exported(pixels), exported(pixels[:1])  # the batch dimension is dynamic
    assert got.shape == expected.shape and single.shape == expected[:1].shape
    difference = float(np.abs(got - expected).max())
    assert difference <= TOLERANCE and float(np.abs(single - expected[:1]).max()) <= TOLERANCE, difference
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-class run (one sigmoid unit) and a three-class run (softmax), trained once for this module, each with
    the images it is checked on: its own, decoded as tlkit decodes them, then black, white and noise."""
    root = tmp_path_factory.mktemp("export-runs")
    config = tlkit.Config().replace(
        data={"image_size": 32, "cache_dir": str(root / "cache"), "workers": 2, "val_split": 0.3},
        train={"weights": "none", "epochs": 2, "batch_size": 8, "patience": 0},
    )
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3))
    found = {}
    for classes in (("blue", "red"), ("blue", "green", "red")):
        data = make_dataset(root / f"data{len(classes)}", classes, per_class=6)
        tlkit.train(data, config, run_dir=root / f"run{len(classes)}", verbose=0)
        decoded = [tlkit.decode_image(path, 32) for path in sorted(data.rglob("*.jpg"))]
        images = np.concatenate([np.stack(decoded), np.zeros((1, 32, 32, 3)), np.full((1, 32, 32, 3), 255), noise])
        found[len(classes)] = (tlkit.load_run(root / f"run{len(classes)}"), images.astype(np.uint8))
    return found


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_gives_the_runs_probabilities_and_class_names(tmp_path, runs, fmt, classes):
    exportable(fmt)
    run, images = runs[classes]
    out = export(run.path, fmt, tmp_path / OUT[fmt])
    assert out == tmp_path / OUT[fmt]
    expected = class_probabilities(run.model, images.astype(np.float32))
    assert expected.shape == (len(images), classes)
    names = assert_parity(fmt, out, images, expected)
    contract = read_contract(out)
    assert names == contract["class_names"] == list(run.class_names)
    assert contract["format"] == fmt and contract["image_size"] == 32
    assert contract["input"]["shape"] == [None, 32, 32, 3] and contract["output"]["shape"] == [None, classes]
    if fmt != "savedmodel":  # a file has its contract beside it too
        assert json.loads(sidecar_path(out).read_text()) == contract
    written = {out.name} if fmt == "savedmodel" else {out.name, sidecar_path(out).name}
    assert {path.name for path in tmp_path.iterdir()} == written  # and no temporary is left behind


def test_bad_requests_are_clear_errors(tmp_path, runs):
    run, _ = runs[2]
    with pytest.raises(tlkit.TlkitError, match="unknown export format 'keras'; expected one of savedmodel"):
        export(run, "keras", tmp_path / "m")
    (tmp_path / "taken.onnx").write_text("mine")
    (tmp_path / "folder").mkdir()
    (tmp_path / "sidecar.tflite.json").write_text("mine")
    for fmt, out in (("onnx", "taken.onnx"), ("savedmodel", "folder"), ("tflite", "sidecar.tflite")):
        with pytest.raises(tlkit.TlkitError, match="already exists; remove it or choose another --out"):
            export(run, fmt, tmp_path / out)
    assert (tmp_path / "taken.onnx").read_text() == (tmp_path / "sidecar.tflite.json").read_text() == "mine"
    with pytest.raises(tlkit.TlkitError, match=r"ending in \.tflite, not model\.onnx"):
        export(run, "tflite", tmp_path / "model.onnx")
    with pytest.raises(tlkit.TlkitError, match="folder not found for .*: create .* first"):
        export(run, "onnx", tmp_path / "missing" / "model.onnx")
    with pytest.raises(tlkit.TlkitError, match="not a model exported by tlkit"):
        read_contract(tmp_path / "taken.onnx")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_run_is_a_clear_error(tmp_path, fmt):
    exportable(fmt)
    with pytest.raises(tlkit.TlkitError, match="run folder not found"):
        export(tmp_path / "nowhere", fmt, tmp_path / OUT[fmt])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_backends_are_refused_with_what_to_do(tmp_path, runs, fmt):
    if keras.backend.backend() in BACKENDS[fmt]:
        pytest.skip(f"{fmt} is exported on the {keras.backend.backend()} backend")
    with pytest.raises(tlkit.TlkitError, match="KERAS_BACKEND=tensorflow"):
        export(runs[2][0], fmt, tmp_path / OUT[fmt])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_export_leaves_nothing(tmp_path, runs, fmt, monkeypatch):
    """Whole or nothing: an export that fails half-way leaves neither the artifact, nor its sidecar, nor a
    temporary file or folder."""
    module = importlib.import_module("tlkit.deploy")

    def half_written(model, contract, path):
        (path / "saved_model.pb" if fmt == "savedmodel" else path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(module, "check_exportable", lambda fmt: None)  # any backend: nothing is really exported
    monkeypatch.setattr(module, {"savedmodel": "_write_savedmodel", "tflite": "_write_tflite",
                                 "onnx": "_write_onnx"}[fmt], half_written)
    with pytest.raises(OSError, match="disk full"):
        export(runs[3][0], fmt, tmp_path / OUT[fmt])
    assert os.listdir(tmp_path) == []


def test_a_mixed_precision_run_is_exported_in_float32(tmp_path, config):
    """TFLite has no half-precision kernels for VGG16's operations: the export computes in float32, with the
    run's weights, and agrees with the run to within half-precision rounding."""
    exportable("tflite")
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=4)
    tlkit.train(data, config.replace(train={"precision": "mixed_float16"}), run_dir=tmp_path / "run", verbose=0)
    run = tlkit.load_run(tmp_path / "run")
    float32 = probability_model(run)
    assert "mixed_float16" in json.dumps(keras.saving.serialize_keras_object(run.model))
    assert "float16" not in json.dumps(keras.saving.serialize_keras_object(float32))  # no layer, however nested
    for mine, theirs in zip(float32.get_weights(), run.model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    out = export(run, "tflite", tmp_path / "model.tflite")
    images = np.stack([tlkit.decode_image(path, 32) for path in sorted(data.rglob("*.jpg"))]).astype(np.float32)
    exported = load_exported("tflite", out)[0](images)
    np.testing.assert_allclose(exported, float32.predict(images, verbose=0)["probabilities"], atol=TOLERANCE)
    np.testing.assert_allclose(exported, class_probabilities(run.model, images), atol=1e-3)


@pytest.mark.real_weights
def test_hymenoptera_exports_match_the_run_on_every_validation_photo(tmp_path, real_weights):
    """A features-mode run on real photos (20 per class, 96 pixels), exported in every format this backend
    exports: the same probabilities within 1e-4 and the same top class on every validation photo."""
    formats = [fmt for fmt in FORMATS if keras.backend.backend() in BACKENDS[fmt]]
    if not formats:
        pytest.skip(f"no format is exported on the {keras.backend.backend()} backend")
    data = tmp_path / "hym"
    for split in ("train", "val"):
        for folder in sorted(p for p in (require_shared(HYMENOPTERA) / split).iterdir() if p.is_dir()):
            (data / split / folder.name).mkdir(parents=True)
            for path in sorted(folder.iterdir())[:20]:
                os.symlink(path, data / split / folder.name / path.name)
    config = tlkit.Config().replace(data={"image_size": 96, "cache_dir": str(tmp_path / "cache"), "workers": 2},
                                    train={"weights": real_weights, "epochs": 10, "batch_size": 16})
    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    run = tlkit.load_run(tmp_path / "run")
    images = np.stack([tlkit.decode_image(path, 96) for path in sorted((data / "val").rglob("*.jpg"))])
    assert len(images) == 40
    expected = class_probabilities(run.model, images.astype(np.float32))
    for fmt in formats:
        out = export(run, fmt, tmp_path / OUT[fmt])
        assert assert_parity(fmt, out, images, expected) == ["ants", "bees"]


def test_cli_export_says_what_it_wrote(tmp_path, runs):
    from click.testing import CliRunner

    from tlkit.cli import main

    exportable("onnx")
    run = runs[3][0].path
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", "--run", str(run), "--format", "onnx", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (f"onnx: {out} (input image float32 (batch, 32, 32, 3) RGB 0-255; output "
                                     "probabilities: blue, green, red)")
    again = CliRunner().invoke(main, ["export", "--run", str(run), "--format", "onnx", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output and len(again.output.strip().splitlines()) == 1
