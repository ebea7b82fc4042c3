"""Batches of an array and its labels, in a new order every epoch drawn from (seed, epoch)."""

from __future__ import annotations

import keras
import numpy as np


class Batches(keras.utils.PyDataset):
    """Batches of an array (a memory-mapped image cache included) and its labels, read as they are needed.

    Args:
        images: ``(n, ...)`` array; only the rows of one batch are read at a time.
        labels: Targets aligned with ``images``.
        batch_size: Rows per batch.
        shuffle: Visit rows in a new random order every epoch (rows of a batch are read in order).
        seed: Seed of the shuffling.
        epoch: The epoch the first batches belong to (a resumed run starts past 0).
        weights: A sample weight per row (class weights), given with each batch; none if omitted.
        **kwargs: ``PyDataset``'s (``workers``: threads reading batches ahead).

    Each epoch's order and random stream are drawn from ``(seed, epoch)`` alone, ``epoch``
    counting Keras's ``on_epoch_end`` calls, so a run resumed at some epoch sees the batches an
    uninterrupted run would have seen. (On TensorFlow, Keras reads a pass ahead before training,
    so there epoch k draws from ``k + 1``: the same in both runs.) Spreading batches over several
    devices is :class:`tlkit.backends.devices.Sharded`'s job.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, epoch: int = 0, weights: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size, self.shuffle, self.seed = images, labels, batch_size, shuffle, seed
        self.weights = weights
        self.begin_epoch(epoch)

    def begin_epoch(self, epoch: int) -> None:
        """Draw ``epoch``'s order (and random stream, ``self.rng``) from the seed and the epoch."""
        self.epoch = epoch
        self.rng = np.random.default_rng([self.seed, epoch])
        self.order = self.rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        """The rows of batch ``index``, sorted so that a memory-mapped array is read forwards."""
        return np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])

    def __getitem__(self, index: int):
        return self.batch(self.rows(index))

    def batch(self, rows: np.ndarray, factors: np.ndarray | None = None) -> tuple:
        """The batch of ``rows``: ``(images, labels[, sample weights])``, each row's weight times its
        loss-weight factor in ``factors`` (none: 1)."""
        return self.assemble(rows, self.images[rows], factors)

    def assemble(self, rows: np.ndarray, images: np.ndarray, factors: np.ndarray | None = None) -> tuple:
        """``(images, labels)`` of ``rows``, plus sample weights when there are any: the rows' weights
        times ``factors``."""
        if self.weights is None and factors is None:
            return images, self.labels[rows]
        weights = np.ones(len(rows), np.float32) if self.weights is None else self.weights[rows]
        return images, self.labels[rows], weights if factors is None else weights * factors

    def on_epoch_end(self) -> None:
        self.begin_epoch(self.epoch + 1)

