"""What an audit finds, and the thresholds it finds it at: one home for every audit default.

A :class:`Finding` names one problem: its kind (:data:`KINDS`), the file or files it concerns, a score that
ranks it among its kind, the evidence, and what to do about it. An :class:`AuditResult` holds them all with
the dataset's balance table.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

#: Every kind of finding, in the order a summary lists them, with what it means.
KINDS = {
    "exact_duplicate": "the same image twice: identical bytes, or identical pixels once decoded",
    "near_duplicate": "nearly the same image (a crop, re-encode, flip or small edit): VGG16 features almost equal, "
                      "or small grayscale thumbnails correlated (as they are, one mirrored, or one an 80-90% centred crop)",
    "label": "a label the rest of the data disagrees with: heads that never saw the image are sure it is another class",
    "outlier": "an image far, in feature space, from every class, or one that looks unlike its class's others "
               "(a drawing, render or noise among photos: VGG16's first blocks' texture statistics far from theirs)",
    "unreadable": "a file that could not be decoded as an image",
    "small": "an image much smaller than the dataset's others",
    "aspect_ratio": "an image far from square, distorted when resized to the model's square input",
    "uniform": "an image of (nearly) one colour: blank, black or overexposed",
    "grayscale": "a grayscale image among colour photos",
}

@dataclass(frozen=True)
class AuditSettings:
    """The audit's thresholds. The defaults were calibrated on real photos (see README, Dataset audit).

    Attributes:
        near_duplicate: Cosine similarity of two images' pooled VGG16 features at or above which they are
            near duplicates (crops, edits).
        near_pixels: Correlation of two images' 16x16 grayscale thumbnails (as they are, one mirrored, or one of an
            80-90% centred crop) at or above which they are near duplicates too (re-encodes, re-exposures, mirror
            images, crops).
        outlier_score: Outliers: an image is one when its similarity to each class's mean direction is, for every
            class, this many robust standard deviations (1.4826 MAD) below that of the class's median image.
        look_score: Outliers too: an image whose look (the texture statistics of VGG16's first blocks) is this
            many robust standard deviations further from its class's typical look than the class's median image.
        label_floor: Label errors: the most probability of its given label an image flagged may have (its likeliest
            class being another).
        folds: Label errors: folds of the out-of-fold heads (each image's probabilities come from a head that
            never saw it).
        small_fraction: Small: shorter side below this fraction of the dataset's median shorter side.
        aspect_ratio: Aspect ratio: long side over short side above this.
        uniform_std: Uniform: standard deviation of the pixel values (0-255) below this.
        grayscale_difference: Grayscale: mean absolute difference between colour channels (0-255) below this,
            flagged only while most of the dataset's images are in colour.
        imbalance: Balance: a largest-to-smallest class ratio above this advises ``--class-weight auto``.
        worst: Findings of each kind named in the console summary.
    """

    near_duplicate: float = 0.90
    near_pixels: float = 0.95
    outlier_score: float = 5.0
    look_score: float = 15.0
    label_floor: float = 0.01
    folds: int = 5
    small_fraction: float = 0.25
    aspect_ratio: float = 3.0
    uniform_std: float = 4.0
    grayscale_difference: float = 1.0
    imbalance: float = 1.5
    worst: int = 3


@dataclass(frozen=True)
class Finding:
    """One problem of the dataset.

    Attributes:
        kind: One of :data:`KINDS`.
        paths: The file it concerns, or every file of a duplicate group.
        score: Ranks findings of one kind, larger is worse (similarity, probability that the label is wrong...).
        evidence: What the finding rests on, as plain JSON values (splits, labels, probabilities...).
        suggestion: What to do about it, in words.
        suggestion_label: For a label finding, the label the data suggests.
    """

    kind: str
    paths: tuple[str, ...]
    score: float
    evidence: dict = field(default_factory=dict)
    suggestion: str = ""
    suggestion_label: str | None = None

    def to_dict(self) -> dict:
        """The finding as JSON values, with ``path`` (its first file) for single-file readers."""
        return {"kind": self.kind, "path": self.paths[0], **dataclasses.asdict(self), "paths": list(self.paths)}


@dataclass(frozen=True)
class AuditResult:
    """What :func:`tlkit.audit` returns.

    Attributes:
        data: The dataset folder.
        class_names: Class names in label order.
        images: Readable images audited, per split.
        findings: Every finding, kind by kind (in :data:`KINDS` order), worst first within a kind.
        balance: Images per class and split: ``{class: {split: count}}``.
        imbalance_ratio: Largest class over smallest, all splits together.
        leaked: Per held-out split (val, test), its images with an exact or near twin in the train split (directly
            or through a chain of near pairs): each could be scored right by memory alone, so that split's accuracy
            may be inflated by up to that many images.
        settings: The thresholds used.
        features: The feature-cache folder the audit read.
        seconds: Time spent per stage.
        twins: Every image with an exact or near twin, grouped by the chains of pairs that join them (what
            :mod:`tlkit.auditing.fix` keeps on one side).
        members: ``(path, label, split)`` of every file of the dataset, unreadable ones included, in split order.
        unchecked: Kinds the audit could not look for, each with why (``{"label": "..."}``): none found is not
            none there.
    """

    data: str
    class_names: tuple[str, ...]
    images: dict[str, int]
    findings: list[Finding]
    balance: dict[str, dict[str, int]]
    imbalance_ratio: float
    leaked: dict[str, int]
    settings: AuditSettings
    features: str
    seconds: dict[str, float] = field(default_factory=dict)
    twins: list[list[str]] = field(default_factory=list)
    members: list[tuple[str, str, str]] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)

    def leak_notes(self) -> dict[str, str]:
        """Per held-out split, one sentence on its images with a twin in train (what they may inflate)."""
        notes = {}
        for split, count in self.leaked.items():
            total = self.images.get(split, 0)
            if count and total:
                notes[split] = (f"{count} of {total} {split} images ({100 * count / total:.1f}%) have an exact or near "
                                f"twin in train: {split} accuracy may be inflated by up to {100 * count / total:.1f} "
                                "points")
            elif total:
                notes[split] = f"no {split} image has an exact or near twin in train"
        return notes

    def relative(self, path: str) -> str:
        """A finding's path relative to the dataset folder."""
        return os.path.relpath(path, self.data)

    def of_kind(self, kind: str) -> list[Finding]:
        """The findings of one kind, worst first."""
        return [finding for finding in self.findings if finding.kind == kind]

    def counts(self) -> dict[str, int]:
        """Findings per kind, every kind listed."""
        return {kind: len(self.of_kind(kind)) for kind in KINDS}

    @property
    def advise_class_weight(self) -> bool:
        """Whether the classes are unbalanced enough to train with ``--class-weight auto``."""
        return self.imbalance_ratio > self.settings.imbalance

    def to_dict(self) -> dict:
        """Everything as plain JSON values."""
        return {"data": self.data, "class_names": list(self.class_names), "images": self.images,
                "counts": self.counts(), "balance": self.balance, "imbalance_ratio": self.imbalance_ratio,
                "advise_class_weight": self.advise_class_weight, "leaked": self.leaked, "twins": self.twins,
                "settings": dataclasses.asdict(self.settings), "features": self.features, "seconds": self.seconds,
                "unchecked": self.unchecked, "findings": [finding.to_dict() for finding in self.findings]}
