"""Cosine similarity over pooled features: near pairs a block of rows at a time, and similarity to each class.

:func:`near_pairs` multiplies a block of unit rows by the rows after it: O(n^2 d) arithmetic for n images of d
features (each pair once: the upper triangle; twice against transformed rows, mirrored or cropped), done by the
BLAS in blocks of :func:`block_rows` rows, so memory stays at one ``(block, n)`` float32 matrix
(:data:`BLOCK_BYTES`) however many images there are.
:func:`centroid_similarity` compares each image with each class's mean direction: O(n C d).
"""

from __future__ import annotations

import numpy as np

#: Most bytes of one block of similarities.
BLOCK_BYTES = 256 * 2**20
#: A spread (MAD) of zero, identical values, is taken as this, so that a robust z-score stays finite.
MIN_SPREAD = 1e-3


def median_and_spread(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The median of ``values`` along ``axis`` and their robust standard deviation (1.4826 MAD, at least
    :data:`MIN_SPREAD`): ``(values - median) / spread`` is a robust z-score."""
    median = np.median(values, axis=axis)
    spread = 1.4826 * np.median(np.abs(values - np.expand_dims(median, axis)), axis=axis)
    return median, np.maximum(spread, MIN_SPREAD)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (cosine similarity is then a dot product)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def block_rows(n: int) -> int:
    """Rows per block so that a ``(block, n)`` float32 block stays within :data:`BLOCK_BYTES`."""
    return max(1, min(n, BLOCK_BYTES // (4 * max(n, 1))))


def near_pairs(x: np.ndarray, threshold: float, other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """Every pair ``i < j`` of unit rows whose cosine similarity reaches ``threshold``: ``(i, j, similarity)``.

    With ``other`` (each row transformed: mirrored, cropped...), the higher of the similarities of ``x[i]`` with
    ``other[j]`` and of ``x[j]`` with ``other[i]``: every column, not the upper triangle only.
    """
    n, whole = len(x), other is not None
    found_i, found_j, found_s = [], [], []
    step = block_rows(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        first = 0 if whole else start  # without `other`: the upper triangle and the diagonal block
        sims = x[start:stop] @ (other if whole else x)[first:].T
        rows, cols = np.nonzero(sims >= threshold)
        keep = (cols + first != rows + start) if whole else (cols > rows)
        found_i.append(rows[keep] + start)
        found_j.append(cols[keep] + first)
        found_s.append(sims[rows[keep], cols[keep]])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    if whole:  # (i, j) and (j, i) are one pair: keep its higher similarity
        i, j = np.minimum(i, j), np.maximum(i, j)
        order = np.lexsort((-s, j, i))
        i, j, s = i[order], j[order], s[order]
        first_of_pair = np.ones(len(i), bool)
        first_of_pair[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
        i, j, s = i[first_of_pair], j[first_of_pair], s[first_of_pair]
    return i, j, s


def centroid_similarity(x: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``(images, classes)``: each unit row's cosine similarity to each class's mean direction (the unit mean of
    its rows; zeros for a class without rows)."""
    sums = np.zeros((classes, x.shape[1]), np.float64)
    np.add.at(sums, labels, x)
    return x @ unit_rows(sums.astype(np.float32)).T


def groups(pairs_i: np.ndarray, pairs_j: np.ndarray, similarity: np.ndarray) -> list[list[int]]:
    """Groups (two or more members, each sorted) in which every two members are one of the pairs (complete
    linkage), built from the most similar pair down: a chain of look-alikes (the frames of a turning object,
    say) splits into groups of true twins rather than joining into one."""
    linked = {(min(a, b), max(a, b)) for a, b in zip(pairs_i.tolist(), pairs_j.tolist())}
    group_of: dict[int, int] = {}
    members: dict[int, set[int]] = {}
    for k in np.argsort(-similarity, kind="stable").tolist():
        a, b = int(pairs_i[k]), int(pairs_j[k])
        left, right = group_of.get(a, -1 - a), group_of.get(b, -1 - b)
        if left == right:
            continue
        first, second = members.get(left, {a}), members.get(right, {b})
        if all((min(x, y), max(x, y)) in linked for x in first for y in second):
            joined = first | second
            key = min(joined)
            for old in (left, right):
                members.pop(old, None)
            members[key] = joined
            for item in joined:
                group_of[item] = key
    return sorted((sorted(group) for group in members.values()), key=lambda group: group[0])
