"""Every VGG16 fact tlkit relies on: its layers, its weights, its input preprocessing, freezing it.

VGG16's ImageNet weights were trained in Caffe on BGR images with the ImageNet mean subtracted, so
inputs are flipped to BGR and have :data:`IMAGENET_BGR_MEAN` subtracted (what
``keras.applications.vgg16.preprocess_input`` does in caffe mode), not the 1/255 rescale of the classic
recipe. :class:`tlkit.model.VGGPreprocess` does that inside the saved model.

Importing this module imports no ML framework; building the base does.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

from tlkit.errors import TlkitError

#: The convolutional base's layers, bottom to top.
VGG16_LAYERS = tuple(f"block{block}_{kind}" for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                     for kind in [*(f"conv{n}" for n in range(1, convs + 1)), "pool"])
#: The base's name inside a classifier (Keras's name for ``VGG16(include_top=False)``).
BASE_NAME = "vgg16"
#: The layer whose output tlkit uses as features (and the head takes).
FEATURE_LAYER = "block5_pool"
#: The layer Grad-CAM reads: the last convolution (before the last pooling halves its resolution).
CAM_LAYER = "block5_conv3"
#: ImageNet channel means, in BGR order, that caffe-mode preprocessing subtracts.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def _vgg16_arrays() -> tuple[tuple[int, ...], ...]:
    shapes, channels = [], 3
    for convs, width in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):  # per block: convolutions, channels
        for _ in range(convs):
            shapes += [(3, 3, channels, width), (width,)]
            channels = width
    return tuple(shapes)


#: The shapes of the arrays a VGG16 notop weights file holds: each convolution's kernel and bias.
VGG16_ARRAYS = _vgg16_arrays()


def weights_identity(weights: str, remember_in: Path | None = None) -> str:
    """A string that changes whenever the weights do: ``imagenet``, ``none``, or ``sha256:<digest>`` of a file.

    A file's digest is computed once per process while its size, times and inode stay the same, and with
    ``remember_in`` (a folder: the feature cache's) once for every process, noted there in :data:`DIGESTS_FILE`.

    Raises:
        TlkitError: If ``weights`` names a file that does not exist.
    """
    kind = weights.lower()
    if kind in ("imagenet", "none"):
        return kind
    path = weights_path(weights).resolve()
    info = os.stat(path)
    stamp = f"{info.st_size}|{info.st_mtime_ns}|{info.st_ino}|{info.st_ctime_ns}"
    return _file_identity(str(path), stamp, None if remember_in is None else Path(remember_in).expanduser())


#: The digests of weights files in a feature cache, by path, size, times and inode (a copy made with its
#: times kept is another inode: hashed again).
DIGESTS_FILE = "weights-digests.json"


@lru_cache(maxsize=8)
def _file_identity(path: str, stamp: str, remember_in: Path | None) -> str:
    from tlkit.io import digest, write_json

    noted = {}
    key = f"{path}|{stamp}"
    if remember_in is not None:
        try:
            noted = json.loads((remember_in / DIGESTS_FILE).read_text())
            return noted[key]
        except (OSError, ValueError, KeyError, TypeError):
            noted = noted if isinstance(noted, dict) else {}
    identity = f"sha256:{digest(path, 'sha256')}"
    if remember_in is not None:
        try:
            remember_in.mkdir(parents=True, exist_ok=True)
            write_json(remember_in / DIGESTS_FILE, {**noted, key: identity})
        except (OSError, TlkitError):  # a read-only or full cache still works, hashing each time
            pass
    return identity


def weights_path(weights: str) -> Path:
    """The weights file ``weights`` names.

    Raises:
        TlkitError: If it does not exist.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TlkitError(
            f"weights file not found: {weights}; give --weights imagenet, none, or the path of a VGG16 "
            "notop weights file (or set TLKIT_WEIGHTS)"
        )
    return path


def build_base(weights: str, image_size: int, seed: int = 0):
    """VGG16 without its classifier (``include_top=False``) for square RGB inputs of ``image_size``.

    Args:
        weights: ``imagenet`` (Keras downloads and caches them), ``none`` (random, drawn
            from ``seed``: the same seed gives the same base), or the path of a weights
            file saved from ``VGG16(include_top=False)``.
        image_size: Input side, >= 32.
        seed: Seed of the random weights when ``weights`` is ``none``.

    Returns:
        A ``keras.Model`` named :data:`BASE_NAME` whose output is :data:`FEATURE_LAYER`'s.

    Raises:
        TlkitError: If a weights file is missing or does not fit VGG16's conv base.
    """
    import keras

    kind = weights.lower()
    source = None if kind == "none" else "imagenet" if kind == "imagenet" else str(weights_path(weights))
    if source is None:
        keras.utils.set_random_seed(seed)
    elif source != "imagenet":
        check_weights_file(source)
    try:
        with warnings.catch_warnings():  # a file that does not fit is said in one line below, not in warnings
            warnings.simplefilter("ignore", UserWarning)
            return keras.applications.VGG16(include_top=False, weights=source,
                                            input_shape=(image_size, image_size, 3))
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TlkitError(f"cannot load VGG16 weights from {weights}: {first}") from None
    except Exception as exc:  # Keras's download failure is a bare Exception
        if source != "imagenet":
            raise
        raise TlkitError(f"cannot download the VGG16 ImageNet weights ({exc}); offline, give --weights PATH "
                         "or set TLKIT_WEIGHTS to a VGG16 notop weights file") from None


def check_weights_file(path: str) -> None:
    """Refuse a weights file whose arrays are not VGG16's conv base's (another model's, say).

    Raises:
        TlkitError: In one line: which file, what was expected, what was found.
    """
    import h5py

    found: list[tuple[int, ...]] = []
    try:
        with h5py.File(path, "r") as weights:
            weights.visititems(lambda _, item: found.append(item.shape) if isinstance(item, h5py.Dataset) else None)
    except OSError as exc:
        raise TlkitError(f"cannot read VGG16 weights file {path}: it is not an HDF5 weights file ({exc})") from None
    if sorted(found) != sorted(VGG16_ARRAYS):
        shown = ", ".join("x".join(map(str, shape)) or "scalar" for shape in found[:4])
        more = f" and {len(found) - 4} more" if len(found) > 4 else ""
        raise TlkitError(f"{path} does not hold VGG16 notop weights: expected {len(VGG16_ARRAYS)} arrays (13 "
                         f"convolutions' kernels and biases, the first 3x3x3x64), found {len(found)} "
                         f"({shown or 'none'}{more})")


def set_trainable_from(base, first_layer: str | None) -> None:
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
