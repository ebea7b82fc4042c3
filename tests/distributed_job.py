"""Trains each mode on one device and on several, in one fresh process, for tests/test_distribute.py.

    python tests/distributed_job.py DATA OUT.json DEVICES MODE [MODE ...]

The devices are CPU devices the backend is told to show: TensorFlow's logical devices (set here,
before TensorFlow starts), JAX's host devices (``XLA_FLAGS``, set by the caller before JAX starts).
Every ``Dense`` layer call is probed, to see how the training steps were spread over the devices:
on TensorFlow each replica prints its index and its share of the batch; on JAX the sharding XLA
gave the layer's input is recorded. Writes, per mode, the final figures and the
validation history of both runs, the largest difference between their weights, the runs' recorded
distribution and the probe's records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np

BACKEND = keras.backend.backend()


def show_devices(count: int) -> None:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def probe(records_file: Path, records: list) -> None:
    """Wrap ``Dense.call`` so that each call says how its input was spread over the devices."""
    original = keras.layers.Dense.call

    if BACKEND == "tensorflow":
        import tensorflow as tf

        def probed(self, inputs, *args, **kwargs):
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1 and tf.inside_function():
                tf.print("replica", context.replica_id_in_sync_group, "of", context.num_replicas_in_sync,
                         "rows", tf.shape(inputs)[0], output_stream=f"file://{records_file}")
            return original(self, inputs, *args, **kwargs)
    else:
        import jax

        def probed(self, inputs, *args, **kwargs):
            if isinstance(inputs, jax.core.Tracer):
                shape = tuple(inputs.shape)
                jax.debug.inspect_array_sharding(inputs, callback=lambda sharding: records.append(
                    {"devices": len(sharding.device_set), "rows": shape[0],
                     "rows_per_device": sharding.shard_shape(shape)[0]}))
            return original(self, inputs, *args, **kwargs)

    keras.layers.Dense.call = probed


def tf_records(records_file: Path) -> list[dict]:
    if not records_file.is_file():
        return []
    found = []
    for line in records_file.read_text().splitlines():
        words = line.split()
        found.append({"replica": int(words[1]), "devices": int(words[3]), "rows_per_device": int(words[5])})
    return found


def main(data: str, out: str, devices: int, modes: list[str]) -> None:
    show_devices(devices)
    import tlkit

    records: list = []
    records_file = Path(out).with_suffix(".probe")
    probe(records_file, records)
    report = {}
    for mode in modes:
        config = tlkit.Config().replace(
            data={"image_size": 32, "cache_dir": str(Path(out).parent / "cache"), "workers": 2, "val_split": 0.3},
            train={"mode": mode, "weights": "none", "epochs": 1, "warmup_epochs": 1, "batch_size": 8, "patience": 0,
                   "dropout": 0.0},
            augment={"rotation_range": 0, "width_shift_range": 0, "height_shift_range": 0, "shear_range": 0,
                     "zoom_range": 0, "horizontal_flip": False})
        runs = {}
        for distribute in ("none", "mirrored"):
            records.clear()
            records_file.unlink(missing_ok=True)
            result = tlkit.train(data, config.replace(train={"distribute": distribute}),
                                 run_dir=Path(out).parent / f"{mode}-{distribute}", verbose=0)
            provenance = json.loads((result.run_dir / "config.json").read_text())["provenance"]
            runs[distribute] = {"weights": result.model.get_weights(), "metrics": result.metrics,
                                "history": result.history[-1]["history"],
                                "distribution": provenance["distribution"],
                                "probe": tf_records(records_file) if BACKEND == "tensorflow" else list(records)}
        one, many = runs["none"], runs["mirrored"]
        report[mode] = {
            "max_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(one["weights"], many["weights"])),
            "val_loss": [one["metrics"]["val_loss"], many["metrics"]["val_loss"]],
            "val_accuracy": [one["metrics"]["val_accuracy"], many["metrics"]["val_accuracy"]],
            "val_history": [{key: run["history"][key] for key in ("val_loss", "val_accuracy")} for run in (one, many)],
            "images": many["metrics"]["images"],
            "distribution": [one["distribution"], many["distribution"]],
            "probe": many["probe"],
        }
    Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
