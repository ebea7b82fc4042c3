"""Several devices and several processes: the same training, spread; every device really used.

The multi-device tests run in fresh processes that show the backend two CPU devices (TensorFlow:
logical devices; JAX: ``--xla_force_host_platform_device_count``), as on a machine with two GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.augment import AugmentedBatches
from tlkit.cli import main
from tlkit.model import predict_rows
from tlkit.config import AugmentConfig
from tlkit.data.batches import Batches
from tlkit.backends.devices import Devices, resolve, sharded

from conftest import REPO, make_dataset

BACKEND = keras.backend.backend()
#: A subprocess that trains for a minute is given this long before it counts as hung.
SUBPROCESS_TIMEOUT = 600
#: A job that stops before training stops within this (stopped alone, a process would wait minutes).
PROMPTLY = 120


def two_devices(processes: int = 1, process: int = 0) -> Devices:
    return Devices("mirrored" if processes == 1 else "multiworker", ("cpu:0", "cpu:1"), process, processes)


def uneven_dataset(root: Path, blue: int, red: int) -> Path:
    """``blue`` + ``red`` noisy colour images."""
    make_dataset(root, ("blue", "red"), per_class=max(blue, red))
    for name, count in (("blue", blue), ("red", red)):
        for i in range(count, max(blue, red)):
            (root / name / f"{name}_{i:02d}.jpg").unlink()
    return root


def test_a_batch_is_padded_to_the_devices_with_rows_that_weigh_nothing():
    rows, factors = two_devices().pad(np.array([3, 5, 9]))
    assert rows.tolist() == [3, 5, 9, 9] and factors.tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 3, 0])
    rows, factors = two_devices().pad(np.array([1, 2]))
    assert rows.tolist() == [1, 2] and factors.tolist() == [1, 1]
    one_device = Batches(np.arange(3), np.arange(3), batch_size=2)
    assert sharded(one_device, Devices("none", ("default",))) is one_device  # as it is: no padding, no weights


def test_each_process_feeds_its_own_part_of_the_padded_batch():
    batches = Batches(np.arange(3) * 10, np.arange(3), batch_size=3)  # padded to 4 rows, 2 per process
    first = sharded(batches, two_devices(processes=2, process=0))[0]
    second = sharded(batches, two_devices(processes=2, process=1))[0]
    assert first[0].tolist() == [0, 10] and second[0].tolist() == [20, 20]
    assert first[1].tolist() == [0, 1] and second[1].tolist() == [2, 2]
    assert first[2].tolist() == pytest.approx([4 / 3, 4 / 3]) and second[2].tolist() == pytest.approx([4 / 3, 0])


def test_padding_keeps_the_mean_loss_of_the_real_rows():
    """The weighted loss Keras computes over a padded batch (sum over rows / rows) is the real rows' mean."""
    losses = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    class_weights = np.array([1.0, 2.0, 1.0, 1.0, 3.0], np.float32)
    devices = Devices("mirrored", ("a", "b", "c", "d"))
    rows, factors = devices.pad(np.arange(5))
    padded_loss = np.sum(losses[rows] * class_weights[rows] * factors) / len(rows)
    assert padded_loss == pytest.approx(np.mean(losses * class_weights))


def test_batches_on_two_devices_always_carry_weights_and_pad_the_last_batch():
    images, labels = np.arange(5 * 2).reshape(5, 2), np.arange(5)
    batches = sharded(Batches(images, labels, batch_size=2), two_devices())
    x, y, w = batches[2]  # the fifth row alone, padded by a copy of itself
    assert x.tolist() == [[8, 9], [8, 9]] and y.tolist() == [4, 4] and w.tolist() == [2, 0]
    x, y, w = batches[0]
    assert y.tolist() == [0, 1] and w.tolist() == [1, 1]
    weighted = sharded(Batches(images, labels, batch_size=3, weights=np.full(5, 0.5, np.float32)), two_devices())
    assert weighted[1][2].tolist() == [0.5, 0.5]  # rows 3, 4: no padding, the class weights as they are
    assert len(Batches(images, labels, batch_size=2)[2]) == 2  # one device: no weights


