"""Likely label errors, from out-of-fold probabilities, with confident learning's estimates as evidence.

Each image's predicted probabilities come from a head that never saw it. An image is flagged when the heads
are sure it is not what its label says: its most probable class is another, and the probability of its given
label is at most ``floor`` (:attr:`~tlkit.auditing.findings.AuditSettings.label_floor`). Flagged images are
ranked by the margin ``p(suggested) - p(given)``.

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) gives the evidence: per class ``j`` a threshold
``t_j``, the average probability of ``j`` over the images labelled ``j`` (its self-confidence); the confident
joint counts each image whose probability of some class reaches that class's threshold under its given label and
the likeliest such class; calibrated to the label counts, its off-diagonal cell ``(i, j)`` estimates how many
images labelled ``i`` are really ``j``. Its own rule, flagging that many images of each cell by margin (pruning by
noise rate), was measured on planted errors (README, Dataset audit): on classes a model confuses honestly (cats
and dogs in 30-pixel thumbnails) it flagged nearly as many well-labelled images as wrong ones; the floor did not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelIssues:
    """The images confident learning flags, worst first.

    Attributes:
        rows: Row of each flagged image.
        suggested: The label the data suggests for each (its most probable other class).
        score: How surely its given label is wrong: the suggested class's probability minus the given one's.
        thresholds: Per class, the average self-confidence ``t_j``.
        joint: The calibrated confident joint: ``joint[given, true]`` estimates how many images labelled ``given``
            are really ``true``.
    """

    rows: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    thresholds: np.ndarray
    joint: np.ndarray


def confident_joint(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(joint, thresholds)``: the confident joint of given against likely labels, and the per-class
    thresholds it was counted with."""
    classes = probabilities.shape[1]
    thresholds = np.array([probabilities[labels == c, c].mean() if (labels == c).any() else 1.0
                           for c in range(classes)])
    confident = probabilities >= thresholds - 1e-6
    likely = np.where(confident, probabilities, -1.0).argmax(axis=1)
    counted = confident.any(axis=1)
    joint = np.zeros((classes, classes), np.int64)
    np.add.at(joint, (labels[counted], likely[counted]), 1)
    return joint, thresholds


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray, floor: float) -> LabelIssues:
    """The images whose given label is likely wrong (see the module docstring), worst first.

    Args:
        probabilities: ``(images, classes)`` out-of-fold probabilities (two classes: both columns).
        labels: Each image's given label.
        floor: Most probability of its given label a flagged image may have.
    """
    labels = np.asarray(labels)
    joint, thresholds = confident_joint(probabilities, labels)
    given = probabilities[np.arange(len(labels)), labels]
    rows = np.flatnonzero((probabilities.argmax(axis=1) != labels) & (given <= floor))
    suggested = probabilities[rows].argmax(axis=1)
    score = probabilities[rows, suggested] - given[rows]
    order = np.argsort(-score, kind="stable")
    return LabelIssues(rows[order], suggested[order], score[order], thresholds, calibrated_joint(joint, labels))


def calibrated_joint(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The confident joint scaled so that each row sums to the number of images with that given label: cell
    ``(i, j)`` estimates how many images labelled ``i`` are really ``j``."""
    counts = np.bincount(labels, minlength=len(joint))
    row_sums = joint.sum(axis=1, keepdims=True)
    return np.where(row_sums > 0, joint / np.maximum(row_sums, 1), 0) * counts[:, None]
