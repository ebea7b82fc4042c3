"""``tlkit audit --fix-split``: a new split, as a labels CSV, with every group of duplicates on one side.

The CSV lists every file of the dataset with its given label and its split (the columns ``path``, ``label``,
``split`` that :mod:`tlkit.data.table` reads, paths relative to the dataset folder): unreadable ones too, so
that training on it finds the same files, and reuses the features extracted for the audit. Each group of exact or
near duplicates that spans splits (joined by any chain of pairs) goes whole to the split holding most of it (train on a tie), so that no
validation or test image has a twin in train. Labels are never changed, and no file is moved or deleted:
train on the CSV with ``tlkit train DATA --labels fixed.csv``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tlkit.auditing.findings import AuditResult
from tlkit.io import atomic_write
from tlkit.outputs import check_output

#: Where a tie goes: the split listed first.
SIDES = ("train", "val", "test")


def fixed_split(result: AuditResult) -> tuple[list[tuple[str, str, str]], int]:
    """``(rows, moved)``: ``(path relative to the dataset, label, split)`` of every file of the dataset, in split
    order, with duplicate groups kept on one side; ``moved`` counts the images whose split changed."""
    split_of = {path: split for path, _, split in result.members}
    moved = 0
    for group in result.twins:
        sides = [split_of[path] for path in group]
        if len(set(sides)) < 2:
            continue
        side = max(SIDES, key=lambda name: (sides.count(name), -SIDES.index(name)))
        for path in group:
            moved += split_of[path] != side
            split_of[path] = side
    root = Path(result.data)
    return [(Path(path).relative_to(root).as_posix(), label, split_of[path])
            for path, label, _ in result.members], moved


def write_fixed_split(result: AuditResult, out: str | Path) -> int:
    """Write :func:`fixed_split`'s rows to the CSV ``out`` (whole, or not at all); the images moved."""
    out = check_output(out)
    rows, moved = fixed_split(result)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("path", "label", "split"))
    writer.writerows(rows)
    atomic_write(out, lambda temporary: Path(temporary).write_text(text.getvalue(), encoding="utf-8"))
    return moved
