"""The devices a job runs on, resolved once at its entry point and passed down.

``runtime.distribute`` (``--distribute``) chooses:

- ``none``: one device.
- ``mirrored``: every device of this machine (its accelerators, or else every CPU device the
  backend shows) holds a replica of the model and computes its part of each batch; their
  gradients are combined before every update. TensorFlow: ``tf.distribute.MirroredStrategy``;
  JAX: ``keras.distribution.DataParallel``.
- ``multiworker``: one process per machine (JAX), each started with Keras's
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's ``host:port``),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``; all devices of all
  processes form one data-parallel mesh. Each process feeds its slice of every batch, decodes and
  extracts with its own devices, and only process 0 writes the run folder. TensorFlow's
  ``MultiWorkerMirroredStrategy`` does not work with Keras 3 (keras-team/keras#20585), so it is refused.
- ``auto`` (the default): ``mirrored`` when this machine shows several accelerators, else ``none``.

``batch_size`` stays the global batch. Every device takes an equal part of each batch: a batch the
devices do not divide is padded with copies of its last row that weigh zero in the loss, and its real
rows' weights are scaled by ``padded / real``, so that the gradient is the mean over the real rows, as
on one device (:class:`Sharded`). Validation batches are scaled by one factor for the whole epoch, and
accuracy is weighed too (``compile_model(weighted_accuracy=True)``), so that Keras's per-epoch
validation figures are one device's.

Before training, the processes of a job agree (:func:`all_or_none`): all go on, or all stop with the
same error.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: Bytes of the error message one process tells the others in :func:`all_or_none`.
MESSAGE_BYTES = 1024
#: Digests (SHA-256) the processes compare in :func:`all_or_none`, at most.
MAX_DIGESTS = 4


@dataclass(frozen=True)
class Devices:
    """The devices a job runs on, and the engine that spreads work over them.

    Attributes:
        mode: ``none``, ``mirrored`` or ``multiworker`` (``auto`` resolved).
        names: Every device of the job, all processes' included.
        process: This process's index (0 writes the run folder).
        processes: Processes in the job.
        engine: ``tf.distribute.MirroredStrategy`` or ``keras.distribution.DataParallel`` over every
            device, or ``None`` on one device.
        local_engine: The same over this process's devices only (extraction, scoring): ``engine``
            itself in one process.
    """

    mode: str
    names: tuple[str, ...]
    process: int = 0
    processes: int = 1
    engine: Any = field(default=None, repr=False)
    local_engine: Any = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """Devices of the whole job."""
        return len(self.names)

    @property
    def local_count(self) -> int:
        """Devices of this process."""
        return self.count // self.processes

    @property
    def chief(self) -> bool:
        """True in the process that writes the run (the only one, unless ``multiworker``)."""
        return self.process == 0

    def scope(self):
        """Models built (and loaded) inside are replicated over every device of the job."""
        return nullcontext() if self.engine is None else self.engine.scope()

    def local_scope(self):
        """Models built inside are replicated over this process's devices (for inference)."""
        return nullcontext() if self.local_engine is None else self.local_engine.scope()

    def padded(self, count: int) -> int:
        """The rows a batch of ``count`` rows becomes: the next multiple of :attr:`count`."""
        return round_up(count, self.count)

    def epoch_factor(self, rows: int, batch_size: int) -> float:
        """The epoch's padded rows over its real rows, for ``rows`` rows in batches of ``batch_size``:
        the one factor of every real row that makes Keras's epoch mean (each batch weighed by its
        rows, padding included) the real rows' mean (validation; see :class:`Sharded`)."""
        batches = -(-rows // batch_size)
        last = rows - (batches - 1) * batch_size
        return ((batches - 1) * self.padded(batch_size) + self.padded(last)) / rows

    def pad(self, rows: np.ndarray, factor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The rows of one batch padded to a multiple of :attr:`count` with copies of the last (factor 0),
        and each row's loss-weight factor: ``factor``, by default ``padded / len(rows)`` (the batch's
        mean loss is then its real rows' mean)."""
        padded = pad_rows(rows, self.count)
        factors = np.zeros(len(padded), dtype=np.float32)
        factors[:len(rows)] = len(padded) / len(rows) if factor is None else factor
        return padded, factors

    def process_slice(self, padded: int) -> slice:
        """The consecutive rows of a padded batch of ``padded`` rows that this process feeds."""
        size = padded // self.processes
        return slice(self.process * size, (self.process + 1) * size)

    def local_copy(self, model):
        """``model``, or in several processes a copy of it on this process's devices.

        A model trained across processes lives on all of them: each process can read its weights,
        but predicting with it would give outputs spread over every process. Inference after
        training uses this copy instead.
        """
        if self.processes == 1:
            return model
        with self.local_scope():
            copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy

    def describe(self) -> dict:
        """A JSON-ready record of the devices, for the run's provenance."""
        return {"mode": self.mode, "devices": self.count, "processes": self.processes, "names": list(self.names)}


def resolve(mode: str) -> Devices:
    """The :class:`Devices` of ``mode`` (``auto``, ``none``, ``mirrored``, ``multiworker``) on this backend.

    Called once, at the entry point of a job (``train``, ``extract``, ``cross_validate``), whose
    functions pass the result down.

    Raises:
        TlkitError: If the backend cannot run ``mode`` (PyTorch: more than one device; TensorFlow:
            several processes), or a ``multiworker`` process lacks its cluster settings.
    """
    from tlkit import backends

    if mode == "none":
        return Devices("none", ("default",))
    backend = backends.current()
    if mode == "multiworker":
        if not hasattr(backend, "cluster_devices"):
            raise TlkitError("--distribute multiworker needs KERAS_BACKEND=jax: Keras 3 does not work with "
                             "TensorFlow's MultiWorkerMirroredStrategy (keras-team/keras#20585)")
        found = backend.cluster_devices()
    else:
        found = backend.local_devices(mode)
    if found.count > 1:
        log.info("%s: %d devices in %d process(es) (%s); this is process %d", found.mode, found.count,
                 found.processes, ", ".join(found.names), found.process)
    return found


def round_up(count: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``count``."""
    return -(-count // multiple) * multiple


def pad_rows(rows: np.ndarray, multiple: int) -> np.ndarray:
    """``rows`` followed by copies of its last row, up to a multiple of ``multiple`` rows."""
    missing = round_up(len(rows), multiple) - len(rows)
    return rows if missing == 0 else np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)])


def sharded(batches, devices: Devices, whole_epoch: bool = False):
    """``batches`` (a :class:`tlkit.data.batches.Batches`) as the devices take them: itself on one device,
    else a :class:`Sharded` view."""
    return batches if devices.count == 1 else Sharded(batches, devices, whole_epoch)


class Sharded(keras.utils.PyDataset):
    """The batches of a :class:`tlkit.data.batches.Batches` spread over several devices.

    Each batch is padded to a multiple of the devices (:meth:`Devices.pad`) and this process's
    consecutive slice of it fed (all of it in one process). The whole padded batch is assembled first,
    so augmentation drawn for it is the same whichever process takes which rows.

    Args:
        batches: The batches of one device.
        devices: The devices of the job.
        whole_epoch: Scale the real rows of every batch by one factor, the epoch's padded rows over its
            real rows, so that Keras's mean over the epoch (each batch weighed by its rows, padding
            included) is the real rows' mean: for validation. Otherwise each batch's real rows are scaled
            by its own padded / real, so that each step's gradient is the mean over its real rows.
    """

    def __init__(self, batches, devices: Devices, whole_epoch: bool = False) -> None:
        super().__init__(workers=batches.workers)
        self.batches, self.devices = batches, devices
        rows = len(batches.images)
        self.factor = devices.epoch_factor(rows, batches.batch_size) if whole_epoch and rows else None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        rows, factors = self.devices.pad(self.batches.rows(index), self.factor)
        mine = self.devices.process_slice(len(rows))
        return tuple(part[mine] for part in self.batches.batch(rows, factors))

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()


def all_or_none(devices: Devices, error: str | None, digests: dict[str, str] | None) -> None:
    """Make every process of a job go on together, or stop together with the same error.

    Each process says whether its preparation failed (``error``) or what it prepared (``digests``:
    up to :data:`MAX_DIGESTS` of name -> SHA-256 hex digest, such as its dataset's); if any failed,
    or a digest differs between processes, every process raises the same error. (A process that
    stopped alone would leave the others waiting for it in their first collective step.)
    One process: nothing to do.

    Raises:
        TlkitError: The first failed process's error, or naming what differs.
    """
    if devices.processes == 1:
        return
    from tlkit.backends.jax import gather

    said = (error or "").encode()[:MESSAGE_BYTES - 1]
    names = sorted(digests or {})
    record = np.zeros(MESSAGE_BYTES + 32 * MAX_DIGESTS, dtype=np.uint8)  # the same size in every process
    record[0], record[1:1 + len(said)] = bool(error), np.frombuffer(said, np.uint8)
    for position, name in enumerate(names):
        record[MESSAGE_BYTES + 32 * position:MESSAGE_BYTES + 32 * (position + 1)] = np.frombuffer(
            bytes.fromhex(digests[name]), np.uint8)
    everyone = gather(record)  # (processes, len(record))
    for process, theirs in enumerate(everyone):
        if theirs[0]:
            message = bytes(theirs[1:MESSAGE_BYTES]).rstrip(b"\0").decode(errors="replace")
            raise TlkitError(message if process == devices.process else f"process {process} of the job: {message}")
    for position, name in enumerate(names):
        part = slice(MESSAGE_BYTES + 32 * position, MESSAGE_BYTES + 32 * (position + 1))
        if len({bytes(theirs[part]) for theirs in everyone}) > 1:
            raise TlkitError(f"--distribute multiworker: the processes differ in {name}; every process must run "
                             "the same command on the same files")


class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """Keras's seed generator, except that its draws differ between the replicas of a TensorFlow strategy.

    Under ``tf.distribute.MirroredStrategy`` every replica reads the same mirrored seed state, so
    a plain ``SeedGenerator`` hands every replica the same random numbers (the same augmentations for
    the same positions of each device's share of a batch); this one folds the replica's index into
    the seed (:func:`tlkit.backends.tensorflow.replica_seed`). Elsewhere it is the plain generator (on
    JAX one program draws for the whole batch).
    """

    def next(self, ordered: bool = True):
        seed = super().next(ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        from tlkit.backends.tensorflow import replica_seed

        return replica_seed(seed)
