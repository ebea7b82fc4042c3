"""Score a saved run on labelled images: loss, accuracy, confusion matrix, per-class precision/recall/F1,
and the most confident mistakes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.augment import tta_views
from tlkit.config import PREDICT_BATCH, TOP_K, TOP_LOSSES
from tlkit.data.index import SPLIT_NAMES
from tlkit.data.scan import scan
from tlkit.errors import TlkitError
from tlkit.inference.multilabel import EPSILON, multilabel_metrics
from tlkit.inference.predict import iter_probabilities
from tlkit.intervals import wilson, with_intervals
from tlkit.runs import Run, resolve_run

SPLIT_CHOICES = (*SPLIT_NAMES, "all")


@dataclass(frozen=True)
class Scores:
    """What every evaluation of a run says first.

    Attributes:
        data: The dataset (folder or labels CSV).
        split: The split scored (``train``, ``val``, ``test`` or ``all``).
        tta: Test-time views averaged per image (1: none).
        class_names: The run's classes (or labels), in label order.
        count: Images scored.
        loss: Mean cross-entropy.
        accuracy: Fraction of images classified right (multi-label: with every label decided right).
        caveat: Why ``accuracy`` flatters the run, if it does ("" for images nothing was chosen on): the
            run's validation images chose its kept epoch, its training images were trained on.
    """

    data: str
    split: str
    tta: int
    class_names: list[str]
    count: int
    loss: float
    accuracy: float
    caveat: str

    @property
    def accuracy_ci95(self) -> tuple[float, float]:
        """The 95% Wilson interval of ``accuracy`` (see :mod:`tlkit.intervals`)."""
        return wilson(self.accuracy, self.count)

    def to_dict(self) -> dict:
        """The evaluation as plain JSON-ready values (``tlkit evaluate --json``), each accuracy followed by
        its 95% interval (``accuracy_ci95``)."""
        return with_intervals(dataclasses.asdict(self), lambda key: self.count)


@dataclass(frozen=True)
class Evaluation(Scores):
    """What :func:`evaluate` returns for a run of one class per image (the fields of :class:`Scores` first).

    Attributes:
        confusion_matrix: Counts; rows are true classes, columns predicted ones.
        confusion_matrix_normalized: Each row divided by its total (a class with no images: zeros).
        per_class: ``{name: {"precision", "recall", "f1", "support"}}``.
        macro_avg: Precision, recall and F1 averaged over classes alike.
        weighted_avg: The same weighed by support.
        top_losses: The most confident mistakes (:func:`top_losses`).
        skipped: The paths left out: entries the scan rejected, and files that could not be decoded.
        top_5_accuracy: Past 5 classes, the fraction of images whose class is among the 5 most probable.
    """

    confusion_matrix: list[list[int]]
    confusion_matrix_normalized: list[list[float]]
    per_class: dict[str, dict]
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    top_losses: list[dict]
    skipped: list[str]
    top_5_accuracy: float | None = None


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Cross-entropy loss, accuracy, confusion matrix and per-class precision/recall/F1/support.

    Args:
        probabilities: ``(n, classes)`` predicted probabilities.
        labels: ``(n,)`` true class indices.
        class_names: Names of the classes, in index order.

    Returns:
        ``{"count", "loss", "accuracy", "confusion_matrix", "confusion_matrix_normalized",
        "per_class": {name: {precision, recall, f1, support}}, "macro_avg", "weighted_avg"}``, and
        ``"top_5_accuracy"`` past 5 classes.
        The confusion matrix's rows are true classes, its columns predicted ones; the normalised
        one divides each row by its total (a class with no images keeps a row of zeros). The macro
        average weighs every class alike, the weighted one by support.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        hits, predicted_as, support = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        precision = hits / predicted_as if predicted_as else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(support)}
    totals = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    supports = np.array([row["support"] for row in per_class.values()], dtype=np.float64)
    averages = {}
    for name, weights in (("macro_avg", np.ones(len(class_names))), ("weighted_avg", supports)):
        averages[name] = {metric: float(np.average([row[metric] for row in per_class.values()], weights=weights))
                          if weights.sum() else 0.0 for metric in ("precision", "recall", "f1")}
    top_k = {}
    if len(class_names) > TOP_K:  # ranks of the true class: how many classes are more probable
        ranks = (probabilities > probabilities[np.arange(len(labels)), labels][:, None]).sum(axis=1)
        top_k = {"top_5_accuracy": float((ranks < TOP_K).mean())}
    return {
        "count": int(len(labels)),
        "loss": float(-np.log(true_probability).mean()),
        "accuracy": float((predicted == labels).mean()),
        **top_k,
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "per_class": per_class,
        **averages,
    }


def top_losses(probabilities: np.ndarray, labels: np.ndarray, paths: list, class_names: tuple[str, ...],
               count: int) -> list[dict]:
    """The ``count`` most confident mistakes: misclassified images by decreasing loss on their true class.

    Returns:
        ``[{"path", "true", "predicted", "probability" (of the predicted class), "loss"}, ...]``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    losses = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON))
    mistakes = [i for i in np.argsort(-losses, kind="stable") if predicted[i] != labels[i]][:count]
    return [{"path": str(paths[i]), "true": class_names[labels[i]], "predicted": class_names[predicted[i]],
             "probability": float(probabilities[i, predicted[i]]), "loss": float(losses[i])} for i in mistakes]


