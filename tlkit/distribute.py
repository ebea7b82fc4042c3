"""Training on several devices, and on several machines, with each Keras backend's own engine.

``train.distribute`` (``--distribute``) chooses:

- ``none``: one device.
- ``mirrored``: every device of this machine (its accelerators, or else every CPU device the
  backend shows) holds a replica of the model and computes its share of each batch; their
  gradients are combined before every update. TensorFlow: ``tf.distribute.MirroredStrategy``;
  JAX: ``keras.distribution.DataParallel``.
- ``multiworker``: one process per machine (JAX), each started with Keras's
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's ``host:port``),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``; all devices of all
  processes form one data-parallel mesh (``keras.distribution.initialize`` + ``DataParallel``).
  Each process feeds its share of every batch, decodes and extracts with its own devices, and only
  process 0 writes the run folder. TensorFlow's ``MultiWorkerMirroredStrategy`` does not work with
  Keras 3 (keras-team/keras#20585), so it is refused.
- ``auto`` (the default): ``mirrored`` when this machine shows several accelerators, else ``none``.

``batch_size`` stays the global batch. Every device takes an equal share of each batch: a batch
the devices do not divide is padded with copies of its last row that weigh zero in the loss, and
its real rows' weights are scaled by ``padded / real``, so that the gradient is the mean over the
real rows, as on one device. Validation batches are scaled by one factor for the whole epoch, and
accuracy is weighed too (``compile_model(weighted_accuracy=True)``), so that Keras's per-epoch
validation figures are one device's (see :class:`tlkit.data.Batches`).

Before training, the processes of a job :func:`settle`: all go on, or all stop with the same error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: The environment variables a ``multiworker`` process reads (Keras's own names).
CLUSTER_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
#: Rows handed to one ``model.predict`` call by :func:`predict_rows` (memory stays bounded by it).
PREDICT_CHUNK = 1024
#: Bytes of the error message one process tells the others in :func:`settle`.
SETTLE_BYTES = 1024
#: Digests (SHA-256) the processes compare in :func:`settle`, at most.
SETTLE_DIGESTS = 4
#: Apart by this much, the seeds of the replicas of a TensorFlow strategy never meet (a prime, above 2**20).
REPLICA_SEED_STRIDE = 1_048_583


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
        rows, padding included) the real rows' mean (validation; see :meth:`share`)."""
        batches = -(-rows // batch_size)
        last = rows - (batches - 1) * batch_size
        return ((batches - 1) * self.padded(batch_size) + self.padded(last)) / rows

    def share(self, rows: np.ndarray, factor: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows of one batch that this process feeds, and their loss-weight factors.

        The batch is padded to a multiple of :attr:`count` with copies of its last row (factor 0),
        the real rows getting ``factor``, by default ``padded / len(rows)`` (the batch's mean loss
        is then its real rows' mean); in several processes each feeds its consecutive slice. On one
        device: ``(rows, None)``.
        """
        if self.count == 1:
            return rows, None
        padded = self.padded(len(rows))
        factors = np.zeros(padded, dtype=np.float32)
        factors[:len(rows)] = padded / len(rows) if factor is None else factor
        rows = np.concatenate([rows, np.repeat(rows[-1:], padded - len(rows), axis=0)])
        mine = self.part(padded)
        return rows[mine], factors[mine]

    def part(self, padded: int) -> slice:
        """The consecutive rows of a padded batch of ``padded`` rows that this process feeds."""
        size = padded // self.processes
        return slice(self.process * size, (self.process + 1) * size)

    def localized(self, model: keras.Model) -> keras.Model:
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


def predict_rows(model: keras.Model, rows, batch_size: int, devices: Devices | None = None) -> np.ndarray:
    """``model.predict`` over ``rows`` (an array, a memory-mapped one included), read a chunk at a time.

    With several local devices (``model`` built in ``devices.local_scope()``) each chunk is padded
    to a multiple of them, and the batch size rounded up to one, so that every device gets an equal
    share; the padding is cut off again.
    """
    multiple = 1 if devices is None else devices.local_count
    batch = round_up(batch_size, multiple)
    outputs = []
    for start in range(0, len(rows), PREDICT_CHUNK):
        chunk = np.asarray(rows[start:start + PREDICT_CHUNK])
        count = len(chunk)
        padded = round_up(count, multiple)
        if padded > count:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padded - count, axis=0)])
        with nullcontext() if devices is None else devices.local_scope():
            predicted = model.predict(chunk, batch_size=min(batch, padded), verbose=0)
        outputs.append(np.asarray(predicted)[:count])
    if not outputs:
        return np.empty((0, *model.output_shape[1:]), dtype=np.float32)
    return np.concatenate(outputs)


def round_up(count: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``count``."""
    return -(-count // multiple) * multiple


class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """Keras's seed generator, except that its draws differ between the replicas of a TensorFlow strategy.

    Under ``tf.distribute.MirroredStrategy`` every replica reads the same mirrored seed state, so
    a plain ``SeedGenerator`` hands every replica the same random numbers (the same augmentations for
    the same positions of each device's share of a batch); this one folds the replica's index into
    the seed. Elsewhere it is the plain generator (on JAX one program draws for the whole batch).
    """

    def next(self, ordered: bool = True):
        seed = super().next(ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([replica * REPLICA_SEED_STRIDE, tf.zeros_like(replica)])


_resolved: dict[str, Devices] = {}


def resolve(mode: str) -> Devices:
    """The :class:`Devices` of ``mode`` (``auto``, ``none``, ``mirrored``, ``multiworker``) on this backend.

    Resolved once per process and mode (``multiworker`` joins its cluster the first time).

    Raises:
        TlkitError: If the backend cannot run ``mode`` (PyTorch: more than one device; TensorFlow:
            several processes), or a ``multiworker`` process lacks its cluster settings.
    """
    if mode not in _resolved:
        _resolved[mode] = _resolve(mode, keras.backend.backend())
        found = _resolved[mode]
        if found.count > 1:
            log.info("%s: %d devices in %d process(es) (%s); this is process %d", found.mode, found.count,
                     found.processes, ", ".join(found.names), found.process)
    return _resolved[mode]


def _resolve(mode: str, backend: str) -> Devices:
    if mode == "none":
        return Devices("none", ("default",))
    if backend == "torch":
        if mode != "auto":
            raise TlkitError(f"--distribute {mode} is not available on the PyTorch backend (Keras has no "
                             "multi-device training for it); use KERAS_BACKEND=jax or tensorflow")
        return Devices("none", ("default",))
    if mode == "multiworker":
        if backend != "jax":
            raise TlkitError("--distribute multiworker needs KERAS_BACKEND=jax: Keras 3 does not work with "
                             "TensorFlow's MultiWorkerMirroredStrategy (keras-team/keras#20585)")
        return _jax_cluster()
    return _tensorflow_local(mode) if backend == "tensorflow" else _jax_local(mode)


def _tensorflow_local(mode: str) -> Devices:
    import tensorflow as tf

    accelerators = tf.config.list_logical_devices("GPU")
    if mode == "auto" and len(accelerators) < 2:
        return Devices("none", ("default",))
    found = accelerators or tf.config.list_logical_devices("CPU")
    if len(found) < 2:
        log.warning("--distribute mirrored: only one device (%s) is visible; training on it", found[0].name)
        return Devices("none", (found[0].name,))
    strategy = tf.distribute.MirroredStrategy([device.name for device in found])
    return Devices("mirrored", tuple(device.name for device in found), engine=strategy, local_engine=strategy)


def _jax_local(mode: str) -> Devices:
    import jax

    found = jax.local_devices()
    if mode == "auto" and (len(found) < 2 or found[0].platform == "cpu"):
        return Devices("none", ("default",))
    if len(found) < 2:
        log.warning("--distribute mirrored: only one device (%s) is visible; training on it", _jax_name(found[0]))
        return Devices("none", (_jax_name(found[0]),))
    engine = keras.distribution.DataParallel(devices=[_jax_name(device) for device in found])
    return Devices("mirrored", tuple(_jax_name(device) for device in found), engine=engine, local_engine=engine)


def _jax_cluster() -> Devices:
    import jax

    missing = [name for name in CLUSTER_ENV if name not in os.environ]
    if missing:
        raise TlkitError(f"--distribute multiworker: set {', '.join(missing)} in every process "
                         f"({CLUSTER_ENV[0]}: process 0's host:port)")
    # Collectives between the CPUs of several processes go through gloo (GPUs use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        with _stdout_to_stderr():  # gloo says "[Gloo] Rank 0 is connected..." on stdout, which is tlkit's output
            keras.distribution.initialize()
    except (RuntimeError, ValueError) as exc:
        raise TlkitError(f"--distribute multiworker: cannot join the cluster ({' '.join(str(exc).split())})") from None
    everywhere, mine = jax.devices(), jax.local_devices()
    if len(everywhere) != len(mine) * jax.process_count():
        raise TlkitError(f"--distribute multiworker: every process needs as many devices; this one has "
                         f"{len(mine)} of {len(everywhere)} in {jax.process_count()} processes")
    names = [_jax_name(device) for device in everywhere]
    engine = keras.distribution.DataParallel(devices=names, auto_shard_dataset=False)
    local = keras.distribution.DataParallel(devices=[_jax_name(device) for device in mine], auto_shard_dataset=False)
    return Devices("multiworker", tuple(names), jax.process_index(), jax.process_count(), engine, local)


def settle(devices: Devices, error: str | None, digests: dict[str, str] | None) -> None:
    """Make every process of a job go on together, or stop together with the same error.

    Each process says whether its preparation failed (``error``) or what it prepared (``digests``:
    up to :data:`SETTLE_DIGESTS` of name -> SHA-256 hex digest, such as its dataset's); if any
    failed, or a digest differs between processes, every process raises the same error. (A process
    that stopped alone would leave the others waiting for it in their first collective step.)
    One process: nothing to do.

    Raises:
        TlkitError: The first failed process's error, or naming what differs.
    """
    if devices.processes == 1:
        return
    from jax.experimental import multihost_utils

    said = (error or "").encode()[:SETTLE_BYTES - 1]
    names = sorted(digests or {})
    record = np.zeros(SETTLE_BYTES + 32 * SETTLE_DIGESTS, dtype=np.uint8)  # the same size in every process
    record[0], record[1:1 + len(said)] = bool(error), np.frombuffer(said, np.uint8)
    for position, name in enumerate(names):
        record[SETTLE_BYTES + 32 * position:SETTLE_BYTES + 32 * (position + 1)] = np.frombuffer(
            bytes.fromhex(digests[name]), np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(record))  # (processes, len(record))
    for process, theirs in enumerate(everyone):
        if theirs[0]:
            message = bytes(theirs[1:SETTLE_BYTES]).rstrip(b"\0").decode(errors="replace")
            raise TlkitError(message if process == devices.process else f"process {process} of the job: {message}")
    for position, name in enumerate(names):
        part = slice(SETTLE_BYTES + 32 * position, SETTLE_BYTES + 32 * (position + 1))
        if len({bytes(theirs[part]) for theirs in everyone}) > 1:
            raise TlkitError(f"--distribute multiworker: the processes differ in {name}; every process must run "
                             "the same command on the same files")


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 1 to file descriptor 2 instead, for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _jax_name(device) -> str:
    return f"{device.platform}:{device.id}"
