"""A dataset's files by split, with their labels: what :func:`tlkit.data.scan` finds and everything after it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetIndex:
    """The files of a dataset, by split, with integer labels into ``class_names``.

    Attributes:
        root: The dataset folder.
        class_names: Class folder names, sorted; a label is an index into it.
        files: Per split, the image paths (sorted within each class).
        labels: Per split, an int array of labels aligned with ``files``.
        presplit: True when the folder brought its own train/validation split.
        skipped: ``{path: reason}`` for entries rejected while scanning (broken or looping
            symlinks, folders that cannot be listed, special files, rows of a labels CSV whose file is
            missing); they are in no split.
        labels_file: The CSV the labels come from (:mod:`tlkit.data.table`), or ``None`` for class folders.
        multi_label: Each image has any number of the labels: ``class_names`` names them, and ``labels``
            holds a ``(files, labels)`` 0/1 array per split.
    """

    root: Path
    class_names: tuple[str, ...]
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    presplit: bool
    skipped: dict[str, str] = field(default_factory=dict)
    labels_file: Path | None = None
    multi_label: bool = False

    def label_text(self, label) -> str:
        """A label (an index, or a multi-label 0/1 row) as its name(s): ``cat``, ``cat;outdoor``."""
        if self.multi_label:
            return ";".join(name for name, on in zip(self.class_names, label) if on)
        return self.class_names[int(label)]

    def present(self, labels: np.ndarray) -> np.ndarray:
        """Per class (or label), whether any of ``labels`` (some of a split's) has it."""
        if self.multi_label:
            return np.asarray(labels).reshape(-1, len(self.class_names)).any(axis=0)
        return np.isin(np.arange(len(self.class_names)), labels)

    def counts(self) -> dict[str, int]:
        """Number of files in each split."""
        return {split: len(paths) for split, paths in self.files.items()}

    def all_files(self) -> list[Path]:
        """Every file of every split, in split order (the order features are cached in)."""
        return [path for split in SPLIT_NAMES for path in self.files.get(split, [])]
