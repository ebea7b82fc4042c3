"""TensorFlow's own calls: its devices and ``MirroredStrategy``, per-replica seeds, gradients."""

from __future__ import annotations

import logging

import tensorflow as tf

from tlkit.backends.devices import Devices

log = logging.getLogger("tlkit")

#: Whether a training step holding ``keras.ops.image.affine_transform`` compiles with XLA:
#: its image-transform op has no XLA kernel: a step holding it runs without XLA.
AFFINE_TRANSFORM_COMPILES = False

#: Apart by this much, the seeds of the replicas of a strategy never meet (a prime, above 2**20).
REPLICA_SEED_STRIDE = 1_048_583


def local_devices(mode: str) -> Devices:
    """``auto``: every GPU when there are several, else one device; ``mirrored``: every GPU, else every
    logical CPU device, under one ``MirroredStrategy``."""
    accelerators = tf.config.list_logical_devices("GPU")
    if mode == "auto" and len(accelerators) < 2:
        return Devices("none", ("default",))
    found = accelerators or tf.config.list_logical_devices("CPU")
    if len(found) < 2:
        log.warning("--distribute mirrored: only one device (%s) is visible; training on it", found[0].name)
        return Devices("none", (found[0].name,))
    strategy = tf.distribute.MirroredStrategy([device.name for device in found])
    return Devices("mirrored", tuple(device.name for device in found), engine=strategy, local_engine=strategy)


def replica_seed(seed):
    """``seed`` moved by the replica's index under a strategy of several replicas; else ``seed``."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed
    replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
    return seed + tf.stack([replica * REPLICA_SEED_STRIDE, tf.zeros_like(replica)])


def gradient(function, x):
    """``d sum(function(x)) / dx``."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(function(x))
    return tape.gradient(total, x)
