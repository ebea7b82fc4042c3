"""tlkit predict --out: CSV / JSON Lines written batch by batch, and resumed after a kill."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import tlkit
from tlkit.cli import main
from tlkit.inference.prediction_file import predict_to_file

from conftest import make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


@pytest.fixture
def job(tmp_path, config):
    """A three-class run, and a folder of 18 images plus one unreadable file to predict."""
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=6)
    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    (data / "red" / "zz_broken.jpg").write_bytes(b"not an image")
    return data, tmp_path / "run"


def _read(path):
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_every_image_gets_a_row_matching_predict(tmp_path, job, suffix):
    data, run = job
    out = tmp_path / f"results{suffix}"
    counts = predict_to_file([data], out, run, batch_size=4)
    assert counts == {"predicted": 18, "unreadable": 1, "already": 0}
    rows = _read(out)
    expected = {p.path: p for p in tlkit.predict([data], run=run, top_k=3, batch_size=4)}  # the same batches
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == len(by_path) == 19
    assert by_path[str(data / "red" / "zz_broken.jpg")]["error"].startswith("UnidentifiedImageError")
    for path, prediction in expected.items():
        row = by_path[path]
        probabilities = ({name: float(row[f"probability_{name}"]) for name in ("blue", "green", "red")}
                         if suffix == ".csv" else row["probabilities"])
        assert row["label"] == prediction.label and float(row["probability"]) == pytest.approx(prediction.probability)
        assert probabilities == pytest.approx(dict(prediction.top_k), abs=1e-9)


KILLER = """
import importlib, os, signal, sys
from tlkit.inference.prediction_file import predict_to_file
p = importlib.import_module("tlkit.inference.predict")
real = p.iter_probabilities
def dying(*a, **k):
    for n, item in enumerate(real(*a, **k)):
        if n == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
import tlkit.inference.prediction_file
tlkit.inference.prediction_file.iter_probabilities = dying
predict_to_file([sys.argv[1]], sys.argv[2], sys.argv[3], batch_size=4)
"""


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_killed_job_resumes_where_it_stopped(tmp_path, job, suffix):
    data, run = job
    out = tmp_path / f"results{suffix}"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(data), str(out), str(run)], capture_output=True,
                            timeout=300)
    assert killed.returncode == -9
    assert len(_read(out)) == 8  # two whole batches of 4 were on disk when it died
    with open(out, "a") as handle:  # as if it had died in the middle of writing a third
        handle.write('{"path": "half a li' if suffix == ".jsonl" else "half,a,li")
    result = CliRunner().invoke(main, ["predict", str(data), "--run", str(run), "--out", str(out),
                                       "--batch-size", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{out}: 10 image(s) predicted, 1 unreadable, 8 already there"
    assert "ended in a torn line" in result.stderr
    resumed = _read(out)
    whole = tmp_path / f"whole{suffix}"
    predict_to_file([data], whole, run, batch_size=4)
    assert len(resumed) == 19 and resumed == _read(whole)  # same rows, in the same order, each once
    again = CliRunner().invoke(main, ["predict", str(data), "--run", str(run), "--out", str(out), "-q"])
    assert again.stdout.strip() == f"{out}: 0 image(s) predicted, 0 unreadable, 19 already there"


def test_bad_outputs_are_refused_before_anything_is_written(tmp_path, job, config):
    data, run = job
    for out, message in ((tmp_path / "r.txt", "give a file ending in .csv or .jsonl"),
                         (tmp_path / "nowhere" / "r.csv", "folder not found for")):
        bad = CliRunner().invoke(main, ["predict", str(data), "--run", str(run), "--out", str(out)])
        assert bad.exit_code == 1 and message in bad.output and len(bad.output.strip().splitlines()) == 1
        assert not out.exists()
    both = CliRunner().invoke(main, ["predict", str(data), "--run", str(run), "--out", str(tmp_path / "r.csv"),
                                     "--json"])
    assert both.exit_code == 2 and "give one of them" in both.output and not (tmp_path / "r.csv").exists()
    # a results file of another run, with other classes, is not continued; the message names that run
    other = make_dataset(tmp_path / "o", ("blue", "red"), per_class=4)
    tlkit.train(other, config, run_dir=tmp_path / "other-run", verbose=0)
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"mixed{suffix}"
        predict_to_file([other], out, tmp_path / "other-run")
        before = out.read_bytes()
        with pytest.raises(tlkit.TlkitError, match="holds predictions of run other-run@"):
            predict_to_file([data], out, run)
        assert out.read_bytes() == before


def test_probabilities_are_written_in_full_precision(tmp_path, job):
    data, run = job
    predict_to_file([data / "blue"], tmp_path / "r.jsonl", run)
    rows = _read(tmp_path / "r.jsonl")
    assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-6 for row in rows)
    assert len({row["probability"] for row in rows}) == len(rows)  # not rounded into ties
    assert np.all([row["probability"] == max(row["probabilities"].values()) for row in rows])


def test_a_torn_header_is_rewritten(tmp_path, job):
    data, run = job
    out = tmp_path / "torn.csv"
    out.write_text("path,label,probability,probabil")  # killed while writing the header
    assert predict_to_file([data], out, run) == {"predicted": 18, "unreadable": 1, "already": 0}
    assert out.read_bytes().startswith(b"path,label,probability,") and len(_read(out)) == 19


@pytest.mark.parametrize("name, text", [("other.jsonl", '{"a": 1}\n'), ("words.jsonl", "hello\n"),
                                        ("latin.csv", "caf\xe9,x\n")])
def test_a_file_that_is_not_results_is_refused_in_one_line(tmp_path, job, name, text):
    data, run = job
    out = tmp_path / name
    out.write_bytes(text.encode("latin-1"))
    result = CliRunner().invoke(main, ["predict", str(data), "--run", str(run), "--out", str(out)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is not a tlkit results file" in result.output or "holds predictions of other classes" in result.output
    assert out.read_bytes() == text.encode("latin-1")


def test_file_names_that_are_not_utf8_round_trip(tmp_path, job):
    """Linux file names are bytes: one that is not UTF-8 is written and recognised on resume as it is."""
    data, run = job
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = folder / "caf\udce9.jpg"  # the file name b"caf\\xe9.jpg", as Python sees it
    odd.write_bytes((data / "red" / "red_00.jpg").read_bytes())
    out = tmp_path / "odd.jsonl"
    assert predict_to_file([folder], out, run)["predicted"] == 1
    assert b"caf\\udce9.jpg" in out.read_bytes() or b"caf\xe9.jpg" in out.read_bytes()
    assert predict_to_file([folder], out, run) == {"predicted": 0, "unreadable": 0, "already": 1}