def test_validation_batches_weigh_the_epoch_so_that_its_mean_is_the_real_rows_mean():
    """Keras averages an epoch's batch losses weighing each by its rows (padding included)."""
    losses = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    batches = sharded(Batches(np.arange(5), np.arange(5), batch_size=2), two_devices(), whole_epoch=True)
    total = rows = 0
    for index in range(len(batches)):
        _, y, w = batches[index]
        total += np.sum(losses[y] * w)  # the batch's loss times its rows: sum(w * l) / rows * rows
        rows += len(y)
    assert rows == 6 and total / rows == pytest.approx(losses.mean())


def test_cpu_augmentation_gives_the_processes_different_transforms():
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    config = AugmentConfig()
    parts = [sharded(AugmentedBatches(images, np.zeros(4), 4, config, seed=1), two_devices(2, p))[0][0]
             for p in range(2)]
    whole = AugmentedBatches(images, np.zeros(4), 4, config, seed=1)[0][0]
    assert np.allclose(parts[0], whole[:2]) and np.allclose(parts[1], whole[2:])  # as one process draws them


def test_prediction_pads_for_the_devices_and_cuts_the_padding_off(monkeypatch):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    rows = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    seen = []
    original = model.predict
    monkeypatch.setattr(model, "predict", lambda x, batch_size, verbose: seen.append((len(x), batch_size))
                        or original(x, batch_size=batch_size, verbose=verbose))
    three = Devices("mirrored", ("a", "b", "c"))
    predicted = predict_rows(model, rows, batch_size=4, devices=three)
    assert seen == [(9, 6)]  # 7 rows padded to 9, batches of 6: every batch divides by 3
    np.testing.assert_allclose(predicted, original(rows, verbose=0), atol=1e-6)


def test_distribute_choices_and_refusals(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    bad = CliRunner().invoke(main, ["train", str(data), "--distribute", "everywhere"])
    assert bad.exit_code == 2 and "everywhere" in bad.output and bad.output.count("\n") == 1
    refused = {"torch": ("mirrored", "not available on the PyTorch backend"),
               "tensorflow": ("multiworker", "keras-team/keras#20585"),
               "jax": ("multiworker", "set KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES")
               }[BACKEND]
    result = CliRunner().invoke(main, ["train", str(data), "--distribute", refused[0], "--weights", "none",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and refused[1] in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()
    for command in ("extract", "cv"):  # only training spreads over machines
        one = CliRunner().invoke(main, [command, str(data), "--distribute", "multiworker"])
        assert one.exit_code == 2 and "is for tlkit train" in one.output and one.output.count("\n") == 1
    if accelerators() < 2:
        assert resolve("auto").count == 1


def accelerators() -> int:
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU"))
    if BACKEND == "jax":
        import jax

        return 0 if jax.devices()[0].platform == "cpu" else jax.device_count()
    import torch

    return torch.cuda.device_count()


def test_mirrored_on_one_device_says_so_and_uses_it(caplog, monkeypatch):
    if BACKEND == "torch" or accelerators() > 1:
        pytest.skip("PyTorch refuses mirrored (see test_distribute_choices_and_refusals); several GPUs here")
    devices = resolve("mirrored")
    assert "only one device" in caplog.text
    assert devices.count == 1 and devices.engine is None and devices.describe()["mode"] == "none"


def test_resume_is_refused_across_processes_before_anything_is_touched(tmp_path, config):
    run = tmp_path / "r"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text("{}")
    with pytest.raises(tlkit.TlkitError, match="continue the run on one machine"):
        tlkit.train(make_dataset(tmp_path / "d", per_class=3), config.replace(train={"distribute": "multiworker"}),
                    run_dir=run, resume=True)
    assert (run / "checkpoint" / "state.json").read_text() == "{}"


def device_env(count: int) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "PYTHONPATH": path}  # the caller's path too: wheels beside
    if BACKEND == "jax":  # host devices, also where a GPU is: one GPU cannot be two devices or two processes
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return env


@pytest.mark.skipif(BACKEND == "torch", reason="Keras has no multi-device training on PyTorch")
def test_every_mode_on_two_devices_trains_as_one_device_does(tmp_path):
    data = uneven_dataset(tmp_path / "d", blue=10, red=12)  # 15 train, 7 val: batches of 8 and 7
    out = tmp_path / "job" / "report.json"
    out.parent.mkdir()
    job = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_job.py"), str(data), str(out), "2",
                          "features", "frozen", "finetune"], env=device_env(2), capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT)
    assert job.returncode == 0, job.stderr[-3000:]
    report = json.loads(out.read_text())
    for mode, found in report.items():
        assert found["images"] == {"train": 15, "val": 7}
        one, two = found["distribution"]
        assert one["devices"] == 1 and two == {"mode": "mirrored", "devices": 2, "processes": 1,
                                               "names": two["names"]} and len(set(two["names"])) == 2
        assert found["max_weight_difference"] < 1e-5, mode  # the same training, spread over two devices
        assert found["val_loss"][1] == pytest.approx(found["val_loss"][0], abs=1e-5)
        assert found["val_accuracy"][1] == found["val_accuracy"][0]
        logged, spread = found["val_history"]  # per-epoch validation logs, padding and all: as on one device
        np.testing.assert_allclose(spread["val_accuracy"], logged["val_accuracy"], atol=1e-6)  # 3 of 7, not 4 of 8
        np.testing.assert_allclose(spread["val_loss"], logged["val_loss"], atol=1e-5)
        probe = found["probe"]  # every layer call of the training and validation steps, on both devices
        assert probe and all(record["devices"] == 2 for record in probe), mode
        assert {record["rows_per_device"] for record in probe} == {4}  # the batches of 7 padded to 8
        if BACKEND == "tensorflow":
            assert {record["replica"] for record in probe} == {0, 1}
        else:
            assert all(record["rows_per_device"] * 2 == record["rows"] for record in probe)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="JAX draws for the whole batch in one program")
