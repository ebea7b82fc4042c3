"""Training-time augmentation with Keras ImageDataGenerator's meaning, on the device or on the CPU.

Both paths draw the parameters as ``ImageDataGenerator.get_random_transform`` does
(rotation in degrees, shifts as a fraction of the side when below 1 and in pixels
otherwise, shear in degrees, independent x/y zoom in ``[1 - zoom_range, 1 + zoom_range]``,
horizontal flips half of the time) and compose them into one affine transform per
image, as ImageDataGenerator does:

- ``device`` (the default): :class:`RandomAffine`, a Keras layer that samples with
  ``keras.random`` and warps the whole batch with ``keras.ops.image.affine_transform``
  inside the training step, on any backend. It sits in front of the classifier only
  while training; the saved model never contains it.
- ``cpu``: :class:`AugmentedBatches`, a ``PyDataset`` that samples with numpy
  (:func:`sample_transforms`) and applies ImageDataGenerator's own ``apply_transform``
  (scipy, one image at a time): the classic pipeline, kept for comparison and parity.

Test-time augmentation (``--tta``) uses fixed views instead (:func:`tta_views`): the image,
its mirror image, then small shifts, warped with the same ``affine_transform``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tlkit import backends
from tlkit.backends.devices import ReplicaSeedGenerator
from tlkit.config import TTA_SHIFT, AugmentConfig
from tlkit.data.batches import Batches
from tlkit.errors import TlkitError


def sample_transforms(rng: np.random.Generator, count: int, config: AugmentConfig, image_size: int) -> dict:
    """Random transform parameters for ``count`` square images of side ``image_size``.

    Returns:
        A dict of arrays of length ``count`` with ImageDataGenerator's parameter names:
        ``theta`` (degrees), ``tx`` (horizontal shift, pixels), ``ty`` (vertical shift, pixels),
        ``shear`` (degrees), ``zx``, ``zy`` (zoom factors) and ``flip_horizontal`` (bool).
        Keras's ``apply_transform`` shifts columns by ``tx``, yet its ``get_random_transform``
        draws ``tx`` from ``height_shift_range``; here ``width_shift_range`` moves images sideways.
    """

    return draw_transforms(lambda low, high: rng.uniform(low, high, count), config, image_size)


def draw_transforms(uniform, config: AugmentConfig, image_size: int) -> dict:
    """ImageDataGenerator's parameter distributions, drawn with ``uniform(low, high)`` (one value per image).

    Shared by the CPU path (numpy) and the device path (``keras.random``), so both draw alike.
    A shift range of 1 or more is drawn uniformly in pixels (ImageDataGenerator draws whole pixels
    from an integer range).
    """

    def shift(limit: float):
        return uniform(-limit, limit) * (image_size if limit < 1 else 1)

    zoom = config.zoom_range
    return {
        "theta": uniform(-config.rotation_range, config.rotation_range),
        "tx": shift(config.width_shift_range),
        "ty": shift(config.height_shift_range),
        "shear": uniform(-config.shear_range, config.shear_range),
        "zx": uniform(1 - zoom, 1 + zoom),
        "zy": uniform(1 - zoom, 1 + zoom),
        "flip_horizontal": uniform(0.0, 1.0) < (0.5 if config.horizontal_flip else 0.0),
    }


def _image_data_generator(config: AugmentConfig):
    """Keras's legacy ImageDataGenerator, which carries the reference ``apply_transform``."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator(fill_mode=config.fill_mode, cval=0.0)


def augment_batch(images: np.ndarray, params: dict, config: AugmentConfig) -> np.ndarray:
    """Apply sampled transforms to a uint8 or float batch; returns float32 pixels in [0, 255]."""
    generator = _image_data_generator(config)
    out = images.astype(np.float32)
    for i in range(len(out)):
        out[i] = generator.apply_transform(out[i], {name: values[i] for name, values in params.items()})
    return out


