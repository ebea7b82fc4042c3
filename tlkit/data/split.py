"""The split tlkit draws for a plain folder of class folders: stratified, seeded, stable."""

from __future__ import annotations

import hashlib
from pathlib import Path

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

