"""Training-time augmentation with Keras ImageDataGenerator's meaning.

:func:`sample_transforms` draws the random parameters exactly as
``ImageDataGenerator.get_random_transform`` does (rotation in degrees, shifts as a
fraction of the side when below 1 and in pixels otherwise, shear in degrees,
independent x/y zoom in ``[1 - zoom_range, 1 + zoom_range]``, flips half of the
time), but from a seeded ``numpy.random.Generator`` instead of numpy's global state.
:class:`AugmentedBatches` applies them with ImageDataGenerator's own
``apply_transform`` (scipy, one composed affine transform per image) and feeds a
Keras ``fit`` as a ``PyDataset``.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tlkit.config import AugmentConfig


def sample_transforms(rng: np.random.Generator, count: int, config: AugmentConfig, image_size: int) -> dict:
    """Random transform parameters for ``count`` square images of side ``image_size``.

    Returns:
        A dict of arrays of length ``count`` with ImageDataGenerator's parameter names:
        ``theta`` (degrees), ``tx`` (horizontal shift, pixels), ``ty`` (vertical shift, pixels),
        ``shear`` (degrees), ``zx``, ``zy`` (zoom factors) and ``flip_horizontal`` (bool).
        Keras's ``apply_transform`` shifts columns by ``tx``, yet its ``get_random_transform``
        draws ``tx`` from ``height_shift_range``; here ``width_shift_range`` moves images sideways.
    """

    def symmetric(limit: float) -> np.ndarray:
        return rng.uniform(-limit, limit, count) if limit else np.zeros(count)

    def shift(limit: float) -> np.ndarray:
        return symmetric(limit) * (image_size if limit < 1 else 1)

    zoom = config.zoom_range
    return {
        "theta": symmetric(config.rotation_range),
        "tx": shift(config.width_shift_range),
        "ty": shift(config.height_shift_range),
        "shear": symmetric(config.shear_range),
        "zx": rng.uniform(1 - zoom, 1 + zoom, count) if zoom else np.ones(count),
        "zy": rng.uniform(1 - zoom, 1 + zoom, count) if zoom else np.ones(count),
        "flip_horizontal": (rng.random(count) < 0.5) & config.horizontal_flip,
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


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches of decoded uint8 images, reshuffled every epoch.

    Args:
        images: ``(n, size, size, 3)`` uint8 array.
        labels: Targets aligned with ``images``.
        batch_size: Images per batch.
        config: Augmentation ranges.
        seed: Seed of the shuffling and of the transforms.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, config: AugmentConfig,
                 seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.batch_size, self.config = batch_size, config
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        batch = self.images[rows]
        params = sample_transforms(self.rng, len(rows), self.config, batch.shape[1])
        return augment_batch(batch, params, self.config), self.labels[rows]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))
