"""The audit itself: everything read from what extraction caches, then judged kind by kind.

The decoded images give exact duplicates and odd images (:mod:`tlkit.auditing.files`) and, through VGG16's
first blocks, each image's look (:mod:`tlkit.auditing.looks`); the VGG16 features, pooled to unit vectors,
give near duplicates and outliers (:mod:`tlkit.auditing.similarity`) and, through out-of-fold heads, likely
label errors (:mod:`tlkit.auditing.labels`). Nothing is moved or deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.auditing.files import FileFacts, chunks, exact_groups, image_problems, read_facts, same_bytes
from tlkit.auditing.findings import KINDS, AuditResult, AuditSettings, Finding
from tlkit.auditing.labels import find_label_issues
from tlkit.auditing.looks import LOOK_LAYERS, LOOK_MIN_CLASS, LOOK_SIZE, look_scores, look_statistics
from tlkit.auditing.similarity import centroid_similarity, groups, median_and_spread, near_pairs, unit_rows
from tlkit.config import Config
from tlkit.data.index import SPLIT_NAMES
from tlkit.data.scan import require_classes, scan
from tlkit.errors import TlkitError
from tlkit.hardware import keras_backend
from tlkit.io import MANIFEST, building, cache_folder, is_built, write_json

log = logging.getLogger("tlkit")

#: Neighbours of each class a label finding shows as evidence.
EVIDENCE_NEIGHBOURS = 3
#: Bumped when the cached out-of-fold probabilities change meaning.
OOF_VERSION = 1
OOF_FILE = "probabilities.npy"
#: Bumped when the cached looks (:mod:`tlkit.auditing.looks`) change meaning.
LOOKS_VERSION = 1
LOOKS_FILE = "looks.npy"
#: What made two images near duplicates, by signal number in :func:`_near_duplicates`.
SIGNALS = ("VGG16 features nearly equal", "thumbnails correlated", "thumbnails correlated once one is cropped")


@dataclass(frozen=True)
class Audited:
    """The readable images of a dataset, one row each, in split order: their pooled features (and those
    scaled to unit length), labels, splits and paths (absolute, as text)."""

    features: np.ndarray
    x: np.ndarray
    labels: np.ndarray
    splits: list[str]
    paths: list[str]
    class_names: tuple[str, ...]

    def describe(self, row: int) -> dict:
        """The row's split and label, as evidence."""
        return {"split": self.splits[row], "label": self.class_names[self.labels[row]]}