def test_replicas_draw_their_own_augmentations(tmp_path):
    """Under MirroredStrategy each replica reads the same seed state; RandomAffine still differs per replica."""
    script = tmp_path / "draws.py"
    script.write_text(
        "import json, sys\n"
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "import keras\n"
        "from tlkit.augment import RandomAffine\n"
        "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
        "with strategy.scope():\n"
        "    layer = RandomAffine(rotation_range=40, seed=3)\n"
        "    plain = keras.random.SeedGenerator(3)\n"
        "draw = tf.function(lambda: (layer.sample(4, 32)['theta'], keras.random.uniform((4,), seed=plain)))\n"
        "ours, keras_own = strategy.run(draw)\n"
        "print(json.dumps([[v.numpy().tolist() for v in draws.values] for draws in (ours, keras_own)]))\n")
    job = subprocess.run([sys.executable, str(script)], env=device_env(2), capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT)
    assert job.returncode == 0, job.stderr[-3000:]
    ours, keras_own = json.loads(job.stdout.strip().splitlines()[-1])
    assert keras_own[0] == keras_own[1]  # what a plain SeedGenerator gives every replica
    assert ours[0] != ours[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(BACKEND != "jax", reason="multiworker runs on JAX (TensorFlow's is refused: keras#20585)")
def test_two_processes_on_localhost_train_as_one_device_does(tmp_path):
    """Two processes of one device each, joined over 127.0.0.1: one run, written once, equal to one device's."""
    data = uneven_dataset(tmp_path / "d", blue=12, red=9)  # 14 train (batches of 8 and 6), 7 val (padded to 8)
    args = ["train", str(data), "--mode", "finetune", "--epochs", "2", "--warmup-epochs", "1", "--image-size", "32",
            "--weights", "none", "--batch-size", "8", "--patience", "0", "--val-split", "0.3", "--cache-dir",
            str(tmp_path / "cache"), "--distribute", "multiworker", "--run-dir", str(tmp_path / "run"), "--quiet"]
    codes, outputs = two_processes(args, tmp_path)
    assert codes == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert outputs[0][0].startswith(f"run: {tmp_path / 'run'}\n")
    assert outputs[1][0].startswith("run: written by process 0 of the job\n")
    assert outputs[0][0].splitlines()[1] == outputs[1][0].splitlines()[1]  # the same val_accuracy and val_loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "d", "run"]  # process 1 left nothing behind
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["provenance"]["distribution"]
    assert recorded["mode"] == "multiworker" and recorded["processes"] == 2 and recorded["devices"] == 2

    alone_args = [*args[:args.index("--distribute")], "--run-dir", str(tmp_path / "alone"), "--quiet"]
    job = subprocess.run([sys.executable, "-m", "tlkit.cli", *alone_args], env=device_env(1), capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT, check=False)  # on the host, as the two, GPU or not
    assert job.returncode == 0, job.stderr[-3000:]
    alone, spread = tlkit.load_run(tmp_path / "alone"), tlkit.load_run(tmp_path / "run")
    for mine, theirs in zip(alone.model.get_weights(), spread.model.get_weights()):
        np.testing.assert_allclose(theirs, mine, atol=1e-5)  # augmentation and dropout included
    assert spread.metrics["val_loss"] == pytest.approx(alone.metrics["val_loss"], abs=1e-5)
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("alone", "run")]
    for ours, theirs in zip(*histories):
        np.testing.assert_allclose(theirs["history"]["val_loss"], ours["history"]["val_loss"], atol=1e-5)
        np.testing.assert_allclose(theirs["history"]["val_accuracy"], ours["history"]["val_accuracy"], atol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="multiworker runs on JAX")
