"""The package's shape: modules read in one sitting, short signatures, no framework loaded to say nothing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from conftest import REPO

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it

PACKAGE = REPO / "tlkit"
#: Longest a module may grow before it is split.
MAX_LINES = 350
#: Most positional parameters of a function (self and cls not counted); more go in a dataclass.
MAX_POSITIONAL = 6
FRAMEWORKS = ("tensorflow", "jax", "torch", "keras", "matplotlib")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_a_sitting():
    lengths = {str(path.relative_to(REPO)): len(path.read_text().splitlines()) for path in modules()}
    long = {name: lines for name, lines in lengths.items() if lines > MAX_LINES}
    assert not long


def test_no_function_takes_more_than_six_positional_parameters():
    crowded = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(names) > MAX_POSITIONAL:
                    crowded.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}({', '.join(names)})")
    assert not crowded


def loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; the frameworks it imported, and what it printed."""
    loaded = f"sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({loaded}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    return {"frameworks": json.loads(done.stdout.splitlines()[-1]), "stdout": done.stdout, "stderr": done.stderr}


def test_importing_tlkit_and_its_config_loads_no_framework():
    found = loaded_after("import tlkit, tlkit.config, tlkit.cli\nconfig = tlkit.Config().replace(fit={'epochs': 3})\n"
                         "assert tlkit.TlkitError and tlkit.__version__")
    assert found["frameworks"] == [] and found["stderr"] == ""


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--version"], 0), (["train", "--help"], 0),
                                        (["trian"], 2), (["train", "d", "--epochs", "many"], 2),
                                        (["predict", "--top-k", "0", "x.jpg"], 2)])
def test_commands_that_need_no_model_load_no_framework(args, code):
    found = loaded_after("from tlkit.cli import main\ntry:\n"
                         f"    main({args!r})\n"
                         "except SystemExit as exc:\n    print('exit', exc.code)\n")
    assert found["frameworks"] == [] and f"exit {code}" in found["stdout"]
    assert "I0000" not in found["stderr"] and "E0000" not in found["stderr"]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's start-up lines")
def test_a_command_that_loads_tensorflow_prints_none_of_its_start_up_lines(tmp_path):
    """TensorFlow's C++ side (absl, CUDA probing, oneDNN) stays off the terminal unless asked for."""
    env = {key: value for key, value in __import__("os").environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "tlkit.cli", "predict", str(tmp_path / "missing.jpg"),
                           "--run", str(tmp_path / "norun")], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert done.returncode == 1 and done.stderr.splitlines() == [f"Error: run folder not found: {tmp_path / 'norun'}"]


@pytest.mark.parametrize("script", sorted(path.name for path in (REPO / "scripts").glob("*.py")))
def test_every_script_loads_against_the_package(script):
    """The scripts import what the package now calls its names (their main parts are run elsewhere)."""
    done = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(REPO / 'scripts' / script)!r})"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
