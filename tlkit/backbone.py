"""The VGG16 convolutional base: its weights, its input preprocessing, freezing.

VGG16's ImageNet weights were trained in Caffe on BGR images with the ImageNet
mean subtracted, so inputs go through ``keras.applications.vgg16.preprocess_input``
(caffe mode), not the 1/255 rescale of the classic recipe. :class:`VGGPreprocess`
does that inside the model, so a saved classifier takes raw RGB pixels in [0, 255].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
from keras import ops

from tlkit.errors import TlkitError

#: ImageNet channel means, in BGR order, that caffe-mode preprocessing subtracts.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
#: The layer whose output tlkit uses as features.
FEATURE_LAYER = "block5_pool"


@keras.saving.register_keras_serializable(package="tlkit")
class VGGPreprocess(keras.layers.Layer):
    """Caffe-mode VGG16 preprocessing as a layer: RGB [0, 255] -> BGR minus the ImageNet mean.

    Equal to ``keras.applications.vgg16.preprocess_input`` on channels-last input.
    """

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)


def weights_identity(weights: str) -> str:
    """A string that changes whenever the weights do: ``imagenet``, ``none``, or ``sha256:<digest>`` of a file."""
    kind = weights.lower()
    if kind in ("imagenet", "none"):
        return kind
    path = _weights_path(weights)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TlkitError(
            f"weights file not found: {weights}; give --weights imagenet, none, or the path of a VGG16 "
            "notop weights file (or set TLKIT_WEIGHTS)"
        )
    return path


def build_base(weights: str, image_size: int, seed: int = 0) -> keras.Model:
    """VGG16 without its classifier (``include_top=False``) for square RGB inputs of ``image_size``.

    Args:
        weights: ``imagenet`` (Keras downloads and caches them), ``none`` (random, drawn
            from ``seed``: the same seed gives the same base), or the path of a weights
            file saved from ``VGG16(include_top=False)``.
        image_size: Input side, >= 32.
        seed: Seed of the random weights when ``weights`` is ``none``.

    Raises:
        TlkitError: If a weights file is missing or does not fit VGG16's conv base.
    """
    kind = weights.lower()
    source = None if kind == "none" else "imagenet" if kind == "imagenet" else str(_weights_path(weights))
    if source is None:
        keras.utils.set_random_seed(seed)
    try:
        return keras.applications.VGG16(
            include_top=False, weights=source, input_shape=(image_size, image_size, 3)
        )
    except (ValueError, OSError) as exc:
        raise TlkitError(f"cannot load VGG16 weights from {weights}: {exc}") from None
    except Exception as exc:  # Keras's download failure is a bare Exception
        if source != "imagenet":
            raise
        raise TlkitError(f"cannot download the VGG16 ImageNet weights ({exc}); offline, give --weights PATH "
                         "or set TLKIT_WEIGHTS to a VGG16 notop weights file") from None


def set_trainable_from(base: keras.Model, first_layer: str | None) -> None:
    """Freeze ``base`` below ``first_layer`` and unfreeze it and every layer above; ``None`` freezes all.

    Raises:
        TlkitError: If ``first_layer`` is not a layer of the base.
    """
    names = [layer.name for layer in base.layers]
    if first_layer is not None and first_layer not in names:
        convs = [n for n in names if "conv" in n]
        raise TlkitError(f"unknown layer {first_layer!r} to unfreeze from; VGG16 has {', '.join(convs)}")
    base.trainable = first_layer is not None
    if first_layer is None:
        return
    start = names.index(first_layer)
    for position, layer in enumerate(base.layers):
        layer.trainable = position >= start
