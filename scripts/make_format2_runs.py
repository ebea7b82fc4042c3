"""Write the run folders of tests/data/format2/ with the tlkit of this checkout: a finished run and an
interrupted one, as tlkit wrote them before its architecture was reshaped (run format 2, config sections
data/augment/train, checkpoint format 1).

The test of compatibility (tests/test_compat.py) predicts, evaluates, reports and resumes them with the
tlkit of today. Their dataset is written here too: tiny BMP images (uncompressed, so every file's size,
which the checkpoint's dataset fingerprint records, is the same on any machine). The model files are
kept without their weights (VGG16's 59 MB): ``model.keras`` is stored as the Keras archive's
``config.json`` and ``metadata.json``; the test loads that architecture, gives it weights and packs the
archive again (see tests/test_compat.py).

Run from the checkout whose run format is to be kept, with the TensorFlow backend::

    KERAS_BACKEND=tensorflow python scripts/make_format2_runs.py tests/data/format2
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402

import tlkit  # noqa: E402

#: The classes of the dataset and their colours; each image is its colour plus seeded noise.
COLOURS = {"blue": (30, 60, 200), "red": (210, 40, 40)}
PER_CLASS = 6
SIDE = 32


def write_dataset(root: Path) -> None:
    """``root/<class>/<class>_NN.bmp``: noisy solid-colour squares."""
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            rng = np.random.default_rng([c, i])
            pixels = np.clip(np.array(rgb) + rng.normal(0, 15, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.bmp")


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Interrupts training as the second epoch begins: the first is checkpointed."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def strip_model(run: Path) -> None:
    """Replace ``model.keras`` by the archive's architecture: ``model.keras.config.json`` and ``...metadata.json``."""
    with zipfile.ZipFile(run / "model.keras") as archive:
        for member in ("config.json", "metadata.json"):
            (run / f"model.keras.{member}").write_bytes(archive.read(member))
    (run / "model.keras").unlink()


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    write_dataset(out / "data")
    with tempfile.TemporaryDirectory() as cache:
        config = tlkit.Config().replace(
            data={"image_size": 32, "val_split": 0.34, "cache_dir": cache, "workers": 1},
            train={"weights": "none", "mode": "frozen", "epochs": 3, "batch_size": 4, "head_units": 8,
                   "patience": 2},
        )
        tlkit.train(out / "data", config, run_dir=out / "finished", verbose=0)
        strip_model(out / "finished")
        try:
            tlkit.train(out / "data", config, run_dir=out / "interrupted", verbose=0,
                        callbacks=[StopAfterFirstEpoch()])
        except KeyboardInterrupt:
            pass
    state = json.loads((out / "interrupted" / "checkpoint" / "state.json").read_text())
    assert state["current"]["epochs_done"] == 1, state["current"]
    print(f"wrote {out}: tlkit {tlkit.__version__}, keras {keras.__version__} ({keras.backend.backend()})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
