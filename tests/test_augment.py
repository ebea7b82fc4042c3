import numpy as np

from tlkit.augment import AugmentedBatches, augment_batch, sample_transforms
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