def audit(data: str | Path, config: Config | None = None, settings: AuditSettings | None = None,
          verbose: int = 0) -> AuditResult:
    """Audit a dataset: duplicates and leaks, likely label errors, outliers, odd images and class balance.

    Args:
        data: A dataset folder (plain, or split into train/val/test) or a labels CSV, as :func:`tlkit.train`
            reads it; its split is the one training would use.
        config: Settings (image size, weights, cache, the out-of-fold heads' training...); defaults if omitted.
        settings: The audit's thresholds; :class:`AuditSettings`'s defaults if omitted.
        verbose: 0 silent, 1 progress bars while extracting.

    A class with fewer readable images than ``settings.folds`` leaves the labels unchecked (a warning, and
    ``unchecked["label"]`` says why); everything else is still audited.

    Raises:
        TlkitError: On bad data or options, or multi-label data.
    """
    config, settings = (config or Config()).replace(fit={"augmented_copies": 0}), settings or AuditSettings()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    from tlkit.data.image_cache import load_split
    from tlkit.features import extract

    index = scan(data, config.data)
    require_classes(index)
    if index.multi_label:
        raise TlkitError(f"{data} is multi-label data; tlkit audit reads single-label data (one class per image)")
    features = extract(index, config, verbose)
    parts, decoded = [], []
    for split in (name for name in SPLIT_NAMES if index.files.get(name)):
        vectors, labels, files = features.pooled(split)
        images = load_split(index, split, config)
        if [str(path) for path in images.files] != [str(path) for path in files]:  # both skip the same files
            raise TlkitError(f"the decoded images of the {split} split do not match its features; clear the cache "
                             f"({config.runtime.cache_dir}) and run again")
        parts.append((vectors, labels, [split] * len(files), [os.path.abspath(path) for path in files]))
        decoded.append(images.images)
    vectors = np.concatenate([part[0] for part in parts])
    rows = Audited(vectors, unit_rows(vectors), np.concatenate([part[1] for part in parts]),
                   [s for part in parts for s in part[2]], [p for part in parts for p in part[3]], index.class_names)
    lap("features")
    facts = read_facts([Path(p) for p in rows.paths], itertools.chain.from_iterable(chunks(d) for d in decoded))
    exact = exact_groups(facts)
    findings = [_duplicate("exact_duplicate", group, rows, 1.0, facts) for group in exact]
    findings += image_problems(facts, rows.paths, settings)
    findings += [Finding("unreadable", (path,), 1.0, {"reason": reason}, "replace or remove it: training skips it")
                 for path, reason in sorted(features.skipped.items())]
    lap("files")
    twin = np.arange(len(rows.paths))
    for group in exact:
        twin[group] = group[0]
    near, near_i, near_j = _near_duplicates(rows, facts, settings, twin)
    findings += near
    exact_i = np.array([group[0] for group in exact for _ in group[1:]], np.int64)
    exact_j = np.array([member for group in exact for member in group[1:]], np.int64)
    twins = components(np.concatenate([exact_i, near_i]), np.concatenate([exact_j, near_j]), len(rows.paths))
    lap("near_duplicates")
    findings += _outliers(rows, settings, _looks(rows, decoded, config, features.path))
    lap("outliers")
    unchecked = {}
    too_few = [f"{name} ({count})" for name, count in
               zip(rows.class_names, np.bincount(rows.labels, minlength=len(rows.class_names)))
               if count < settings.folds]
    if too_few:
        unchecked["label"] = (f"not checked: fewer readable images than {settings.folds} folds in "
                              f"{', '.join(too_few)}; give --folds a smaller number (at least 2), or add images")
        log.warning("labels %s", unchecked["label"])
    else:
        findings += _label_errors(rows, config, settings, features.path)
    lap("labels")
    balance = {name: {split: int(((rows.labels == c) & (np.array(rows.splits) == split)).sum())
                      for split in dict.fromkeys(rows.splits)} for c, name in enumerate(rows.class_names)}
    totals = [sum(counts.values()) for counts in balance.values()]
    order = {kind: position for position, kind in enumerate(KINDS)}
    findings.sort(key=lambda f: (order[f.kind], -f.evidence.get("conflict", 0), -f.evidence.get("leak", 0), -f.score))
    return AuditResult(
        data=os.path.abspath(index.root), class_names=rows.class_names,
        images={split: rows.splits.count(split) for split in dict.fromkeys(rows.splits)}, findings=findings,
        balance=balance, imbalance_ratio=max(totals) / max(1, min(totals)),
        leaked=_leaked(rows, twins), settings=settings, features=str(features.path), seconds=seconds,
        twins=[[rows.paths[row] for row in group] for group in twins],
        members=[(os.path.abspath(path), index.label_text(label), split) for split in SPLIT_NAMES if index.files.get(split)
                 for path, label in zip(index.files[split], index.labels[split])], unchecked=unchecked)


def _near_duplicates(rows: Audited, facts: FileFacts, settings: AuditSettings,
                     twin: np.ndarray) -> tuple[list[Finding], np.ndarray, np.ndarray]:
    """Groups of images whose features are nearly the same, or whose thumbnails correlate (as they are, one
    mirrored, or one a centred crop of the other), each two of a group a pair; exact duplicates (``twin``: each
    row's first exact twin) left out. With the groups, every near pair ``(i, j)``: a pair left out of a group (a
    chain) still leaks."""
    found = [near_pairs(rows.x, settings.near_duplicate),
             near_pairs(facts.thumbnail, settings.near_pixels),
             near_pairs(facts.thumbnail, settings.near_pixels, facts.mirrored),
             *(near_pairs(facts.thumbnail, settings.near_pixels, crop) for crop in facts.zoomed)]
    i, j, score = (np.concatenate(part) for part in zip(*found))
    signal = np.repeat([0, 1, 1, *[2] * len(facts.zoomed)], [len(part[0]) for part in found])
    distinct = twin[i] != twin[j]  # exact duplicates are reported as such
    i, j, score, signal = i[distinct], j[distinct], score[distinct], signal[distinct]
    findings = []
    for group in groups(i, j, score):
        inside = np.isin(i, group) & np.isin(j, group)
        by = sorted(set(signal[inside].tolist()))
        how = " or ".join(SIGNALS[b] for b in by)
        findings.append(_duplicate("near_duplicate", group, rows, float(score[inside].max()), facts, how))
    return findings, i, j


