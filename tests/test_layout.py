"""The package's shape: modules read in one sitting, short signatures, no framework loaded to say nothing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tlkit
import tlkit.backbone
from tlkit.backbone import DIGESTS_FILE, weights_identity
from tlkit.io import CACHE_CHECKSUM, cache_folder, write_checksums

from conftest import REPO, make_dataset, write_image

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


def test_extract_of_unchanged_data_answers_from_its_manifests_without_a_framework(tmp_path):
    """A second ``tlkit extract`` finds every cache current from its manifests and checksums: no framework
    imported, the weights file hashed once for every process (its digest noted in the cache); a change is
    extracted again."""
    data = make_dataset(tmp_path / "data", per_class=4)
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"not read: only hashed" * 1000)  # a cache miss would fail to load it
    cache = tmp_path / "cache"
    flags = ["--image-size", "32", "--cache-dir", str(cache), "--weights", str(weights), "--augmented-copies", "1"]
    from tlkit.features import manifest

    weights_identity(str(weights), remember_in=cache)  # noted in the cache; then the note is made up: only
    noted = json.loads((cache / DIGESTS_FILE).read_text())  # a command that reads it finds the caches below
    (cache / DIGESTS_FILE).write_text(json.dumps({key: "sha256:noted-by-an-earlier-process" for key in noted}))
    tlkit.backbone._file_identity.cache_clear()
    config = tlkit.Config().replace(data={"image_size": 32}, model={"weights": str(weights)},
                                    fit={"augmented_copies": 1}, runtime={"cache_dir": str(cache)})
    index = tlkit.scan(data, config.data)
    assert manifest(index, config)["weights"] == "sha256:noted-by-an-earlier-process"
    for copy in (None, 0):  # the caches the real extraction would have written: a manifest and its table
        folder = cache_folder(cache, "features", manifest(index, config, copy))
        folder.mkdir(parents=True)
        np.save(folder / "features.npy", np.zeros((8, 1, 1, 512), np.float32))
        (folder / "skipped.json").write_text("{}")
        (folder / "manifest.json").write_text(json.dumps(manifest(index, config, copy)))
        write_checksums(folder, CACHE_CHECKSUM)
    found = loaded_after(f"from tlkit.cli import main\ntry:\n    main(['extract', {str(data)!r}, *{flags!r}])\n"
                         "except SystemExit as exc:\n    print('exit', exc.code)\n")
    assert found["frameworks"] == [] and "features reused:" in found["stdout"] and "exit 0" in found["stdout"]
    write_image(data / "red" / "new.jpg", (200, 0, 0))
    found = loaded_after(f"from tlkit.cli import main\ntry:\n    main(['extract', {str(data)!r}, *{flags!r}])\n"
                         "except SystemExit as exc:\n    print('exit', exc.code)\n")
    assert "keras" in found["frameworks"] and "exit 1" in found["stdout"]  # the fake weights do not load


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