@pytest.mark.parametrize("problem", ["run folder", "data"])
def test_a_process_that_cannot_start_stops_the_whole_job_with_its_error(tmp_path, problem):
    """Process 0 alone finds its --run-dir taken, or the processes hold different files: all stop, promptly."""
    data = [make_dataset(tmp_path / f"d{process}", per_class=4) for process in range(2)]
    if problem == "data":
        (data[1] / "red" / "red_00.jpg").unlink()
    (tmp_path / "run").mkdir()
    if problem == "run folder":
        (tmp_path / "run" / "mine.txt").write_text("keep me")
    args = ["train", "{data}", "--image-size", "32", "--weights", "none", "--epochs", "1", "--cache-dir",
            "{cache}", "--distribute", "multiworker", "--run-dir", str(tmp_path / "run"), "--quiet"]
    caches = [tmp_path / "c0", tmp_path / "c1"]
    codes, outputs = two_processes(args, tmp_path, {"data": data, "cache": caches}, timeout=PROMPTLY)
    said = {"run folder": "already exists and is not empty", "data": "the processes differ in their dataset files"}
    assert codes == [1, 1], outputs
    for process, (stdout, stderr) in enumerate(outputs):
        error = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and said[problem] in error[0] and not stdout, stderr[-2000:]
        if problem == "run folder" and process == 1:
            assert error[0].startswith("Error: process 0 of the job: ")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == (["mine.txt"] if problem == "run folder" else [])


def two_processes(args: list[str], cwd: Path, per_process: dict | None = None,
                  timeout: int = SUBPROCESS_TIMEOUT) -> tuple[list[int], list[tuple]]:
    """Run ``tlkit ARGS`` as the two processes of one job on 127.0.0.1 (one CPU device each); their exit
    codes and ``(stdout, stderr)``. ``{name}`` in an argument takes ``per_process[name][process]``."""
    port = free_port()
    jobs = []
    for process in range(2):
        env = {**device_env(1), "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(process)}
        mine = [arg.format(**{name: values[process] for name, values in (per_process or {}).items()})
                for arg in args]
        jobs.append(subprocess.Popen([sys.executable, "-m", "tlkit.cli", *mine], env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [job.communicate(timeout=timeout) for job in jobs]
    finally:
        for job in jobs:
            job.kill()
    return [job.returncode for job in jobs], outputs
