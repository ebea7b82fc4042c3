"""tlkit: transfer-learning image classifiers on a pretrained VGG16, from a folder of images per class.

The library API; the ``tlkit`` command line only calls these::

    import tlkit
    config = tlkit.Config().replace(train={"mode": "features", "epochs": 20})
    result = tlkit.train("photos/", config)          # -> TrainResult (model, class_names, history, ...)
    tlkit.predict(["cat.jpg"], run=result.run_dir)   # -> [Prediction(path, label, probability, top_k)]
    tlkit.evaluate("photos/", run=result.run_dir)    # -> loss, accuracy, per-class precision/recall/F1
    tlkit.explain("cat.jpg", run=result.run_dir)     # -> Explanation (Grad-CAM heatmap at the image's size)
    tlkit.write_report("report.html", result.run_dir)  # one self-contained HTML page about the run
    tlkit.cross_validate("photos/", config, folds=5)  # -> CVResult: K-fold of the head on cached features
    tlkit.export(result.run_dir, "onnx", "model.onnx")  # also savedmodel, tflite: pixels in, probabilities out
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, not ours

__version__ = "0.1.0"

# Imported eagerly: the functions train/predict/evaluate share their modules' names, and a lazily
# imported submodule would replace the function of the same name on the package.
from tlkit.config import AugmentConfig, Config, DataConfig, TrainConfig, load_config  # noqa: E402
from tlkit.cv import CVResult, cross_validate  # noqa: E402
from tlkit.data import DatasetIndex, decode_image, scan  # noqa: E402
from tlkit.errors import TlkitError  # noqa: E402
from tlkit.evaluate import evaluate  # noqa: E402
from tlkit.explain import Explanation, explain  # noqa: E402
from tlkit.export import export  # noqa: E402
from tlkit.features import FeatureSet, extract  # noqa: E402
from tlkit.predict import Prediction, predict  # noqa: E402
from tlkit.report import write_report  # noqa: E402
from tlkit.runs import Run, load_run  # noqa: E402
from tlkit.train import TrainResult, train  # noqa: E402

__all__ = [
    "AugmentConfig", "CVResult", "Config", "DataConfig", "DatasetIndex", "Explanation", "FeatureSet", "Prediction",
    "Run", "TlkitError", "TrainConfig", "TrainResult", "cross_validate", "decode_image", "evaluate", "explain",
    "export", "extract", "load_config", "load_run", "predict", "scan", "train", "write_report", "__version__",
]
