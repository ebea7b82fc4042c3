"""Export a run's classifier for use without tlkit: TensorFlow SavedModel, TFLite (LiteRT) or ONNX.

Every artifact keeps one contract, whatever the format and the number of classes:

- input ``image``: float32 ``(batch, image_size, image_size, 3)``, RGB pixel values in [0, 255] (an image
  decoded to 8-bit RGB and resized to the square, as tlkit does); the batch dimension is dynamic. VGG16's
  preprocessing is inside the model: feed the pixels as they are.
- output ``probabilities``: float32 ``(batch, classes)``, one probability per class in the order of
  ``class_names``, each row summing to 1 (a two-class run's single sigmoid unit ``p`` becomes ``[1 - p, p]``);
  a multi-label run's (``"multi_label": true``) are its labels' independent sigmoid probabilities, each label
  applying from its ``thresholds`` entry.

The contract (class names, image size, input and output, source run, tlkit version) travels inside the
artifact, and :func:`read_contract` reads it back from there:

- ``savedmodel`` (a folder): a ``class_names`` signature returning the names as strings, beside the
  ``serving_default`` (= ``serve``) signature; the contract as JSON in ``assets.extra/tlkit.json``;
- ``tflite``: a TFLite metadata entry named ``tlkit`` holding the contract as JSON (signature
  ``serving_default``); plus the sidecar ``<out>.json``;
- ``onnx``: the model's ``metadata_props``: ``class_names`` (a JSON list), ``image_size``, ``tlkit_version``,
  and ``tlkit`` (the whole contract as JSON); plus the sidecar ``<out>.json``.

SavedModel and TFLite are written on the TensorFlow backend only; ONNX on TensorFlow (tf2onnx) or PyTorch
(``torch.onnx``). Every artifact is exported under a temporary name beside ``out`` and renamed into place
when whole; an existing ``out`` (or sidecar) is never overwritten.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import keras
import numpy as np

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.io import atomic_folder, atomic_write, digest, write_json
from tlkit.model import both_classes
from tlkit.outputs import check_output, json_text
from tlkit.runs import MODEL_FILE, RUN_CHECKSUM, Run, resolve_run

FORMATS = ("savedmodel", "tflite", "onnx")
#: The suffix ``out`` must have, per file format (a SavedModel is a folder of any name).
SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}
#: The backends each format is exported on.
BACKENDS = {"savedmodel": ("tensorflow",), "tflite": ("tensorflow",), "onnx": ("tensorflow", "torch")}
#: Dtype policies and dtypes of a mixed-precision model's config, all exported as float32.
HALF_DTYPES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: Name of the contract: the TFLite metadata entry, the ONNX metadata key, the SavedModel's JSON file.
CONTRACT_NAME = "tlkit"
#: Where a SavedModel keeps its contract: TensorFlow Serving's folder for files the graph does not use.
SAVEDMODEL_CONTRACT = Path("assets.extra") / f"{CONTRACT_NAME}.json"


def check_exportable(fmt: str) -> None:
    """Check that ``fmt`` can be exported here: a known format, the right Keras backend, its packages installed.

    Raises:
        TlkitError: Saying what is missing and what to do.
    """
    _check_format(fmt)
    backend = keras.backend.backend()
    if backend not in BACKENDS[fmt]:
        raise TlkitError(f"{fmt} export runs on the {' or '.join(BACKENDS[fmt])} backend, not {backend}; "
                         "run it with KERAS_BACKEND=tensorflow")
    needed = {"onnx": ["onnx", *(["tf2onnx"] if backend == "tensorflow" else [])]}.get(fmt, [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise TlkitError(f"{fmt} export needs the package(s) {', '.join(missing)}: pip install 'tlkit[export]'")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise TlkitError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def sidecar_path(out: str | Path) -> Path:
    """The JSON file describing a TFLite or ONNX artifact's contract: ``<out>.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_export_path(fmt: str, out: str | Path) -> Path:
    """``out``, once it is known to be a path ``fmt`` can be exported to: the format's suffix, nothing there yet
    (nor at the sidecar), a writable folder (checked before any work).

    Raises:
        TlkitError: Saying what is wrong with ``out``.
    """
    _check_format(fmt)
    out = Path(out)
    suffix = SUFFIXES.get(fmt)
    if suffix is not None and out.suffix != suffix:
        raise TlkitError(f"a {fmt} export is a {suffix} file; give --out a name ending in {suffix}, not {out.name}")
    for path in (out, *([sidecar_path(out)] if suffix else [])):
        check_output(path, folder=fmt == "savedmodel" and path == out)  # a link or a device: said as such
        if path.exists() or path.is_symlink():
            raise TlkitError(f"{path} already exists; remove it or choose another --out (exports never overwrite)")
    return out


