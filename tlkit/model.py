"""The classifier: its head, its assembly on VGG16, how it is compiled, and its class probabilities.

The head takes VGG16's ``block5_pool`` feature map, so the same head trains on cached features
(``features`` mode) and sits on the live base (``frozen``, ``finetune``). The classifier is
``image -> VGGPreprocess -> VGG16 base -> head`` and takes raw RGB pixels in [0, 255].

Two classes train one sigmoid unit with binary cross-entropy, more a softmax; multi-label data one
sigmoid unit per label, with binary cross-entropy. Everything that turns the model's output into per-class
probabilities or logits goes through this module (the two-class rule lives here only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import keras
import numpy as np
from keras import ops

from tlkit.backbone import IMAGENET_BGR_MEAN
from tlkit.backends.devices import Devices, pad_rows, round_up
from tlkit.config import MULTI_LABEL_THRESHOLD, PREDICT_BATCH, TOP_K, ModelConfig
from tlkit.hardware import resolve_precision

HEAD_NAME = "head"
#: The preprocessing layer's name inside a classifier.
PREPROCESS_NAME = "preprocess"
#: Pooled VGG16 features of caffe-preprocessed images average about 3 with tails past 100; scaling
#: them down keeps the head's first logits small. Measured on hymenoptera (3 seeds): validation loss
#: 0.24 instead of 0.45-0.58 unscaled, and accuracy 0.92 +/- 0.004 instead of 0.91 +/- 0.02.
FEATURE_SCALE = 1 / 30
#: Rows handed to one ``model.predict`` call by :func:`predict_rows` (memory stays bounded by it).
PREDICT_CHUNK = 1024


@keras.saving.register_keras_serializable(package="tlkit")
class VGGPreprocess(keras.layers.Layer):
    """Caffe-mode VGG16 preprocessing as a layer: RGB [0, 255] -> BGR minus the ImageNet mean.

    Equal to ``keras.applications.vgg16.preprocess_input`` on channels-last input.
    """

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)


def is_binary(num_classes: int) -> bool:
    """Two classes use one sigmoid unit and binary cross-entropy; more use softmax."""
    return num_classes == 2


def build_head(feature_shape: tuple[int, ...], num_classes: int, config: ModelConfig, seed: int,
               multi_label: bool = False) -> keras.Model:
    """Pooling (global average or flatten) -> scaling -> Dense(head_units, relu) -> Dropout -> output layer
    (one sigmoid unit for two classes, a softmax for more, ``multi_label``: a sigmoid unit per label).

    The dropout draws from its own random stream seeded by ``seed`` (a model variable, so a
    resumed run continues it; unseeded, PyTorch's dropout would use the process-wide generator).
    """
    inputs = keras.Input(shape=feature_shape, name="features")
    pool = keras.layers.GlobalAveragePooling2D if config.pooling == "avg" else keras.layers.Flatten
    x = pool(name="pool")(inputs)
    x = keras.layers.Rescaling(FEATURE_SCALE, name="scale")(x)
    penalty = keras.regularizers.L2(config.l2) if config.l2 else None
    x = keras.layers.Dense(config.head_units, activation="relu", kernel_regularizer=penalty, name="hidden")(x)
    x = keras.layers.Dropout(config.dropout, seed=seed, name="dropout")(x)
    if multi_label:
        outputs = keras.layers.Dense(num_classes, activation="sigmoid", dtype="float32", kernel_regularizer=penalty,
                                     name="label_probabilities")(x)
    elif is_binary(num_classes):
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", kernel_regularizer=penalty,
                                     name="probability")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", kernel_regularizer=penalty,
                                     name="probabilities")(x)
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def build_classifier(base: keras.Model, head: keras.Model) -> keras.Model:
    """``image -> VGGPreprocess -> base (inference mode) -> head``: the model a run saves."""
    inputs = keras.Input(shape=base.input_shape[1:], name="image")
    x = VGGPreprocess(name=PREPROCESS_NAME)(inputs)
    x = base(x, training=False)
    return keras.Model(inputs, head(x), name="tlkit_classifier")


def build_feature_extractor(base: keras.Model, augment: keras.layers.Layer | None = None) -> keras.Model:
    """``raw RGB pixels -> VGGPreprocess -> base``, giving the base's feature maps; with ``augment`` (a
    layer that transforms at prediction too, :class:`tlkit.augment.AlwaysAugment`), those of transformed images."""
    inputs = keras.Input(shape=base.input_shape[1:])
    pixels = inputs if augment is None else augment(inputs)
    return keras.Model(inputs, base(VGGPreprocess()(pixels)), name="feature_extractor")


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name: rmsprop, adam, sgd (momentum 0.9) or nadam."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
            "nadam": keras.optimizers.Nadam}[name](learning_rate=learning_rate)


def compile_model(model: keras.Model, num_classes: int, optimizer: str, learning_rate: float,
                  weighted_accuracy: bool = False, label_smoothing: float = 0.0, *, multi_label: bool = False) -> None:
    """Compile with the loss that fits the class count, accuracy, and top-5 accuracy past 5 classes; for
    ``multi_label``, binary cross-entropy with ``accuracy`` the share of right 0/1 decisions (Keras's
    ``BinaryAccuracy``, at 0.5) and ``micro_f1`` (Keras's ``F1Score``, micro-averaged, at 0.5).

    ``weighted_accuracy``: weigh the metrics by the sample weights too, as on several devices, where
    padding rows weigh zero (see :mod:`tlkit.backends.devices`). ``label_smoothing``: as Keras's
    cross-entropy losses define it (targets become ``y * (1 - s) + s / 2`` for the sigmoid unit,
    ``y * (1 - s) + s / classes`` for softmax).
    """
    metrics: list = ["accuracy"]
    if multi_label:
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"),
                   keras.metrics.F1Score(average="micro", threshold=MULTI_LABEL_THRESHOLD, name="micro_f1")]
    elif num_classes > TOP_K:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=TOP_K, name="top_5_accuracy"))
    loss = loss_function(num_classes, label_smoothing, multi_label)
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss=loss,
                  **{"weighted_metrics" if weighted_accuracy else "metrics": metrics})


def loss_function(num_classes: int, label_smoothing: float = 0.0, multi_label: bool = False):
    """Binary cross-entropy for sigmoid units, sparse categorical cross-entropy for softmax; with
    ``label_smoothing``, Keras's categorical cross-entropy on one-hot targets (its sparse loss has none)."""
    if multi_label or is_binary(num_classes):
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()

    def smoothed_sparse_categorical_crossentropy(y_true, y_pred):  # per row: Keras weighs and averages the rows
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=label_smoothing)

    return smoothed_sparse_categorical_crossentropy


