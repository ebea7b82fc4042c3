import keras
import numpy as np
import pytest

from tlkit.augment import AugmentedBatches, RandomAffine, affine_matrices, augment_batch, sample_transforms
from tlkit.config import AugmentConfig


def test_parameters_stay_within_and_cover_their_ranges():
    config = AugmentConfig(rotation_range=30, width_shift_range=0.1, height_shift_range=0.2, shear_range=10,
                           zoom_range=0.25, horizontal_flip=True)
    p = sample_transforms(np.random.default_rng(0), 20000, config, image_size=100)
    for name, low, high in (("theta", -30, 30), ("tx", -10, 10), ("ty", -20, 20), ("shear", -10, 10),
                            ("zx", 0.75, 1.25), ("zy", 0.75, 1.25)):
        values = p[name]
        assert values.min() >= low and values.max() <= high, name
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low), name
        assert abs(values.mean() - (low + high) / 2) < 0.02 * (high - low), name  # uniform, centred
    assert abs(p["flip_horizontal"].mean() - 0.5) < 0.02
    assert abs(np.corrcoef(p["zx"], p["zy"])[0, 1]) < 0.05  # x and y zoom drawn independently


def test_shift_of_one_or_more_is_in_pixels():
    p = sample_transforms(np.random.default_rng(0), 5000, AugmentConfig(width_shift_range=3.0), image_size=100)
    assert p["tx"].min() >= -3 and p["tx"].max() <= 3 and p["tx"].max() > 2.9


def test_all_ranges_zero_pass_images_through_unchanged():
    config = AugmentConfig(0, 0, 0, 0, 0, False)
    images = np.random.default_rng(1).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    params = sample_transforms(np.random.default_rng(0), 4, config, 24)
    assert np.array_equal(augment_batch(images, params, config), images.astype(np.float32))


def _params(**changes):
    return {"theta": [0], "tx": [0], "ty": [0], "shear": [0], "zx": [1], "zy": [1], "flip_horizontal": [False],
            **{name: [value] for name, value in changes.items()}}


def test_flip_shifts_and_fill_modes_do_as_named():
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[0, :, :4] = 200  # left half bright
    flipped = augment_batch(image, _params(flip_horizontal=True), AugmentConfig())
    assert flipped[0, :, 4:].min() == 200 and flipped[0, :, :4].max() == 0
    sideways = _params(tx=4)  # a width shift: content moves 4 pixels left, the right half comes from outside
    assert augment_batch(image, sideways, AugmentConfig(fill_mode="constant"))[0, 3, :, 0].tolist() == [0] * 8
    assert augment_batch(image, sideways, AugmentConfig(fill_mode="nearest"))[0, 3, :, 0].tolist() == [0] * 8
    wrapped = augment_batch(image, sideways, AugmentConfig(fill_mode="wrap"))[0, 3, :, 0]
    assert wrapped[:4].max() == 0 and wrapped[4:7].min() == 200  # the bright half comes round (scipy's wrap)
    assert augment_batch(image, sideways, AugmentConfig(fill_mode="reflect"))[0, 3, :, 0].tolist() == [0] * 8
    bright_right = augment_batch(image, _params(tx=-4), AugmentConfig(fill_mode="reflect"))[0, 3, :, 0]
    assert bright_right.tolist() == [200] * 8  # the bright half moves right and is mirrored into the gap
    vertical = augment_batch(image, _params(ty=4), AugmentConfig(fill_mode="constant"))
    assert vertical[0, :4, :4].min() == 200 and vertical[0, 4:].max() == 0  # a height shift moves rows


def test_batches_visit_every_image_once_per_epoch():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(8, 1).repeat(8, 2).repeat(3, 3)
    labels = np.arange(10)
    batches = AugmentedBatches(images, labels, 4, AugmentConfig(0, 0, 0, 0, 0, False), seed=0)
    assert len(batches) == 3
    for _ in range(2):
        seen = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert sorted(seen) == list(range(10))
        x, y = batches[0]
        assert np.array_equal(x[:, 0, 0, 0], y.astype(np.float32))  # labels stay with their images
        batches.on_epoch_end()


# --- the device path: RandomAffine ------------------------------------------------------------------------------


def _smooth_images(count, size, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (count, size, size, 3))
    return np.stack([gaussian_filter(image, (2, 2, 0)) for image in noise]).astype(np.float32)