def export(run: Run | str | Path | None, fmt: str, out: str | Path) -> Path:
    """Export a run's classifier to ``out`` as ``fmt``: ``savedmodel``, ``tflite`` or ``onnx`` (see the module).

    Args:
        run: A loaded :class:`~tlkit.runs.Run`, a run folder, or ``None`` for the latest under ``runs/``.
        fmt: One of :data:`FORMATS`.
        out: The folder (savedmodel) or file (``.tflite``, ``.onnx``) to write; must not exist.
            A file format also gets the sidecar ``<out>.json``.

    Returns:
        ``out``.

    Raises:
        TlkitError: On an unknown format, a backend or package it cannot be exported with, a bad ``out``
            (existing, wrong suffix, missing or read-only parent folder), a bad run, or a full disk
            (:class:`~tlkit.outputs.DiskError`: nothing is left behind).
    """
    out = check_export_path(fmt, out)
    check_exportable(fmt)
    run = resolve_run(run)
    model = probability_model(run)
    contract = _contract(run, fmt)
    if fmt == "savedmodel":
        with atomic_folder(out) as folder:
            _write_savedmodel(model, contract, folder)
    else:
        write = _write_tflite if fmt == "tflite" else _write_onnx

        def write_whole(temporary: str) -> None:
            write(model, contract, Path(temporary))
            write_json(sidecar_path(out), contract)  # before the artifact is renamed: an artifact has its sidecar

        try:
            atomic_write(out, write_whole)
        except BaseException:
            sidecar_path(out).unlink(missing_ok=True)  # no sidecar without its artifact: a retry is not refused
            raise
    return out


def probability_model(run: Run) -> keras.Model:
    """The run's classifier with the export contract: input ``image``, output ``{"probabilities": (n, classes)}``.

    A two-class run's sigmoid ``p`` becomes ``[1 - p, p]``, as :func:`tlkit.model.class_probabilities` does.
    A run trained in mixed precision is exported computing in float32 (TFLite has no half-precision kernels
    for most of VGG16's operations; its weights are float32 anyway).
    """
    size = run.image_size
    image = keras.Input((size, size, 3), dtype="float32", name=INPUT_NAME)
    p = _in_float32(run.model)(image, training=False)
    p = p if run.multi_label else both_classes(p, len(run.class_names))
    return keras.Model(image, {OUTPUT_NAME: p}, name="tlkit_export")


def _in_float32(model: keras.Model) -> keras.Model:
    """``model`` if it computes in float32 throughout, else a copy that does, with the same weights."""

    def float32(config):
        if isinstance(config, dict):
            return {key: float32(value) for key, value in config.items()}
        if isinstance(config, list):
            return [float32(value) for value in config]
        return "float32" if config in HALF_DTYPES else config

    config = keras.saving.serialize_keras_object(model)
    converted = float32(config)
    if converted == config:
        return model
    copy = keras.saving.deserialize_keras_object(converted)
    copy.set_weights(model.get_weights())
    return copy


def read_contract(path: str | Path) -> dict:
    """The contract stored inside an exported artifact (a SavedModel folder, a ``.tflite`` or an ``.onnx`` file).

    Raises:
        TlkitError: If ``path`` is not an artifact written by :func:`export`.
    """
    path = Path(path)
    try:
        if path.is_dir():
            text = (path / SAVEDMODEL_CONTRACT).read_text(encoding="utf-8")
        elif path.suffix == SUFFIXES["tflite"]:
            text = _tflite_metadata(path.read_bytes())[CONTRACT_NAME].decode("utf-8")
        elif path.suffix == SUFFIXES["onnx"]:
            import onnx

            text = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}[CONTRACT_NAME]
        else:
            raise KeyError(path.suffix)
        return json.loads(text)
    except Exception as exc:  # each format's parser raises its own types for a file it cannot read
        raise TlkitError(f"{path} is not a model exported by tlkit ({type(exc).__name__}: {exc}); "
                         "give a SavedModel folder, a .tflite or an .onnx file written by tlkit export") from None