def _duplicate(kind: str, group: list[int], rows: Audited, similarity: float, facts: FileFacts,
               how: str = "") -> Finding:
    """One finding for a group of duplicates: a conflict when their labels differ, a leak when their splits do."""
    splits = [rows.splits[row] for row in group]
    labels = [rows.class_names[rows.labels[row]] for row in group]
    conflict, leak = len(set(labels)) > 1, len(set(splits)) > 1
    if kind == "exact_duplicate":
        how = "the same bytes" if same_bytes(facts, group) else "the same pixels"
    if conflict:
        advice = f"the same image labelled {' and '.join(sorted(set(labels)))}: keep the right label, remove the rest"
    elif leak:
        advice = (f"in {' and '.join(sorted(set(splits)))}: a validation image scored by memory; keep them on one side "
                  "(--fix-split) or remove the copies")
    else:
        advice = "counted more than once in training: keep one"
    return Finding(kind, tuple(rows.paths[row] for row in group), similarity,
                   {"splits": splits, "labels": labels, "how": how, "conflict": conflict, "leak": leak}, advice)


def _outliers(rows: Audited, settings: AuditSettings, looks: np.ndarray) -> list[Finding]:
    """Images far from every class: their similarity to each class's mean direction is, for every class, far
    below what that class's own images have (a robust z-score: median and 1.4826 MAD); and images whose look
    (``looks``: :func:`tlkit.auditing.looks.look_scores`) is far from their class's others."""
    classes = len(rows.class_names)
    similarity = centroid_similarity(rows.x, rows.labels, classes)
    own = similarity[np.arange(len(rows.labels)), rows.labels]
    median, spread = (np.array(column) for column in zip(*(median_and_spread(own[rows.labels == c])
                                                            for c in range(classes))))
    z = (similarity - median) / spread
    closest = z.argmax(axis=1)
    far, odd = -z.max(axis=1) > settings.outlier_score, looks > settings.look_score
    score = np.maximum(-z.max(axis=1), looks)
    found = []
    for row in sorted(np.flatnonzero(far | odd).tolist(), key=lambda r: -score[r]):
        label, nearest = int(rows.labels[row]), int(closest[row])
        reasons = ["unlike every class"] if far[row] else []
        if odd[row]:
            reasons.append(f"looks unlike the other {rows.class_names[label]} images (a drawing, render or noise?)")
        why = " and ".join(reasons)
        found.append(Finding("outlier", (rows.paths[row],), float(score[row]), {
            **rows.describe(row), "class_similarity": float(own[row]), "class_median": float(median[label]),
            "closest_class": rows.class_names[nearest], "closest_class_similarity": float(similarity[row, nearest]),
            "distance_score": float(-z[row].max()), "look_score": float(looks[row])},
            f"{why}: check it belongs in the dataset at all"))
    return found


def _looks(rows: Audited, decoded: list[np.ndarray], config: Config, features: Path) -> np.ndarray:
    """Each image's look score (:func:`tlkit.auditing.looks.look_scores`; 0 where its class is too small to be
    judged). Its statistics are cached beside the features they were read with, keyed by them (the same files,
    in the same order)."""
    if np.bincount(rows.labels, minlength=1).max() < LOOK_MIN_CLASS:  # no class judged: nothing to compute
        return np.zeros(len(rows.labels))
    wanted = {"version": LOOKS_VERSION, "features": features.name, "size": LOOK_SIZE, "layers": list(LOOK_LAYERS),
              "backend": keras_backend()}
    folder = cache_folder(config.runtime.cache_dir, "audit", wanted)
    if not is_built(folder):
        statistics = look_statistics(itertools.chain.from_iterable(chunks(images) for images in decoded),
                                     config.model.weights)
        with building(folder) as staging:
            np.save(staging / LOOKS_FILE, statistics, allow_pickle=False)
            write_json(staging / MANIFEST, wanted)
    return look_scores(np.load(folder / LOOKS_FILE, allow_pickle=False), rows.labels, len(rows.class_names))


