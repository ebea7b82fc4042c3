"""JAX's own calls: its devices, ``DataParallel`` over them, a cluster of processes, gradients."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import keras
import numpy as np

from tlkit.backends.devices import Devices
from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: Whether a training step holding ``keras.ops.image.affine_transform`` compiles with XLA:
#: the affine transform is a gather, which XLA compiles.
AFFINE_TRANSFORM_COMPILES = True

#: The environment variables a ``multiworker`` process reads (Keras's own names).
CLUSTER_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")


def local_devices(mode: str) -> Devices:
    """``auto``: every accelerator when there are several, else one device; ``mirrored``: every local
    device (CPU devices included), under one ``DataParallel``."""
    found = jax.local_devices()
    if mode == "auto" and (len(found) < 2 or found[0].platform == "cpu"):
        return Devices("none", ("default",))
    if len(found) < 2:
        log.warning("--distribute mirrored: only one device (%s) is visible; training on it", _name(found[0]))
        return Devices("none", (_name(found[0]),))
    engine = keras.distribution.DataParallel(devices=[_name(device) for device in found])
    return Devices("mirrored", tuple(_name(device) for device in found), engine=engine, local_engine=engine)


_cluster: list[Devices] = []  # joined once per process: JAX's distributed runtime starts once


def cluster_devices() -> Devices:
    """Every device of every process of the job, this process joining it from Keras's cluster variables.

    Raises:
        TlkitError: If a variable is missing, the cluster cannot be joined, or processes differ in devices.
    """
    if _cluster:
        return _cluster[0]
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
    names = [_name(device) for device in everywhere]
    engine = keras.distribution.DataParallel(devices=names, auto_shard_dataset=False)
    local = keras.distribution.DataParallel(devices=[_name(device) for device in mine], auto_shard_dataset=False)
    _cluster.append(Devices("multiworker", tuple(names), jax.process_index(), jax.process_count(), engine, local))
    return _cluster[0]


def gather(record: np.ndarray) -> np.ndarray:
    """``record`` (the same shape in every process) of every process of the job: ``(processes, ...)``."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(record))


def gradient(function, x):
    """``d sum(function(x)) / dx``."""
    return jax.grad(lambda v: function(v).sum())(x)


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


def _name(device) -> str:
    return f"{device.platform}:{device.id}"
