"""The split tlkit draws for a plain folder of class folders (or a labels CSV without a split column):
stratified, seeded, stable; multi-label data by iterative stratification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tlkit.config import DataConfig
from tlkit.errors import TlkitError


def stratified_split(by_class: dict[str, list[Path]], config: DataConfig) -> dict[str, dict[str, list[Path]]]:
    """Per class: rank files by a seeded hash of their name, then cut off the validation and test fractions.

    Ranking by hash rather than shuffling keeps the split stable when files are added or removed:
    each file keeps its rank, so at most the files near a cut change side.
    """
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    if config.test_split > 0:
        splits["test"] = {}
    for name in sorted(by_class):
        paths = by_class[name]
        shuffled = sorted(paths, key=lambda path: _rank(config.seed, path.name))
        n_val = _share(len(paths), config.val_split)
        n_test = _share(len(paths), config.test_split)
        if len(paths) - n_val - n_test < 1:
            raise TlkitError(f"class {name!r} has {len(paths)} file(s): too few to split off validation/test")
        splits["val"][name] = sorted(shuffled[:n_val])
        if "test" in splits:
            splits["test"][name] = sorted(shuffled[n_val:n_val + n_test])
        splits["train"][name] = sorted(shuffled[n_val + n_test:])
    return splits


def _rank(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()


def _share(count: int, fraction: float) -> int:
    """Files a fraction of ``count`` takes: rounded, and at least one when the fraction is not 0."""
    return 0 if fraction == 0 else max(1, round(count * fraction))



def iterative_split(files: list[Path], labels: np.ndarray, config: DataConfig) -> dict[str, list[int]]:
    """Split multi-label data (``labels``: ``(n, labels)`` 0/1) by iterative stratification (Sechidis,
    Tsoumakas and Vlahavas, 2011): the label with the fewest images left is dealt first, each of its images
    to the split that still wants most of that label (then most images), so that every label is spread over
    the splits in their fractions as nearly as its count allows. Images are taken in the order of a seeded hash
    of their names (stable, as :func:`stratified_split`); images with no label go where most images are
    still wanted. Returns the indices of ``files`` in each split (``test`` only when ``test_split`` > 0).
    """
    fractions = {"val": config.val_split, "test": config.test_split}
    names = ["val", "test", "train"] if config.test_split > 0 else ["val", "train"]
    shares = np.array([fractions.get(name, 1 - config.val_split - config.test_split) for name in names])
    order = sorted(range(len(files)), key=lambda i: _rank(config.seed, files[i].name))
    labels = np.asarray(labels, dtype=bool)
    wanted_labels = np.outer(shares, labels.sum(axis=0)).astype(float)  # (splits, labels)
    wanted_images = shares * len(files)
    chosen: dict[str, list[int]] = {name: [] for name in names}
    left = list(order)
    while left:
        remaining = labels[left].sum(axis=0)
        if not remaining.any():  # only images without a label are left
            for i in left:
                split = int(np.argmax(wanted_images))
                chosen[names[split]].append(i)
                wanted_images[split] -= 1
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        for i in [i for i in left if labels[i, label]]:
            split = max(range(len(names)), key=lambda s: (wanted_labels[s, label], wanted_images[s], -s))
            chosen[names[split]].append(i)
            wanted_labels[split] -= labels[i]
            wanted_images[split] -= 1
        left = [i for i in left if not labels[i, label]]
    if not chosen["train"]:
        raise TlkitError(f"{len(files)} image(s) are too few to split off validation/test")
    return {name: sorted(chosen[name]) for name in ("train", "val", "test") if name in chosen}
