import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlkit.cli import main
from tlkit.config import SECTIONS

from conftest import make_dataset, write_image

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

FAST = ["--image-size", "32", "--weights", "none", "--batch-size", "8", "--patience", "0", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "d", ("blue", "red"), per_class=5)


def test_extract_then_reuse(tmp_path, data):
    first = invoke("extract", data, "--image-size", "32", "--weights", "none", "--cache-dir", tmp_path / "c",
                   "--quiet")
    assert first.exit_code == 0 and "features written" in first.output
    second = invoke("extract", data, "--image-size", "32", "--weights", "none", "--cache-dir", tmp_path / "c")
    assert second.exit_code == 0 and "features reused" in second.output


@pytest.mark.parametrize("mode", ["features", "frozen", "finetune"])
def test_train_each_mode_then_predict_and_evaluate(tmp_path, data, mode):
    trained = invoke("train", data, "--mode", mode, "--epochs", "1", "--warmup-epochs", "1", *FAST,
                     "--run-dir", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    assert "val_accuracy:" in trained.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["fit"]["mode"] == mode
    predicted = invoke("predict", data / "red", data / "blue" / "blue_00.jpg", "--run", tmp_path / "run",
                       "--json", "--top-k", "2")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.output)
    assert len(rows) == 6
    assert all({"path", "label", "probability", "top_k"} <= set(row) and len(row["top_k"]) == 2 for row in rows)
    plain = invoke("predict", data / "red" / "red_00.jpg", "--run", tmp_path / "run")
    assert plain.output.startswith(str(data / "red" / "red_00.jpg") + ": ")
    evaluated = invoke("evaluate", data, "--run", tmp_path / "run", "--json", "--top-losses", "3")
    report = json.loads(evaluated.output)
    assert report["count"] == 10 and set(report["per_class"]) == {"blue", "red"}
    assert {"macro_avg", "weighted_avg", "confusion_matrix_normalized"} <= set(report)
    everything = json.loads(invoke("predict", data, "--run", tmp_path / "run", "--json").output)
    labels = {row["path"]: row["label"] for row in everything}
    mistakes = sum(label != Path(path).parent.name for path, label in labels.items())
    assert len(report["top_losses"]) == min(3, mistakes)
    assert report["accuracy"] == pytest.approx(1 - mistakes / 10)
    text = invoke("evaluate", data, "--run", tmp_path / "run", "--confusion", tmp_path / "c.png", "--quiet")
    assert "weighted avg" in text.output and "confusion matrix (rows: true" in text.output
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_config_file_and_flags(tmp_path, data):
    (tmp_path / "c.toml").write_text('[train]\nepochs = 3\nhead_units = 16\n[data]\nimage_size = 40\n')
    result = invoke("train", data, "--config", tmp_path / "c.toml", "--epochs", "1", *FAST[2:],
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["fit"]["epochs"] == 1  # the flag wins over the file
    assert recorded["model"]["head_units"] == 16 and recorded["data"]["image_size"] == 40
    again = invoke("train", data, "--config", tmp_path / "run" / "config.json", "--quiet", "--run-dir", tmp_path / "r2")
    assert again.exit_code == 0, again.output
    a = json.loads((tmp_path / "run" / "config.json").read_text())
    b = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert {k: a[k] for k in SECTIONS} == {k: b[k] for k in SECTIONS}  # every setting, the machine's too
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_loss"] == pytest.approx(
        json.loads((tmp_path / "r2" / "metrics.json").read_text())["val_loss"], rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["train", "{data}", "--config", "{tmp}/none.json"], "config file not found"),
    (["extract", "{data}/blue/blue_00.jpg"], "not a folder"),
    (["predict", "{tmp}/nope.jpg", "--run", "{tmp}/norun"], "run folder not found"),
    (["evaluate", "{data}", "--run", "{tmp}/norun"], "run folder not found"),
    (["predict", "{data}/red"], "no runs found"),
    (["predict", "{data}/red", "--json", "--run", "{tmp}/norun"], "run folder not found"),
    (["train", "{data}", "--seed", "-1"], "invalid seed"),
    (["train", "{data}", "--val-split", "0", "--weights", "none"], "no validation images"),
])
def test_bad_input_is_a_one_line_error(tmp_path, data, args, message):
    result = invoke(*[a.format(tmp=tmp_path, data=data) for a in args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_predict_on_missing_file_with_a_run(tmp_path, data):
    assert invoke("train", data, "--epochs", "1", *FAST, "--run-dir", tmp_path / "run").exit_code == 0
    result = invoke("predict", tmp_path / "ghost.jpg", "--run", tmp_path / "run")
    assert result.exit_code == 1 and "no such file or folder" in result.output
    write_image(tmp_path / "ok.jpg", (200, 20, 20))
    (tmp_path / "bad.jpg").write_bytes(b"")
    mixed = CliRunner().invoke(main, ["predict", str(tmp_path / "ok.jpg"), str(tmp_path / "bad.jpg"),
                                      "--run", str(tmp_path / "run"), "--json"])
    assert mixed.exit_code == 0
    assert [row["path"] for row in json.loads(mixed.stdout)] == [str(tmp_path / "ok.jpg")]
    assert "skipped" in mixed.stderr and "bad.jpg" in mixed.stderr


def test_cv_prints_every_fold_and_json_agrees(tmp_path, data):
    args = ["cv", data, "--folds", "2", "--repeats", "2", "--epochs", "2", "--image-size", "32", "--weights", "none",
            "--cache-dir", tmp_path / "c", "--quiet"]
    text = invoke(*args)
    assert text.exit_code == 0, text.output
    report = json.loads(invoke(*args, "--json").output)
    lines = text.output.splitlines()
    assert lines[0] == f"{data}: 10 train and validation images (blue, red), 2 folds x 2 repeat(s)"
    for repeat in range(2):
        scores = [f"{f['val_accuracy']:.4f}" for f in report["fold_results"] if f["repeat"] == repeat]
        assert lines[1 + repeat] == f"repeat {repeat + 1}: {' '.join(scores)}  mean {report['repeat_accuracy'][repeat]:.4f}"
    assert lines[3].startswith(f"val_accuracy: {report['mean_accuracy']:.4f} +/- {report['std_accuracy']:.4f}")
    bad = CliRunner().invoke(main, ["cv", str(data), "--folds", "1"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


def test_a_reader_that_leaves_early_ends_predict_quietly(tmp_path, data):
    """`tlkit predict DIR | head`: when the reader has gone, tlkit stops without an error or a traceback."""
    import subprocess
    import sys

    assert invoke("train", data, *FAST, "--epochs", "1", "--run-dir", tmp_path / "run").exit_code == 0
    process = subprocess.Popen([sys.executable, "-m", "tlkit.cli", "predict", str(data), "--run", str(tmp_path / "run"),
                                "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line
    errors = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in errors and not any(line.startswith("Error:") for line in errors.splitlines()), errors


def test_progress_bars_go_to_stderr_and_stdout_keeps_the_results(tmp_path, data):
    """Keras prints its progress bars to stdout; tlkit sends them to stderr, so that ``> file`` keeps results only."""
    flags = [f for f in FAST if f != "--quiet"]
    trained = invoke("train", data, "--mode", "frozen", "--epochs", "1", *flags, "--run-dir", tmp_path / "run",
                     "--cache-dir", tmp_path / "c")
    assert trained.exit_code == 0, trained.output
    assert "/step - accuracy: " in trained.stderr  # the fit's bar, on stderr
    assert trained.stdout.startswith(f"run: {tmp_path / 'run'}\nval_accuracy: ") and trained.stdout.count("\n") == 3
    assert trained.stdout.splitlines()[2].startswith("note: the last epoch was kept")  # --patience 0
    evaluated = invoke("evaluate", data, "--run", tmp_path / "run")
    assert "image" in evaluated.stderr  # the decode-and-predict bar
    assert evaluated.stdout.startswith(f"{data} [all]: 10 images\nloss: ")
    assert "\x1b[" not in evaluated.stdout and "━" not in evaluated.stdout
