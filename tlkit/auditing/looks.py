"""How each image looks, apart from what it shows: a drawing, a render or noise among photos.

VGG16's first three blocks respond to colours, edges and textures; the mean and spread of each of their
channels (the texture statistics of style transfer: Gatys et al. 2016) describe an image's look whatever it
depicts, where the pooled block5 features describe what it depicts. An image of another kind than its class's
others is far from them in these statistics. At :data:`LOOK_SIZE` pixels they cost a small fraction of an
extraction, and are cached beside the features.

The score: the statistics, log-compressed and robustly standardised (median, 1.4826 MAD), are projected on
their :data:`LOOK_DIMS` principal directions; within each class, an image's Mahalanobis distance from the
class's centre (centre and covariance estimated again on the :data:`CORE` of the class nearest the first
estimate, the covariance shrunk towards its diagonal for small classes), as a robust z-score among the class's
own distances.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from tlkit.auditing.similarity import median_and_spread

#: Side the images are scaled to (area averaging) before VGG16's first blocks read them.
LOOK_SIZE = 32
#: The layers whose channels' mean and spread make an image's look.
LOOK_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3")
#: Principal directions of the looks that the distances are measured in.
LOOK_DIMS = 16
#: A class with fewer images than this is not scored: too few to know how its images look.
LOOK_MIN_CLASS = 3 * LOOK_DIMS
#: The fraction of a class, nearest its centre, that its centre and covariance are estimated from the second time
#: (a reweighted estimate: the images far from the rest do not widen the yardstick they are measured with).
CORE = 0.75


def look_statistics(decoded: Iterable[np.ndarray], weights: str) -> np.ndarray:
    """The mean and spread of each channel of :data:`LOOK_LAYERS`, one row per image of ``decoded`` (chunks of
    RGB images, 0-255), for VGG16 with ``weights``."""
    import keras
    from keras import ops

    from tlkit.backbone import build_base
    from tlkit.model import VGGPreprocess

    base = build_base(weights, LOOK_SIZE)
    outputs = [base.get_layer(name).output for name in LOOK_LAYERS]
    summary = ops.concatenate([part for out in outputs for part in (ops.mean(out, axis=(1, 2)),
                                                                    ops.std(out, axis=(1, 2)))], axis=1)
    inputs = keras.Input((LOOK_SIZE, LOOK_SIZE, 3))
    model = keras.Model(inputs, keras.Model(base.input, summary)(VGGPreprocess()(inputs)))
    rows = [model.predict(_scaled(chunk), batch_size=256, verbose=0) for chunk in decoded if len(chunk)]
    width = 2 * sum(base.get_layer(name).output.shape[-1] for name in LOOK_LAYERS)
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)


def _scaled(chunk: np.ndarray) -> np.ndarray:
    """RGB images scaled to :data:`LOOK_SIZE` by area averaging (the model preprocesses them itself)."""
    return np.stack([np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize(
        (LOOK_SIZE, LOOK_SIZE), Image.Resampling.BOX), np.float32) for image in chunk])


def look_scores(statistics: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """How far each image's look is from its class's others, as a robust z-score within the class (0 for the
    images of a class smaller than :data:`LOOK_MIN_CLASS`)."""
    scores = np.zeros(len(labels))
    if len(labels) < LOOK_MIN_CLASS:  # no class can be judged
        return scores
    signed = np.sign(statistics) * np.log1p(np.abs(statistics))
    median, spread = median_and_spread(signed)
    z = (signed - median) / spread
    centred = z - z.mean(axis=0)
    directions = np.linalg.svd(centred, full_matrices=False)[2][:LOOK_DIMS]
    projected = centred @ directions.T
    for c in range(classes):
        mine = labels == c
        if mine.sum() < LOOK_MIN_CLASS:
            continue
        distance = _distances(projected[mine], np.ones(int(mine.sum()), bool))
        distance = _distances(projected[mine], distance <= np.quantile(distance, CORE))
        middle, spread = median_and_spread(distance)
        scores[mine] = (distance - middle) / spread
    return scores


def _distances(points: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Each point's Mahalanobis distance from the mean of the ``core`` points, in their covariance."""
    offset = points - points[core].mean(axis=0)
    sample = np.cov(offset[core].T)
    shrink = min(1.0, points.shape[1] / core.sum())  # a few points' covariance, pulled towards its diagonal
    covariance = (1 - shrink) * sample + shrink * np.diag(np.diag(sample)) + 1e-6 * np.eye(points.shape[1])
    return np.sqrt(np.einsum("ij,jk,ik->i", offset, np.linalg.inv(covariance), offset))