def test_device_parameters_stay_within_and_cover_their_ranges():
    layer = RandomAffine(rotation_range=30, width_shift_range=0.1, height_shift_range=0.2, shear_range=10,
                         zoom_range=0.25, horizontal_flip=True, seed=3)
    p = {name: np.asarray(keras.ops.convert_to_numpy(v)) for name, v in layer.sample(20000, 100).items()}
    for name, low, high in (("theta", -30, 30), ("tx", -10, 10), ("ty", -20, 20), ("shear", -10, 10),
                            ("zx", 0.75, 1.25), ("zy", 0.75, 1.25)):
        values = p[name]
        assert values.min() >= low and values.max() <= high, name
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low), name
        assert abs(values.mean() - (low + high) / 2) < 0.02 * (high - low), name
        counts, _ = np.histogram(values, bins=10, range=(low, high))
        assert counts.min() > 0.8 * counts.mean(), name  # uniform over the range
    assert abs(p["flip_horizontal"].mean() - 0.5) < 0.02
    assert abs(np.corrcoef(p["zx"], p["zy"])[0, 1]) < 0.05
    assert abs(np.corrcoef(p["theta"], p["shear"])[0, 1]) < 0.05  # parameters drawn independently


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect"])
def test_device_transform_equals_image_data_generator(fill_mode):
    config = AugmentConfig(fill_mode=fill_mode)  # every classic range at once
    images = _smooth_images(12, 40)
    params = sample_transforms(np.random.default_rng(1), 12, config, 40)
    reference = augment_batch(images, params, config)  # Keras's own ImageDataGenerator.apply_transform
    ours = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        images, affine_matrices(params, 40), interpolation="bilinear", fill_mode=fill_mode))
    np.testing.assert_allclose(ours, reference, atol=0.01)


def test_device_constant_fill_agrees_away_from_the_border():
    config = AugmentConfig(fill_mode="constant")
    images = _smooth_images(12, 40, seed=2)
    params = sample_transforms(np.random.default_rng(2), 12, config, 40)
    reference = augment_batch(images, params, config)
    ours = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        images, affine_matrices(params, 40), interpolation="bilinear", fill_mode="constant"))
    from scipy.ndimage import binary_dilation

    filled = np.stack([binary_dilation((r == 0).all(-1), iterations=2) for r in reference])
    assert filled.mean() > 0.05 and (ours[filled] == 0).mean() > 0.5  # both fill with 0 outside the image
    # scipy and Keras blend the constant into the image's edge differently; everywhere else they agree
    np.testing.assert_allclose(ours[~filled], reference[~filled], atol=0.01)


def test_device_layer_is_identity_at_rest_and_with_zero_ranges():
    images = _smooth_images(4, 32)
    augmenting = RandomAffine.from_augment_config(AugmentConfig(), seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmenting(images, training=False)), images)
    still = RandomAffine.from_augment_config(AugmentConfig(0, 0, 0, 0, 0, False), seed=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(still(images, training=True)), images, atol=1e-3)
    moved = keras.ops.convert_to_numpy(augmenting(images, training=True))
    assert moved.shape == images.shape and np.abs(moved - images).mean() > 5


def test_device_flip_and_fill_modes_do_as_named():
    image = np.zeros((1, 8, 8, 3), np.float32)
    image[0, :, :4] = 200

    def warp(fill_mode, **changes):
        matrices = affine_matrices(_params(**changes), 8)
        return keras.ops.convert_to_numpy(
            keras.ops.image.affine_transform(image, matrices, interpolation="bilinear", fill_mode=fill_mode))[0, 3, :, 0]

    assert warp("nearest", flip_horizontal=True).tolist() == [0] * 4 + [200] * 4
    assert warp("constant", tx=4).tolist() == [0] * 8
    assert warp("nearest", tx=-4).tolist() == [200] * 8
    assert warp("reflect", tx=-4).tolist() == [200] * 8
    assert warp("wrap", tx=4).tolist() == [0] * 4 + [200] * 4


def test_device_layer_config_round_trips():
    layer = RandomAffine.from_augment_config(AugmentConfig(rotation_range=12, fill_mode="reflect"), seed=5)
    again = RandomAffine.from_config(layer.get_config())
    assert again.config == layer.config and again.seed == 5