@dataclass(frozen=True)
class MultiLabelEvaluation(Scores):
    """What :func:`evaluate` returns for a multi-label run (the fields of :class:`Scores` first, ``loss`` the
    mean binary cross-entropy over images and labels, ``accuracy`` the subset accuracy; each figure as
    :mod:`tlkit.inference.multilabel` defines it).

    Attributes:
        micro_f1, macro_f1, mean_average_precision: Over all labels.
        per_label: ``{name: {precision, recall, f1, average_precision, support, threshold}}``.
        top_losses: The images decided worst: ``[{"path", "true", "predicted", "loss", "label", "probability"}]``
            (label lists; loss the image's mean cross-entropy; ``label`` the one decided most wrongly, with its
            probability), the worst first, only images with a wrong decision.
        skipped: As :class:`Evaluation`'s.
    """

    micro_f1: float
    macro_f1: float
    mean_average_precision: float
    per_label: dict[str, dict]
    top_losses: list[dict]
    skipped: list[str]
    multi_label: bool = True


def evaluate_multilabel(probabilities: np.ndarray, truth: np.ndarray, paths: list, thresholds: list[float],
                        about: dict) -> MultiLabelEvaluation:
    """The :class:`MultiLabelEvaluation` of ``probabilities`` against ``truth`` (rows in the run's label order),
    deciding at ``thresholds``; ``about``: ``data``, ``split``, ``tta``, ``class_names``, ``skipped``,
    ``mistakes`` (how many of the worst images to list)."""
    names = list(about["class_names"])
    report = multilabel_metrics(probabilities, truth, names, np.asarray(thresholds))
    p = np.clip(probabilities, EPSILON, 1 - EPSILON)
    losses = -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p), axis=1)
    decided = probabilities >= np.asarray(thresholds)
    wrong = [i for i in np.argsort(-losses, kind="stable") if (decided[i] != truth[i].astype(bool)).any()]
    furthest = np.abs(probabilities - truth).argmax(axis=1)  # the label decided most wrongly, per image
    worst = [{"path": str(paths[i]), "true": [n for n, on in zip(names, truth[i]) if on],
              "predicted": [n for n, on in zip(names, decided[i]) if on], "loss": float(losses[i]),
              "label": names[furthest[i]], "probability": float(probabilities[i, furthest[i]])}
             for i in wrong[:about["mistakes"]]]
    return MultiLabelEvaluation(
        data=about["data"], split=about["split"], tta=about["tta"], class_names=names, count=report["count"],
        loss=report["loss"], accuracy=report["subset_accuracy"], caveat=about["caveat"], micro_f1=report["micro_f1"],
        macro_f1=report["macro_f1"], mean_average_precision=report["mean_average_precision"],
        per_label=report["per_label"], top_losses=worst, skipped=about["skipped"])