def out_of_fold(rows: Audited, config: Config, folds: int, features: Path) -> np.ndarray:
    """The out-of-fold probabilities of ``rows`` (see :func:`tlkit.training.cv.out_of_fold_probabilities`), cached
    beside the features: keyed by them, the images and labels, the folds and the heads' settings, so that an
    audit run again (other thresholds, say) trains no head."""
    root = os.path.commonpath(rows.paths)
    wanted = {"version": OOF_VERSION, "features": features.name, "folds": folds, "seed": config.data.seed,
              "fit": dataclasses.asdict(config.fit), "model": dataclasses.asdict(config.model),
              "precision": config.runtime.precision,
              "backend": keras_backend(),
              "rows": hashlib.sha256(json.dumps([[os.path.relpath(path, root) for path in rows.paths],
                                                 rows.labels.tolist()]).encode()).hexdigest()}
    folder = cache_folder(config.runtime.cache_dir, "audit", wanted)
    if not is_built(folder):
        from tlkit.training.cv import out_of_fold_probabilities

        probabilities = out_of_fold_probabilities(rows.features[:, None, None, :], rows.labels,
                                                  len(rows.class_names), config, folds)
        with building(folder) as staging:
            np.save(staging / OOF_FILE, probabilities, allow_pickle=False)
            write_json(staging / MANIFEST, wanted)
    return np.load(folder / OOF_FILE, allow_pickle=False)


def _label_errors(rows: Audited, config: Config, settings: AuditSettings, features: Path) -> list[Finding]:
    """Confident learning on out-of-fold probabilities of heads on the pooled features."""
    probabilities = out_of_fold(rows, config, settings.folds, features)
    issues = find_label_issues(probabilities, rows.labels, settings.label_floor)
    found = []
    for row, suggested, score in zip(issues.rows.tolist(), issues.suggested.tolist(), issues.score.tolist()):
        given = int(rows.labels[row])
        found.append(Finding("label", (rows.paths[row],), float(score), {
            **rows.describe(row), "given": rows.class_names[given], "suggested": rows.class_names[suggested],
            "p_given": float(probabilities[row, given]), "p_suggested": float(probabilities[row, suggested]),
            "threshold_suggested": float(issues.thresholds[suggested]),
            "estimated_in_pair": float(issues.joint[given, suggested]), "neighbours": _neighbours(rows, row)},
            f"labelled {rows.class_names[given]}, looks like {rows.class_names[suggested]}: check it, relabel or "
            "remove it", rows.class_names[suggested]))
    return found


def _neighbours(rows: Audited, row: int) -> dict[str, list[list]]:
    """The image's nearest images of each class, ``{class: [[path, similarity], ...]}``."""
    similarity = rows.x @ rows.x[row]
    similarity[row] = -np.inf
    found = {}
    for c, name in enumerate(rows.class_names):
        members = np.flatnonzero(rows.labels == c)
        best = members[np.argsort(-similarity[members])[:EVIDENCE_NEIGHBOURS]]
        found[name] = [[rows.paths[b], float(similarity[b])] for b in best if np.isfinite(similarity[b])]
    return found


def _leaked(rows: Audited, twins: list[list[int]]) -> dict[str, int]:
    """Per held-out split, its images with an exact or near twin (directly or through a chain) in train."""
    leaked = {split: 0 for split in ("val", "test") if split in rows.splits}
    for group in twins:
        splits = [rows.splits[row] for row in group]
        if "train" in splits:
            for split in splits:
                if split in leaked:
                    leaked[split] += 1
    return leaked


def components(pairs_i: np.ndarray, pairs_j: np.ndarray, n: int) -> list[list[int]]:
    """The connected groups (two or more members, sorted) of the graph of pairs over ``n`` items."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(pairs_i.tolist(), pairs_j.tolist()):
        parent[max(root(a), root(b))] = min(root(a), root(b))
    members: dict[int, list[int]] = {}
    for a in sorted(set(pairs_i.tolist()) | set(pairs_j.tolist())):
        members.setdefault(root(a), []).append(a)
    return [group for group in members.values() if len(group) > 1]
