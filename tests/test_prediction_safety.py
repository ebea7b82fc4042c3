"""predict on a bad day: a user's own file at --out, stale results of another run, a broken model, a closed
stdout; and which run answered, recorded with every prediction."""

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.inference.prediction_file import predict_to_file

from conftest import make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trainings of the same data and classes, each in a folder named ``run``."""
    root = tmp_path_factory.mktemp("safety")
    data = make_dataset(root / "d", ("blue", "red"), per_class=4)
    config = tlkit.Config().replace(
        data={"image_size": 32, "cache_dir": str(root / "cache"), "workers": 2, "val_split": 0.3},
        train={"weights": "none", "epochs": 1, "warmup_epochs": 1, "batch_size": 8, "patience": 0})
    for name in ("a", "b"):
        tlkit.train(data, config, run_dir=root / name / "run", verbose=0)
    return data, root / "a" / "run", root / "b" / "run"


def _predict(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def _rows(path):
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


FOREIGN = {
    "budget.csv": b"month,amount\n2024-01,120\n2024-02,95",  # no newline at its end
    "notes.csv": b"call the vet on monday",  # one line, no newline
    "notes.jsonl": b'{"note": "call the vet"}',
    "list.jsonl": b'{"path": "a.jpg", "error": "x", "run": "r@1"}\n{"note": 1}\n{"path": "b.jp',  # one line not ours
    "almost.csv": b"path,label,probability,probability_blue,probability_red,error,run\nx.jpg,blue\nhalf",
    "blank.jsonl": b"\n\n",
}


@pytest.mark.parametrize("name", FOREIGN)
def test_a_file_that_is_not_ours_is_left_byte_for_byte(tmp_path, runs, name):
    data, run, _ = runs
    out = tmp_path / name
    out.write_bytes(FOREIGN[name])
    result = _predict(data, "--run", run, "--out", out, "-q")
    assert result.exit_code == 1 and "is not a tlkit results file" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert out.read_bytes() == FOREIGN[name]
    again = _predict(data, "--run", run, "--out", out, "-q", "--overwrite")  # not even when asked to overwrite
    assert again.exit_code == 1 and out.read_bytes() == FOREIGN[name]


def test_two_trainings_of_the_same_classes_have_different_identities(runs):
    _, first, second = runs
    a, b = tlkit.load_run(first).identity, tlkit.load_run(second).identity
    assert a.startswith("run@") and b.startswith("run@") and a != b


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_results_of_another_run_are_refused_then_replaced_on_request(tmp_path, runs, suffix):
    data, first, second = runs
    out = tmp_path / f"results{suffix}"
    assert predict_to_file([data], out, first)["predicted"] == 8
    with open(out, "a") as handle:
        handle.write('{"path": "half' if suffix == ".jsonl" else "half,a,row")  # a torn line: not cut for run b
    before = out.read_bytes()
    first_id, second_id = tlkit.load_run(first).identity, tlkit.load_run(second).identity
    stale = _predict(data, "--run", second, "--out", out, "-q")
    assert stale.exit_code == 1 and len(stale.output.strip().splitlines()) == 1
    assert f"holds predictions of run {first_id}, not of run {second_id}" in stale.output
    assert "--overwrite" in stale.output and out.read_bytes() == before
    resumed = _predict(data, "--run", first, "--out", out, "-q")  # the run that wrote it continues it
    assert resumed.exit_code == 0 and resumed.stdout.strip() == f"{out}: 0 image(s) predicted, 0 unreadable, " \
                                                                "8 already there"
    fresh = _predict(data, "--run", second, "--out", out, "-q", "--overwrite")
    assert fresh.exit_code == 0 and fresh.stdout.strip() == f"{out}: 8 image(s) predicted, 0 unreadable, 0 already there"
    rows = _rows(out)
    assert len(rows) == 8 and {row["run"] for row in rows} == {second_id}


OLD_FORMAT = {
    ".csv": "path,label,probability,probability_blue,probability_red,error\nx.jpg,blue,0.9,0.9,0.1,\n",
    ".jsonl": '{"path": "x.jpg", "label": "blue", "probability": 0.9, "probabilities": {"blue": 0.9, "red": 0.1}}\n',
}


@pytest.mark.parametrize("suffix", OLD_FORMAT)
def test_results_of_a_tlkit_that_did_not_record_runs_are_refused(tmp_path, runs, suffix):
    data, run, _ = runs
    out = tmp_path / f"old{suffix}"
    out.write_text(OLD_FORMAT[suffix])
    result = _predict(data, "--run", run, "--out", out, "-q")
    assert result.exit_code == 1 and "written by an older tlkit" in result.output and "--overwrite" in result.output
    assert out.read_text() == OLD_FORMAT[suffix]
    assert _predict(data, "--run", run, "--out", out, "-q", "--overwrite").exit_code == 0
    assert len(_rows(out)) == 8


def test_a_named_pipe_at_out_is_refused_without_blocking(tmp_path, runs):
    data, run, _ = runs
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "tlkit.cli", "predict", str(data), "--run", str(run), "--out",
                             str(fifo), "-q"], capture_output=True, text=True, timeout=120)  # opening it would block
    assert result.returncode == 1 and "named pipe" in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_predictions_carry_their_run_and_the_default_run_is_named(tmp_path, runs):
    data, run, _ = runs
    shutil.copytree(run, tmp_path / "runs" / "latest")
    identity = tlkit.load_run(run).identity.replace("run@", "latest@")
    result = _predict(data / "red", "--json")
    assert result.exit_code == 0, result.output
    assert "using run runs/latest (classes: blue, red); give --run to choose" in result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 4 and {record["run"] for record in records} == {identity}
    for suffix in (".csv", ".jsonl"):
        assert _predict(data / "red", "--out", tmp_path / f"r{suffix}", "-q").exit_code == 0
        assert {row["run"] for row in _rows(tmp_path / f"r{suffix}")} == {identity}
    assert {p.run for p in tlkit.predict([data / "red"])} == {identity}


def test_a_model_giving_nan_is_a_one_line_error_and_never_written(tmp_path, runs):
    data, run_dir, _ = runs
    run = tlkit.load_run(run_dir)
    dense = next(layer for layer in reversed(run.model.layers) if layer.weights)
    dense.set_weights([np.full_like(w, np.nan) for w in dense.get_weights()])
    with pytest.raises(tlkit.TlkitError, match="not a number .* its model is broken"):
        tlkit.predict([data], run=run)
    out = tmp_path / "r.jsonl"
    with pytest.raises(tlkit.TlkitError, match="not a number"):
        predict_to_file([data], out, run)
    assert out.read_bytes() == b""


def test_cli_json_never_prints_nan(runs, monkeypatch):
    data, run, _ = runs
    module = sys.modules["tlkit.inference.predict"]
    monkeypatch.setattr(module, "view_probabilities", lambda run, images, *a: np.full((len(images), 2), np.nan))
    result = _predict(data, "--run", run, "--json", "-q")
    assert result.exit_code == 1 and "not a number" in result.output and "NaN" not in result.stdout
    assert len(result.output.strip().splitlines()) == 1


RETRACING = """
import logging, sys
import tlkit
messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
tf_log = logging.getLogger("tensorflow")
tf_log.setLevel(logging.WARNING)
tf_log.addHandler(Keep())
for _ in range(6):
    assert len(tlkit.predict([sys.argv[1]], run=sys.argv[2])) == 8
print(sum("retracing" in message for message in messages))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function retracing is TensorFlow's")
def test_repeated_predict_calls_do_not_retrace(runs):
    """Each call loaded the run anew: a new model, whose predict function TensorFlow traced again."""
    data, run, _ = runs
    done = subprocess.run([sys.executable, "-c", RETRACING, str(data), str(run)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "0" and "retracing" not in done.stderr
