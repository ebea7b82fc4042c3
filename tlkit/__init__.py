"""tlkit: transfer-learning image classifiers on a pretrained VGG16, from a folder of images per class.

The library API; the ``tlkit`` command line only calls these::

    import tlkit
    config = tlkit.Config().replace(fit={"mode": "features", "epochs": 20})
    result = tlkit.train("photos/", config)          # -> TrainResult (model, class_names, history, ...)
    tlkit.predict(["cat.jpg"], run=result.run_dir)   # -> [Prediction(path, label, probability, top_k)]
    tlkit.evaluate("photos/", run=result.run_dir)    # -> Evaluation (loss, accuracy, per-class P/R/F1, ...)
    tlkit.explain("cat.jpg", run=result.run_dir)     # -> Explanation (Grad-CAM heatmap at the image's size)
    tlkit.write_report("report.html", result.run_dir)  # one self-contained HTML page about the run
    tlkit.cross_validate("photos/", config, folds=5)  # -> CVResult: K-fold of the head on cached features
    tlkit.tune("photos/", config, trials=20)         # -> TuneResult: KerasTuner search of the head, best.toml
    tlkit.train("labels.csv", config)                # labels from a CSV (several per image: multi-label)
    tlkit.export(result.run_dir, "onnx", "model.onnx")  # also savedmodel, tflite: pixels in, probabilities out
    tlkit.audit("photos/")                           # -> AuditResult: duplicates, leaks, label errors, outliers

Names are imported on first use (PEP 562): ``import tlkit`` imports no ML framework, and neither do
the config classes; training, prediction and the rest import Keras when first called for.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Whether the user chose TensorFlow's C++ log level; if not, tlkit keeps its start-up lines off the terminal
#: (:func:`tlkit.backends.load_quietly`) and its later INFO and WARNING lines too.
TF_LOG_CHOSEN = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Every public name, and the module that defines it.
_HOMES = {
    "Config": "tlkit.config", "DataConfig": "tlkit.config", "AugmentConfig": "tlkit.config",
    "ModelConfig": "tlkit.config", "FitConfig": "tlkit.config", "RuntimeConfig": "tlkit.config",
    "load_config": "tlkit.config",
    "TlkitError": "tlkit.errors",
    "DatasetIndex": "tlkit.data.index", "scan": "tlkit.data.scan", "decode_image": "tlkit.data.decode",
    "FeatureSet": "tlkit.features", "extract": "tlkit.features",
    "TrainResult": "tlkit.training.pipeline", "train": "tlkit.training.pipeline",
    "CVResult": "tlkit.training.cv", "cross_validate": "tlkit.training.cv",
    "TuneResult": "tlkit.training.tune", "tune": "tlkit.training.tune",
    "Run": "tlkit.runs", "load_run": "tlkit.runs",
    "Prediction": "tlkit.inference.predict", "predict": "tlkit.inference.predict",
    "Evaluation": "tlkit.inference.evaluate", "evaluate": "tlkit.inference.evaluate",
    "Explanation": "tlkit.inference.explain", "explain": "tlkit.inference.explain",
    "write_report": "tlkit.report",
    "export": "tlkit.deploy",
    "AuditResult": "tlkit.auditing.findings", "audit": "tlkit.auditing.auditor",
}

__all__ = [*sorted(_HOMES), "__version__"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names come from __getattr__
    from tlkit.auditing.auditor import audit  # noqa: F401
    from tlkit.auditing.findings import AuditResult  # noqa: F401
    from tlkit.config import (AugmentConfig, Config, DataConfig, FitConfig, ModelConfig, RuntimeConfig,  # noqa: F401
                              load_config)
    from tlkit.data.decode import decode_image  # noqa: F401
    from tlkit.data.index import DatasetIndex  # noqa: F401
    from tlkit.data.scan import scan  # noqa: F401
    from tlkit.errors import TlkitError  # noqa: F401
    from tlkit.deploy import export  # noqa: F401
    from tlkit.features import FeatureSet, extract  # noqa: F401
    from tlkit.inference.evaluate import Evaluation, evaluate  # noqa: F401
    from tlkit.inference.explain import Explanation, explain  # noqa: F401
    from tlkit.inference.predict import Prediction, predict  # noqa: F401
    from tlkit.report import write_report  # noqa: F401
    from tlkit.runs import Run, load_run  # noqa: F401
    from tlkit.training.cv import CVResult, cross_validate  # noqa: F401
    from tlkit.training.pipeline import TrainResult, train  # noqa: F401
    from tlkit.training.tune import TuneResult, tune  # noqa: F401
