"""Shared fixtures: tiny image datasets written to tmp_path, and a fast configuration."""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from pathlib import Path

# JAX: compiled steps kept on disk, shared by the test processes (xdist workers, CLI subprocesses) that
# compile the same tiny VGG16 again and again; nothing the tests check depends on it
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"tlkit-tests-jax-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np
import pytest
from PIL import Image

import tlkit

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_WEIGHTS = Path(os.environ.get("TLKIT_TEST_WEIGHTS", SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"))
HYMENOPTERA = SHARED / "data" / "hymenoptera"
NATURAL_IMAGES = SHARED / "data" / "natural_images_30px"

#: Colours of the synthetic classes: each image is its class colour plus noise.
COLOURS = {"blue": (30, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40)}


def write_image(path: Path, rgb, size: int = 40, seed: int = 0, fmt: str | None = None) -> Path:
    """A noisy solid-colour image of ``rgb`` at ``path`` (format from the suffix unless ``fmt``)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_dataset(root: Path, classes=("blue", "red"), per_class: int = 10, splits=None, suffix=".jpg") -> Path:
    """Class folders of noisy solid-colour images under ``root`` (or under ``root/<split>`` for each split)."""
    for split in splits or [None]:
        base = root / split if split else root
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(base / name / f"{name}_{i:02d}{suffix}", COLOURS[name], seed=zlib.crc32(f"{split}/{c}/{i}".encode()))
    return root


@pytest.fixture
def config(tmp_path) -> tlkit.Config:
    """Small, fast settings: 32-pixel images, random VGG16 weights, a private cache, few epochs."""
    return tlkit.Config().replace(
        data={"image_size": 32, "cache_dir": str(tmp_path / "cache"), "workers": 2, "val_split": 0.3},
        train={"weights": "none", "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "patience": 0},
    )


def require_shared(path: Path) -> Path:
    """``path`` under ../shared; skips when absent, but fails where TLKIT_REQUIRE_SHARED is set (CI)."""
    if not path.exists():
        if os.environ.get("TLKIT_REQUIRE_SHARED"):
            pytest.fail(f"shared file required but missing: {path}")
        pytest.skip(f"not here: {path}")
    return path


@pytest.fixture
def real_weights() -> str:
    """Path of the real VGG16 ImageNet notop weights."""
    return str(require_shared(REAL_WEIGHTS))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``backend_independent`` run once, on TensorFlow (CI runs the suite on three backends)."""
    import keras

    if keras.backend.backend() == "tensorflow" or os.environ.get("TLKIT_ALL_BACKENDS"):
        return
    skip = pytest.mark.skip(reason="backend-independent: runs on the TensorFlow backend (TLKIT_ALL_BACKENDS=1: here too)")
    for item in items:
        if "backend_independent" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run every test in its own folder, with no weights, cache or CLI logging settings leaking in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLKIT_WEIGHTS", raising=False)
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "default-cache"))
    yield
    log = logging.getLogger("tlkit")  # the CLI gives the tlkit logger its own handler; undo that
    log.handlers.clear()
    log.propagate = True
    log.setLevel(logging.NOTSET)


def stop_at(epoch: int):
    """A Keras callback that presses Ctrl-C (raises KeyboardInterrupt) after batch 0 of epoch ``epoch``
    (from 0) of the first fit it is given to."""
    import keras

    class StopAt(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            self.epoch = index

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == epoch:
                raise KeyboardInterrupt

    return StopAt()