def targets(labels, num_classes: int, multi_label: bool = False):
    """Labels in the shape the loss expects: ``(n, 1)`` float for binary, int for softmax, the ``(n, labels)``
    0/1 rows as float for multi-label."""
    if multi_label:
        return labels.astype("float32")
    if is_binary(num_classes):
        return labels.reshape(-1, 1).astype("float32")
    return labels.astype("int32")


@contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Build models under Keras dtype policy ``name`` (``float32``, ``mixed_float16``, ``mixed_bfloat16``), or
    under the one ``auto`` resolves to here (:func:`tlkit.hardware.resolve_precision`)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(name).policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def predict_rows(model: keras.Model, rows, batch_size: int, devices: Devices | None = None) -> np.ndarray:
    """``model.predict`` over ``rows`` (an array, a memory-mapped one included), read a chunk at a time.

    With several local devices (``model`` built in ``devices.local_scope()``) each chunk is padded
    to a multiple of them, and the batch size rounded up to one, so that every device gets an equal
    part; the padding is cut off again.
    """
    multiple = 1 if devices is None else devices.local_count
    batch = round_up(batch_size, multiple)
    outputs = []
    for start in range(0, len(rows), PREDICT_CHUNK):
        chunk = np.asarray(rows[start:start + PREDICT_CHUNK])
        padded = pad_rows(chunk, multiple)
        with nullcontext() if devices is None else devices.local_scope():
            predicted = model.predict(padded, batch_size=min(batch, len(padded)), verbose=0)
        outputs.append(np.asarray(predicted)[:len(chunk)])
    if not outputs:
        return np.empty((0, *model.output_shape[1:]), dtype=np.float32)
    return np.concatenate(outputs)


def class_probabilities(model, images: np.ndarray, batch_size: int = PREDICT_BATCH,
                        devices: Devices | None = None) -> np.ndarray:
    """``(n, classes)`` probabilities of ``images`` (read a chunk at a time: a memory-mapped array stays
    on disk; on ``devices``, see :func:`predict_rows`); a sigmoid output ``p`` becomes ``[1 - p, p]``."""
    out = predict_rows(model, images, batch_size, devices).astype(np.float64)
    return np.concatenate([1.0 - out, out], axis=1) if out.shape[1] == 1 else out


def both_classes(p, num_classes: int):
    """A Keras tensor of the classifier's output as one probability per class: a sigmoid unit's ``p``
    becomes ``[1 - p, p]`` (layers ``one_minus`` and ``both_classes``); softmax outputs stay as they are."""
    if not is_binary(num_classes):
        return p
    one_minus_p = keras.layers.Rescaling(-1.0, offset=1.0, name="one_minus")(p)
    return keras.layers.Concatenate(name="both_classes")([one_minus_p, p])


def class_logits(z, classes: np.ndarray, binary: bool):
    """The logit of ``classes[i]`` for row ``i`` of the output layer's logits ``z``: a sigmoid unit's
    logit ``z`` is class 1's, class 0's is ``-z``."""
    if binary:
        sign = ops.convert_to_tensor(np.where(classes == 1, 1.0, -1.0).astype("float32"))
        return z[:, 0] * sign
    return ops.take_along_axis(z, ops.convert_to_tensor(classes.reshape(-1, 1).astype("int32")), axis=1)[:, 0]
