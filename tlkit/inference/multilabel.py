"""Multi-label figures: every label is its own yes/no decision, a probability against a threshold.

- per label: precision, recall and F1 at its threshold, average precision (the area under its
  precision-recall curve, as scikit-learn's ``average_precision_score`` computes it), support;
- micro F1 (every decision pooled), macro F1 (the labels' F1 averaged), mean average precision (mAP,
  the labels' average precisions averaged), subset accuracy (images with every label right), and the
  binary cross-entropy of the probabilities.

:func:`tlkit.evaluate` gives them for a multi-label run as a
:class:`tlkit.inference.evaluate.MultiLabelEvaluation`. Thresholds are 0.5 unless tuned
(:func:`tune_thresholds`): per label, the one that maximises its F1 on the validation images
(``tlkit train --tune-thresholds``).
"""

from __future__ import annotations

import numpy as np

from tlkit.config import MULTI_LABEL_THRESHOLD

#: The multi-label figures a run's ``metrics.json`` records per split (``val_micro_f1``...).
MULTI_LABEL_FIGURES = ("micro_f1", "macro_f1", "mean_average_precision", "subset_accuracy")
#: Clipping of probabilities in the cross-entropy (as Keras's epsilon).
EPSILON = 1e-7


def multilabel_metrics(probabilities: np.ndarray, truth: np.ndarray, label_names: tuple[str, ...] | list[str],
                       thresholds: np.ndarray | None = None) -> dict:
    """The figures of ``probabilities`` (``(images, labels)``) against 0/1 ``truth``, deciding at ``thresholds``
    (default 0.5 each): ``loss``, ``subset_accuracy``, ``micro_f1``, ``macro_f1``, ``mean_average_precision``,
    ``per_label`` (``{name: {precision, recall, f1, average_precision, support, threshold}}``), and ``accuracy``,
    the subset accuracy (what a multi-label run calls its accuracy)."""
    truth = np.asarray(truth, dtype=bool)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    cut = np.full(truth.shape[1], MULTI_LABEL_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
    decided = p >= cut
    hits, said, real = (decided & truth).sum(axis=0), decided.sum(axis=0), truth.sum(axis=0)
    per_label, precisions = {}, []
    for j, name in enumerate(label_names):
        precision, recall = _ratio(hits[j], said[j]), _ratio(hits[j], real[j])
        ap = average_precision(p[:, j], truth[:, j])
        precisions.append(ap)
        per_label[name] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                           "average_precision": ap, "support": int(real[j]), "threshold": float(cut[j])}
    micro_p, micro_r = _ratio(hits.sum(), said.sum()), _ratio(hits.sum(), real.sum())
    subset = float(np.mean((decided == truth).all(axis=1))) if len(truth) else 0.0
    loss = -np.mean(truth * np.log(p) + (~truth) * np.log(1 - p)) if len(truth) else 0.0
    return {"loss": float(loss), "accuracy": subset, "subset_accuracy": subset, "micro_f1": _f1(micro_p, micro_r),
            "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
            "mean_average_precision": float(np.mean(precisions)), "per_label": per_label, "count": len(truth)}


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """``sum_n (R_n - R_{n-1}) P_n`` over the thresholds at each distinct score, highest first (scikit-learn's
    definition; no interpolation); 0 for a label no image has."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(truth[order])
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last image of each distinct score
    precision, recall = hits[last] / (last + 1), hits[last] / truth.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tune_thresholds(probabilities: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per label, the threshold (among the probabilities seen, and 0.5) that maximises its F1 on these images;
    ties go to the one nearest 0.5. A label no image has keeps 0.5."""
    truth = np.asarray(truth, dtype=bool)
    chosen = np.full(truth.shape[1], MULTI_LABEL_THRESHOLD)
    for j in range(truth.shape[1]):
        if not truth[:, j].any():
            continue
        candidates = np.unique(np.r_[probabilities[:, j], MULTI_LABEL_THRESHOLD])
        scores = [_f1_at(probabilities[:, j], truth[:, j], t) for t in candidates]
        best = max(scores)
        chosen[j] = min((t for t, s in zip(candidates, scores) if s == best),
                        key=lambda t: abs(t - MULTI_LABEL_THRESHOLD))
    return chosen


def _f1_at(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    decided = scores >= threshold
    hits = int((decided & truth).sum())
    return _f1(_ratio(hits, int(decided.sum())), _ratio(hits, int(truth.sum())))


def _ratio(part, whole) -> float:
    return float(part / whole) if whole else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