def evaluate(data: str | Path | None = None, run: Run | str | Path | None = None, split: str | None = None,
             *, batch_size: int = PREDICT_BATCH, verbose: int = 0, mistakes: int = TOP_LOSSES,
             tta: int = 1, labels: str | Path | None = None) -> Evaluation | MultiLabelEvaluation:
    """Score a run on a labelled folder.

    Args:
        data: A folder of class folders, a split dataset, or a labels CSV; ``None`` means the run's own data.
        run: A loaded run, a run folder, or ``None`` for the latest under ``runs/``.
        split: ``train``, ``val``, ``test`` or ``all``. By default: ``test`` when the data has
            one, else ``val``, except ``all`` for a plain folder given explicitly. A plain
            folder is split as the run was (same seed and fractions).
        batch_size: Images decoded and predicted per step.
        verbose: 0 silent, 1 a progress bar.
        mistakes: How many of the most confident mistakes to list (:func:`top_losses`).
        tta: Test-time views averaged per image (1: none; see
            :func:`tlkit.inference.predict.view_probabilities`).
        labels: A labels CSV for the images of ``data``, a folder (see :mod:`tlkit.data.table`); by
            default the run's own, when ``data`` is the run's data folder.

    Returns:
        An :class:`Evaluation`: :func:`classification_metrics` of the images, and which they were.

    Raises:
        TlkitError: On a bad folder, run or split, or classes the run does not know.
    """
    if split is not None and split not in SPLIT_CHOICES:
        raise TlkitError(f"invalid split: {split!r}; expected one of {', '.join(SPLIT_CHOICES)}")
    tta_views(tta)
    run = resolve_run(run)
    explicit = data is not None
    if data is None:
        data = run.data_dir
    own_data = labels is None and Path(data).resolve() == Path(run.data_dir).resolve()
    data_config = run.config.data
    if labels is not None or (explicit and Path(data).resolve() != Path(run.data_dir).resolve()):
        data_config = dataclasses.replace(data_config, labels=str(Path(labels).resolve()) if labels else "")
    if explicit and split in (None, "all"):  # a plain folder is scored whole: nothing to split off
        data_config = dataclasses.replace(data_config, val_split=0.0, test_split=0.0)
    index = scan(data, data_config)
    if split is None:
        split = "all" if explicit and not index.presplit else "test" if "test" in index.files else "val"
    if split != "all" and split not in index.files:
        raise TlkitError(f"{data} has no {split} split; its splits: {', '.join(index.files)}")
    unknown = sorted(set(index.class_names) - set(run.class_names))
    if unknown:
        raise TlkitError(f"classes {', '.join(unknown)} of {data} are unknown to run {run.path} "
                         f"(it knows {', '.join(run.class_names)})")
    if index.multi_label != run.multi_label:
        kinds = ("single-label", "multi-label")
        raise TlkitError(f"{data} is {kinds[index.multi_label]} data, run {run.path} a {kinds[run.multi_label]} "
                         "classifier")
    names = SPLIT_NAMES if split == "all" else (split,)
    files = [p for name in names for p in index.files.get(name, [])]
    to_run_label = np.array([run.class_names.index(name) for name in index.class_names])
    label_of = {p: _in_run_order(label, to_run_label, len(run.class_names), run.multi_label)
                for name in names for p, label in zip(index.files.get(name, []), index.labels.get(name, []))}
    kept, chunks = [], []
    for readable, probabilities, _ in iter_probabilities(run, files, batch_size, progress=bool(verbose), tta=tta):
        kept.extend(readable)
        chunks.append(probabilities)
    if not kept:
        raise TlkitError(f"no readable images in the {split} split of {data} (each was skipped: see the warnings)")
    probabilities, labels = np.concatenate(chunks), np.array([label_of[p] for p in kept])
    skipped = sorted({*index.skipped, *(str(p) for p in set(files) - set(kept))})
    caveat = _caveat(run, split) if own_data else ""
    if run.multi_label:
        return evaluate_multilabel(probabilities, labels, kept, run.thresholds, {
            "data": str(data), "split": split, "tta": tta, "class_names": run.class_names, "skipped": skipped,
            "mistakes": mistakes, "caveat": caveat})
    report = classification_metrics(probabilities, labels, run.class_names)
    return Evaluation(data=str(data), split=split, tta=tta, class_names=list(run.class_names), caveat=caveat,
                      **report, top_losses=top_losses(probabilities, labels, kept, run.class_names, mistakes),
                      skipped=skipped)


def _caveat(run: Run, split: str) -> str:
    """Why an accuracy on the run's own data flatters it: which of its images were trained on, or chose the
    kept epoch (the validation images, when early stopping kept its best epoch)."""
    if split in ("train", "all"):
        return "the run was trained on these images (all of them, or its train split): this flatters it"
    if split == "val" and run.config.fit.patience > 0:
        return ("the run's kept epoch was chosen on these validation images, so this is optimistic; a test split "
                "is the figure to trust")
    return ""


def _in_run_order(label, to_run_label: np.ndarray, labels: int, multi_label: bool):
    """A dataset's label (an index, or a multi-label 0/1 row) as the run numbers its classes."""
    if not multi_label:
        return to_run_label[label]
    row = np.zeros(labels, dtype=np.uint8)
    row[to_run_label] = label
    return row