def _contract(run: Run, fmt: str) -> dict:
    size, classes = run.image_size, len(run.class_names)
    return {
        "format": fmt,
        "class_names": list(run.class_names),
        "image_size": size,
        "input": {"name": INPUT_NAME, "shape": [None, size, size, 3], "dtype": "float32", "range": [0, 255],
                  "layout": "batch, height, width, RGB channels",
                  "preprocessing": f"decode to 8-bit RGB and resize to {size}x{size} (tlkit: bilinear, aspect "
                                   "ratio not kept); the model applies VGG16's preprocessing itself"},
        "output": {"name": OUTPUT_NAME, "shape": [None, classes], "dtype": "float32", "meaning": (
            "probability of each label (independent sigmoids), in the order of class_names; a label applies from "
            "its threshold" if run.multi_label else "probability of each class, in the order of class_names; each "
            "row sums to 1")},
        "multi_label": run.multi_label,
        **({"thresholds": run.thresholds} if run.multi_label else {}),
        "run": str(run.path.resolve()),
        "model_sha256": digest(run.path / MODEL_FILE, RUN_CHECKSUM),
        "tlkit_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
    }


def _write_savedmodel(model: keras.Model, contract: dict, folder: Path) -> None:
    import tensorflow as tf

    size = contract["image_size"]
    archive = keras.export.ExportArchive()
    # Not archive.track(model): the archive would then store every weight twice, once per Keras variable and
    # once per tf.Variable its endpoint captures (keras-team/keras#23553); the captured ones are enough to serve.
    archive.add_endpoint("serve", lambda image: model(image, training=False),
                         [tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT_NAME)])
    names = list(contract["class_names"])
    class_names = tf.function(lambda: {"class_names": tf.constant(names)})
    class_names()  # traced: an endpoint without inputs
    archive.add_endpoint("class_names", class_names)
    archive.write_out(str(folder), verbose=False)
    (folder / SAVEDMODEL_CONTRACT).parent.mkdir(exist_ok=True)
    (folder / SAVEDMODEL_CONTRACT).write_text(json_text(contract, SAVEDMODEL_CONTRACT), encoding="utf-8")


def _write_tflite(model: keras.Model, contract: dict, path: Path) -> None:
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    # TFLite's built-in ops only: the model runs on the plain LiteRT runtime, no TensorFlow ops delegate
    model.export(str(path), format="litert", verbose=False,
                 target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    entry = schema.BufferT()
    entry.data = np.frombuffer(json.dumps(contract, ensure_ascii=False, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    flat.buffers.append(entry)
    metadata = schema.MetadataT()
    metadata.name, metadata.buffer = CONTRACT_NAME, len(flat.buffers) - 1
    flat.metadata = [*(flat.metadata or []), metadata]
    path.write_bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def _tflite_metadata(data: bytes) -> dict[str, bytes]:
    """A TFLite model's metadata entries, ``{name: bytes}``, read without unpacking its weights."""
    from tensorflow.lite.python import schema_py_generated as schema

    flat = schema.Model.GetRootAsModel(data, 0)
    entries = (flat.Metadata(i) for i in range(flat.MetadataLength()))
    return {entry.Name().decode("utf-8"): flat.Buffers(entry.Buffer()).DataAsNumpy().tobytes() for entry in entries}


def _write_onnx(model: keras.Model, contract: dict, path: Path) -> None:
    import onnx

    size = contract["image_size"]
    model(np.zeros((1, size, size, 3), dtype="float32"))  # Keras exports only a model that has been called
    with warnings.catch_warnings():  # tracing chatter (tf2onnx's numpy shims, torch's tracer): nothing to act on
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False)
    proto = onnx.load(path)
    graph = proto.graph
    [given], [output] = graph.input, graph.output
    for node in graph.node:  # the output's name as the contract says (PyTorch numbers it)
        node.output[:] = [OUTPUT_NAME if name == output.name else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == output.name else name for name in node.input]
    output.name = OUTPUT_NAME
    for value in (given, output):  # the exporters name the batch dimension as they like
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    metadata = {"class_names": json.dumps(contract["class_names"], ensure_ascii=False),
                "image_size": str(size), "tlkit_version": __version__,
                CONTRACT_NAME: json.dumps(contract, ensure_ascii=False, allow_nan=False)}
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, path)