class AugmentedBatches(Batches):
    """Shuffled training batches augmented on the CPU by ImageDataGenerator's ``apply_transform``.

    Args:
        images: ``(n, size, size, 3)`` uint8 array.
        labels: Targets aligned with ``images``.
        batch_size: Images per batch.
        config: Augmentation ranges.
        seed: Seed of the shuffling and of the transforms.
        epoch: The epoch the first batches belong to (a resumed run starts past 0).
        weights: A sample weight per row, given with each batch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, config: AugmentConfig, *,
                 seed: int, epoch: int = 0, weights: np.ndarray | None = None) -> None:
        # one worker: each epoch's transforms come from one random stream, drawn in batch order
        super().__init__(images, labels, batch_size, shuffle=True, seed=seed, epoch=epoch, weights=weights)
        self.config = config

    def batch(self, rows: np.ndarray, factors: np.ndarray | None = None) -> tuple:
        images = self.images[rows]
        params = sample_transforms(self.rng, len(rows), self.config, images.shape[1])
        return self.assemble(rows, augment_batch(images, params, self.config), factors)


def affine_matrices(params: dict, image_size: int):
    """ImageDataGenerator's transform, as ``(n, 8)`` projective rows for ``ops.image.affine_transform``.

    Composes rotation, shift, shear and zoom about the image centre, then the horizontal
    flip, into one matrix per image that maps each output pixel ``(x, y)`` to the input
    point it samples (the direction both ImageDataGenerator and Keras use).

    Args:
        params: Tensors or arrays of length n, keyed as :func:`sample_transforms` returns them.
        image_size: Side of the square images.
    """
    theta = ops.deg2rad(ops.cast(params["theta"], "float32"))
    shear = ops.deg2rad(ops.cast(params["shear"], "float32"))
    tx, ty = ops.cast(params["tx"], "float32"), ops.cast(params["ty"], "float32")
    zx, zy = ops.cast(params["zx"], "float32"), ops.cast(params["zy"], "float32")
    flip = ops.cast(params["flip_horizontal"], "float32")
    cos, sin = ops.cos(theta), ops.sin(theta)
    # rotation @ shift @ shear @ zoom, multiplied out: [[a, b, c], [d, e, f], [0, 0, 1]]
    a, b = cos * zx, (-cos * ops.sin(shear) - sin * ops.cos(shear)) * zy
    d, e = sin * zx, (-sin * ops.sin(shear) + cos * ops.cos(shear)) * zy
    c, f = cos * tx - sin * ty, sin * tx + cos * ty
    # about the centre: offset @ M @ reset, with o the centre pixel's coordinate
    o = image_size / 2 - 0.5
    c, f = c + o - o * (a + b), f + o - o * (d + e)
    # then flip the output left-right: x -> (size - 1) - x, that is M @ F
    last = image_size - 1.0
    c = c + flip * a * last
    f = f + flip * d * last
    a, d = a * (1 - 2 * flip), d * (1 - 2 * flip)
    zero = ops.zeros_like(a)
    return ops.stack([a, b, c, d, e, f, zero, zero], axis=1)


@keras.saving.register_keras_serializable(package="tlkit")
class RandomAffine(keras.layers.Layer):
    """ImageDataGenerator's random transform of a batch, computed on the device while training.

    Args:
        rotation_range, width_shift_range, height_shift_range, shear_range, zoom_range,
        horizontal_flip, fill_mode: As in :class:`~tlkit.config.AugmentConfig`.
        seed: Seed of the layer's random stream.

    Inputs are images ``(n, size, size, 3)`` in [0, 255]; outputs are float32 of the same
    shape. Outside training the layer passes images through unchanged.
    """

    def __init__(self, *, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, shear_range=0.0,
                 zoom_range=0.0, horizontal_flip=False, fill_mode="nearest", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.config = AugmentConfig(rotation_range, width_shift_range, height_shift_range, shear_range,
                                    zoom_range, horizontal_flip, fill_mode)
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)  # on several devices, each draws its own transforms
        self.supports_jit = backends.current().AFFINE_TRANSFORM_COMPILES  # TensorFlow's op has no XLA kernel

    @classmethod
    def from_augment_config(cls, config: AugmentConfig, seed: int | None = None) -> RandomAffine:
        """The layer for an :class:`~tlkit.config.AugmentConfig`."""
        return cls(**vars(config), seed=seed)

    def sample(self, count, image_size: int) -> dict:
        """Random parameters for ``count`` images, distributed as :func:`sample_transforms` draws them."""
        return draw_transforms(lambda low, high: keras.random.uniform((count,), low, high, seed=self.seed_generator),
                               self.config, image_size)

    def call(self, images, training=None):
        images = ops.cast(images, "float32")
        if not training:
            return images
        size = images.shape[1]
        matrices = affine_matrices(self.sample(ops.shape(images)[0], size), size)
        return ops.image.affine_transform(images, matrices, interpolation="bilinear",
                                          fill_mode=self.config.fill_mode, fill_value=0.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), **vars(self.config), "seed": self.seed}


class AlwaysAugment(keras.layers.Layer):
    """A :class:`RandomAffine` applied at prediction too: the random copies of offline augmentation
    (``--augmented-copies``). Its ``call`` takes no ``training`` argument, so a model's prediction cannot
    switch the transform off, as it would for a layer called with ``training=True`` inside a functional model."""

    def __init__(self, augment: RandomAffine, **kwargs) -> None:
        super().__init__(**kwargs)
        self.augment = augment
        self.supports_jit = augment.supports_jit

    def call(self, images):
        return self.augment(images, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape


#: Directions of the shifted test-time views: right, left, down, up, then the diagonals.
_TTA_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1))
#: Every test-time view, in order: ``(x shift, y shift, mirrored)``, shifts in fractions of the side.
TTA_VIEWS = ((0.0, 0.0, False), (0.0, 0.0, True),
             *((dx * TTA_SHIFT, dy * TTA_SHIFT, mirrored) for dx, dy in _TTA_DIRECTIONS for mirrored in (False, True)))


def tta_views(count: int) -> tuple[tuple[float, float, bool], ...]:
    """The first ``count`` of :data:`TTA_VIEWS`: the image itself, its mirror image, then shifts by
    :data:`~tlkit.config.TTA_SHIFT` of the side in eight directions, plain then mirrored.

    Raises:
        TlkitError: If ``count`` is not between 1 and ``len(TTA_VIEWS)``.
    """
    if not 1 <= count <= len(TTA_VIEWS):
        raise TlkitError(f"invalid tta: {count!r}; expected an integer from 1 (no augmentation) to {len(TTA_VIEWS)}")
    return TTA_VIEWS[:count]


def view_images(images: np.ndarray, view: tuple[float, float, bool], fill_mode: str) -> np.ndarray:
    """``images`` (``(n, size, size, 3)``) as one test-time view sees them: shifted by whole pixels,
    mirrored, the uncovered border filled by ``fill_mode``; the plain view returns ``images`` as given."""
    dx, dy, mirrored = view
    if (dx, dy, mirrored) == (0.0, 0.0, False):
        return images
    count, size = len(images), images.shape[1]
    params = {"theta": np.zeros(count), "shear": np.zeros(count), "zx": np.ones(count), "zy": np.ones(count),
              "tx": np.full(count, round(dx * size)), "ty": np.full(count, round(dy * size)),
              "flip_horizontal": np.full(count, mirrored)}
    warped = ops.image.affine_transform(ops.convert_to_tensor(images, "float32"), affine_matrices(params, size),
                                        interpolation="bilinear", fill_mode=fill_mode, fill_value=0.0)
    return ops.convert_to_numpy(warped)
