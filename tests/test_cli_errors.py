"""Answers that need no model come before any ML framework is loaded; one way to name a run; the last resort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tlkit.limits
from tlkit.cli import checks, main

from conftest import REPO, make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

FRAMEWORKS = ("tensorflow", "jax", "torch", "keras", "matplotlib")
#: Hides jax from the interpreter it is run in, as if it were not installed.
WITHOUT_JAX = """
import sys
class NoJax:
    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoJax())
"""


def run_cli(args: list[str], cwd: Path, env: dict | None = None, prelude: str = "") -> dict:
    """``tlkit ARGS`` in a fresh interpreter: exit code, stdout, stderr lines, the frameworks it loaded."""
    loaded = f"sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})"
    code = (f"{prelude}\nimport sys, json\nfrom tlkit.cli import main\ntry:\n    main({args!r})\n"
            f"except SystemExit as exc:\n    code = exc.code\nsys.stderr.write('FRAMEWORKS ' + json.dumps({loaded}))\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    *lines, frameworks = done.stderr.splitlines()
    return {"code": done.returncode, "stdout": done.stdout, "stderr": lines,
            "frameworks": json.loads(frameworks.removeprefix("FRAMEWORKS "))}


@pytest.fixture
def place(tmp_path) -> Path:
    """A working folder with a dataset ``d``, an empty folder ``run`` (no model), and no ``runs/``."""
    make_dataset(tmp_path / "d", per_class=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "bad.toml").write_text("[fit\n")
    (tmp_path / "inf.toml").write_text("[fit]\nlearning_rate = inf\n")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return tmp_path


NO_MODEL_NEEDED = [
    (["train", "missing"], 1, "dataset folder not found: missing"),
    (["extract", "missing"], 1, "dataset folder not found: missing"),
    (["cv", "missing"], 1, "dataset folder not found: missing"),
    (["evaluate", "missing", "--run", "run"], 1, "dataset folder not found: missing"),
    (["report", "--run", "run", "--data", "missing", "--out", "r.html"], 1, "dataset folder not found: missing"),
    (["predict", "ghost.jpg", "--run", "run"], 1, "no such file or folder: ghost.jpg"),
    (["explain", "ghost.jpg", "--run", "run", "--out", "x.png"], 1, "no such image file: ghost.jpg"),
    (["predict", "ghost.jpg", "--run", "norun"], 1, "run folder not found: norun"),
    (["predict", "d"], 1, "no runs found under runs/"),
    (["evaluate", "--run", "norun"], 1, "run folder not found: norun"),
    (["explain", "d/red/red_00.jpg", "--run", "norun", "--out", "x.png"], 1, "run folder not found: norun"),
    (["report", "--run", "norun", "--out", "r.html"], 1, "run folder not found: norun"),
    (["curves", "--run", "norun", "--out", "c.png"], 1, "run folder not found: norun"),
    (["export", "--run", "norun", "--format", "onnx", "--out", "m.onnx"], 1, "run folder not found: norun"),
    (["train", "d", "--from", "norun", "--mode", "finetune"], 1, "run folder not found: norun"),
    (["train", "d", "--config", "missing.toml"], 1, "config file not found: missing.toml"),
    (["extract", "d", "--config", "bad.toml"], 1, "cannot parse config file bad.toml"),
    (["cv", "d", "--config", "deep.json"], 1, "cannot parse config file deep.json: it is nested too deeply"),
    (["train", "d", "--config", "inf.toml"], 1, "invalid learning_rate: inf"),
    (["train", "d", "--learning-rate", "inf"], 1, "invalid learning_rate: inf; expected a number > 0 and <= 10"),
    (["train", "d", "--learning-rate", "nan"], 1, "invalid learning_rate: nan"),
    (["train", "d", "--rotation-range", "inf"], 1, "invalid rotation_range: inf"),
    (["train", "d", "--head-units", "1000000000"], 1, "invalid head_units: 1000000000"),
    (["extract", "d", "--image-size", "100000"], 1, "invalid image_size: 100000"),
    (["cv", "d", "--epochs", "-4"], 1, "invalid epochs: -4"),
    (["train", "d", "--cache-dir", ""], 2, "invalid cache_dir: ''"),
    (["evaluate", "--run", "run", "--confusion", "nowhere/cm.png"], 1, "folder not found for nowhere/cm.png"),
    (["report", "--run", "run", "--out", "nowhere/r.html"], 1, "folder not found for nowhere/r.html"),
    (["explain", "d/red/red_00.jpg", "--run", "run", "--out", "nowhere/x.png"], 1, "folder not found for nowhere/x.png"),
    (["curves", "--run", "run", "--out", "nowhere/c.png"], 1, "folder not found for nowhere/c.png"),
    (["predict", "d", "--run", "run", "--out", "nowhere/p.csv"], 1, "folder not found for nowhere/p.csv"),
    (["predict", "d", "--run", "run", "--out", "p.csv", "--json"], 2, "give one of them"),
]


@pytest.mark.parametrize("args, code, message", NO_MODEL_NEEDED)
def test_answers_that_need_no_model_load_no_framework(place, args, code, message):
    found = run_cli(args, place)
    assert found["frameworks"] == [] and found["code"] == code, found
    assert len(found["stderr"]) == 1 and found["stderr"][0].startswith("Error: ") and message in found["stderr"][0]


def test_settings_beyond_this_machines_memory_are_refused_first(place):
    if (tlkit.limits.machine_memory() or 0) > 700 * 2**30:
        pytest.skip("this machine has more than 700 GiB of memory")
    found = run_cli(["train", "d", "--image-size", "1024", "--batch-size", "65536"], place)
    assert found["frameworks"] == [] and found["code"] == 1
    assert found["stderr"][0].startswith("Error: these settings need more memory than this machine has")
    assert "a batch of 65536 images of 1024x1024 takes 768.0 GiB" in found["stderr"][0]


@pytest.mark.parametrize("home", ["", None])
def test_without_home_the_cache_folder_must_be_given(place, home):
    env = {key: value for key, value in os.environ.items() if key not in ("HOME", "TLKIT_CACHE")}
    if home is not None:
        env["HOME"] = home
    done = subprocess.run([sys.executable, "-m", "tlkit.cli", "extract", "d"], capture_output=True, text=True,
                          cwd=place, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "Error: HOME is not set (or empty), so there is no default feature-cache folder: give --cache-dir or set "
        "TLKIT_CACHE (see python -m tlkit.cli extract -h)"]


# ---------------------------------------------------------------------------------------------------
# One way to name a run: --run, the positional form deprecated.


@pytest.mark.parametrize("command", [["report", "--out", "r.html"], ["curves", "--out", "c.png"],
                                     ["export", "--format", "onnx", "--out", "m.onnx"]])
def test_report_curves_export_take_run_and_still_the_positional_form(place, monkeypatch, command):
    monkeypatch.chdir(place)
    named = CliRunner().invoke(main, [*command, "--run", "run"])
    positional = CliRunner().invoke(main, [command[0], "run", *command[1:]])
    for result in (named, positional):  # both reach the run (an empty folder here) before any work
        assert result.exit_code == 1 and result.stderr.splitlines()[-1] == \
            "Error: run is not a tlkit run folder (no model.keras)", result.output
    assert "deprecated" not in named.stderr
    assert positional.stderr.splitlines()[0] == f"tlkit {command[0]} RUN is deprecated: use --run RUN"
    both = CliRunner().invoke(main, [command[0], "run", *command[1:], "--run", "other"])
    assert both.exit_code == 2 and "name the run once, as --run RUN" in both.stderr


def test_the_latest_run_is_the_default_of_run(place, monkeypatch):
    monkeypatch.chdir(place)
    result = CliRunner().invoke(main, ["curves", "--out", "c.png"])
    assert result.exit_code == 1 and result.stderr == "Error: no runs found under runs/; train one first or give --run\n"


# ---------------------------------------------------------------------------------------------------
# The last resort, and the environment: a missing backend, a closed stdout, an unusable HOME.


def test_an_unexpected_error_is_one_line_with_its_traceback_in_a_log_file(place, monkeypatch):
    def broken(path):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setitem(checks.CHECKS, "run", broken)
    result = CliRunner().invoke(main, ["curves", "--run", str(place / "run"), "--out", str(place / "c.png")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("Error: RuntimeError: something nobody foresaw (details in ")
    assert line.endswith("; --debug shows the traceback)")
    log = Path(line.split("details in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "something nobody foresaw" in log.read_text()
    log.unlink()
    debug = CliRunner().invoke(main, ["--debug", "curves", "--run", str(place / "run"), "--out", str(place / "c.png")])
    assert debug.exit_code == 1 and debug.stderr.startswith("Traceback (most recent call last)")
    assert debug.stderr.splitlines()[-1].startswith("Error: RuntimeError: something nobody foresaw")
    Path(debug.stderr.split("details in ")[1].split(";")[0]).unlink()


def test_a_keras_backend_that_is_not_installed_is_named(place):
    env = {"KERAS_BACKEND": "jax"}
    assert run_cli(["--help"], place, env, WITHOUT_JAX)["code"] == 0
    found = run_cli(["extract", "d", "--weights", "none", "--image-size", "32", "--cache-dir", "c"], place, env,
                    WITHOUT_JAX)
    assert found["code"] == 1 and found["stderr"] == [
        "Error: KERAS_BACKEND=jax but jax is not installed: pip install jax, or unset KERAS_BACKEND"]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["predict", "x.jpg"]])
def test_a_closed_stdout_is_an_error(place, args):
    command = " ".join([sys.executable, "-m", "tlkit.cli", *args])
    done = subprocess.run(["bash", "-c", f"exec {command} >&-"], capture_output=True, text=True, cwd=place,
                          timeout=120)
    assert done.returncode == 1
    assert done.stderr == "Error: standard output is closed; tlkit has nowhere to write its answer\n"


def test_an_unwritable_home_gives_no_matplotlib_lines(place):
    """HOME under a file (cannot be created, even by root): matplotlib's own folder is then a private temporary one."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    (place / "fake").mkdir()
    (place / "fake" / "model.keras").write_bytes(b"")  # reaches the curves' drawing module, then fails
    done = subprocess.run([sys.executable, "-m", "tlkit.cli", "curves", "--run", "fake", "--out", "c.png"],
                          capture_output=True, text=True, cwd=place, timeout=120,
                          env={**env, "HOME": "/dev/null/home"})
    assert "mkdir -p failed" not in done.stderr and "Matplotlib" not in done.stderr, done.stderr
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and done.stderr.startswith("Error: ")


def test_weights_of_another_model_are_one_line(place):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    other.save_weights(place / "other.weights.h5")
    done = subprocess.run([sys.executable, "-m", "tlkit.cli", "extract", "d", "--weights", "other.weights.h5",
                           "--image-size", "32", "--cache-dir", "c", "--quiet"], capture_output=True, text=True,
                          cwd=place, timeout=300, env={key: value for key, value in os.environ.items()
                                                       if key != "TF_CPP_MIN_LOG_LEVEL"})
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"Error: {place / 'other.weights.h5'} does not hold VGG16 notop weights: expected 26 arrays (13 convolutions' "
        "kernels and biases, the first 3x3x3x64), found 2 (4x3, 3)"]
