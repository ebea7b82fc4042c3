"""Labels from a CSV file, as Keras's ``flow_from_dataframe`` reads them, for a folder of images that is
not sorted into class folders.

The CSV has a ``path`` (or ``filename``) column and a ``label`` column, and may have a ``split`` column
(``train``, ``validation`` or ``val``, ``test``) that replaces the split tlkit would draw. Multi-label data
(each image any number of labels) gives several labels in one ``label`` cell (``cat;outdoor``, the separator
settable), or one 0/1 column per label instead of ``label`` (``label_columns``). Paths are relative
to the images folder: the CSV's own folder when the dataset is given as the CSV, the dataset folder when the
CSV comes with ``--labels``. Rows are numbered as a spreadsheet numbers them (the header is row 1).

A row whose file is missing, lies outside the images folder, or was listed on an earlier row is skipped and
named, as a bad image is. A CSV that cannot be read, lacks a column, has a row with an empty label or an
unknown split, or has no usable row at all is a one-line error naming the file (and the row).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.config import DataConfig
from tlkit.data.index import SPLIT_NAMES, DatasetIndex
from tlkit.data.split import iterative_split, stratified_split
from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: Accepted names of the column of image paths, in order of preference.
PATH_COLUMNS = ("path", "filename")
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
#: A ``split`` cell's accepted values, and the split each names.
SPLIT_VALUES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


@dataclass(frozen=True)
class LabelTable:
    """The usable rows of a labels CSV.

    Attributes:
        source: The CSV file.
        images: The folder its paths are relative to.
        rows: ``(file, labels, split)`` per usable row, in file order: ``labels`` a tuple of label names (one
            for single-label data, any number for multi-label), ``split`` ``None`` without a split column.
        skipped: ``{path: reason}`` of the rows left out (missing file, outside the folder, listed twice).
        multi_label: Whether the labels are multi-label: given as 0/1 columns, or several in a cell.
        label_names: Every label, in the order of the 0/1 columns, else sorted.
    """

    source: Path
    images: Path
    rows: list[tuple[Path, tuple[str, ...], str | None]]
    skipped: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False
    label_names: tuple[str, ...] = ()

    @property
    def has_splits(self) -> bool:
        """Whether the CSV gives each image's split."""
        return bool(self.rows) and self.rows[0][2] is not None


def is_table(path: str | Path) -> bool:
    """Whether a dataset path names a labels CSV rather than a folder."""
    return Path(path).suffix.lower() == ".csv" and not Path(path).is_dir()


def read_table(source: str | Path, images: str | Path | None = None, *, separator: str = ";",
               label_columns: tuple[str, ...] = ()) -> LabelTable:
    """Read a labels CSV (see the module docstring); ``images``: the folder its paths are relative to
    (default: the CSV's own folder); ``separator``: between the labels of one cell (``""``: a cell is one
    label); ``label_columns``: the 0/1 columns of multi-label data, one per label, instead of ``label``.

    Raises:
        TlkitError: If the file or folder is missing, the CSV is unreadable, lacks a column, has an empty
            label or an unknown split on a row, or has no usable row.
    """
    source = Path(source)
    images = Path(images) if images is not None else source.parent
    if not source.is_file():
        raise TlkitError(f"labels file not found: {source}")
    if not images.is_dir():
        raise TlkitError(f"images folder not found: {images} (the paths of {source} are relative to it)")
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not a column name
            table = _rows(csv.reader(handle, _dialect(handle)), source, images, _Labels(separator, label_columns))
    except UnicodeDecodeError:
        raise TlkitError(f"cannot read labels file {source}: it is not UTF-8 text") from None
    except csv.Error as exc:
        raise TlkitError(f"cannot read labels file {source}: {exc}") from None
    except OSError as exc:
        raise TlkitError(f"cannot read labels file {source}: {exc.strerror or exc}") from None
    if not table.rows:
        raise TlkitError(f"labels file {source} has no usable row (every file it names is missing or repeated)"
                         if table.skipped else f"labels file {source} has no rows under its header")
    return table


def read_labels(root: Path, config: DataConfig) -> LabelTable:
    """The labels CSV of a dataset as ``config`` says to read it: ``root`` itself, or ``config.labels`` for the
    images folder ``root``, with its separator and label columns (see :func:`read_table`)."""
    return read_table(config.labels or root, root if config.labels else None, separator=config.label_separator,
                      label_columns=config.label_column_names)


def scan_table(root: Path, config: DataConfig) -> DatasetIndex:
    """The index of images labelled by a CSV (``root``, or the images folder ``root`` with ``config.labels``):
    its split column's split, or one drawn as for a plain folder (multi-label data: by
    :func:`tlkit.data.split.iterative_split`).

    Raises:
        TlkitError: As :func:`read_table`; or without train or validation rows, or a label without a train image.
    """
    if config.labels and not root.is_dir():
        raise TlkitError(f"with labels from {config.labels}, the dataset is the folder of its images: {root} is "
                         "not a folder" + (" (give the CSV as the dataset, without --labels)" if is_table(root) else ""))
    table = read_labels(root, config)
    files = [path for path, _, _ in table.rows]
    if table.multi_label:
        class_names = table.label_names
        targets = np.array([[name in names for name in class_names] for _, names, _ in table.rows], dtype=np.uint8)
    else:
        class_names = tuple(sorted({names[0] for _, names, _ in table.rows}))
        targets = np.array([class_names.index(names[0]) for _, names, _ in table.rows], dtype=np.int32)
    if table.has_splits:
        groups: dict[str, list[int]] = {}
        for i, (_, _, split) in enumerate(table.rows):
            groups.setdefault(split, []).append(i)
        missing = [name for name in ("train", "val") if name not in groups]
        if missing:
            raise TlkitError(f"labels file {table.source} gives no {' and no '.join(missing)} images in its split "
                             "column; a split dataset needs both train and validation rows")
    elif table.multi_label:
        groups = iterative_split(files, targets, config)
    else:
        by_class = {name: [path for path, label in zip(files, targets) if class_names[label] == name]
                    for name in class_names}
        drawn = stratified_split(by_class, config)
        position = {path: i for i, path in enumerate(files)}
        groups = {split: [position[path] for name in class_names for path in classes[name]]
                  for split, classes in drawn.items()}
    def ordered(rows: list[int]) -> list[int]:  # by class, then path, as class folders are; multi-label: by path
        return sorted(rows, key=lambda i: (0 if table.multi_label else int(targets[i]), files[i]))

    order = {split: ordered(groups[split]) for split in SPLIT_NAMES if split in groups}
    index = DatasetIndex(table.images, class_names, {split: [files[i] for i in rows] for split, rows in order.items()},
                         {split: targets[rows] for split, rows in order.items()}, table.has_splits, table.skipped,
                         table.source, table.multi_label)
    _require_training_images(index)
    return index


def _require_training_images(index: DatasetIndex) -> None:
    """Every class (or label) needs training images."""
    untrained = [name for name, there in zip(index.class_names, index.present(index.labels["train"])) if not there]
    if untrained:
        raise TlkitError(f"labels file {index.labels_file}: {', '.join(untrained)} label no train image; every "
                         "class needs images to train on")


def _dialect(handle) -> type[csv.Dialect]:
    """Commas, or tabs when the header has tabs and no comma (a spreadsheet's tab-separated export)."""
    header = handle.readline()
    handle.seek(0)
    return csv.excel_tab if "\t" in header and "," not in header else csv.excel


@dataclass(frozen=True)
class _Labels:
    """How a row's labels are read: ``separator`` within the label cell, or 0/1 ``columns``."""

    separator: str
    columns: tuple[str, ...]

    def missing(self, header: list[str]) -> list[str]:
        """The label columns the header lacks."""
        wanted = [name.lower() for name in self.columns] or [LABEL_COLUMN]
        return [name for name in wanted if name not in header]

    def read(self, cell: dict[str, str], where: str) -> tuple[str, ...]:
        """The labels of a row (``where`` names it in errors)."""
        if self.columns:
            values = {name: cell[name.lower()] for name in self.columns}
            bad = [f"{name}={value!r}" for name, value in values.items() if value not in ("0", "1")]
            if bad:
                raise TlkitError(f"{where}: {', '.join(bad)}; a label column holds 0 or 1")
            return tuple(name for name, value in values.items() if value == "1")
        text = cell[LABEL_COLUMN]
        parts = text.split(self.separator) if self.separator else [text]
        labels = tuple(sorted({part.strip() for part in parts if part.strip()}))
        if not labels:
            raise TlkitError(f"{where}: empty label")
        return labels


def _rows(reader, source: Path, images: Path, labels: _Labels) -> LabelTable:
    header = [name.strip().lower() for name in next(reader, [])]
    path_column = next((name for name in PATH_COLUMNS if name in header), None)
    missing = ([] if path_column else ["path (or filename)"]) + labels.missing(header)
    if missing:
        raise TlkitError(f"labels file {source} has no {' and no '.join(missing)} column (its columns: "
                         f"{', '.join(header) or 'none'}); expected path (or filename), label (or the label columns "
                         "given), and optionally split")
    wanted = (path_column, SPLIT_COLUMN, *([name.lower() for name in labels.columns] or [LABEL_COLUMN]))
    at = {name: header.index(name) for name in wanted if name in header}
    root = os.path.abspath(images)
    rows, skipped, seen = [], {}, {}
    for cells in reader:
        row = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        cell = {name: (cells[i].strip() if i < len(cells) else "") for name, i in at.items()}
        if not cell[path_column]:
            raise TlkitError(f"labels file {source}, row {row}: empty {path_column}")
        names = labels.read(cell, f"labels file {source}, row {row} ({cell[path_column]})")
        split = None
        if SPLIT_COLUMN in at:
            split = SPLIT_VALUES.get(cell[SPLIT_COLUMN].lower())
            if split is None:
                raise TlkitError(f"labels file {source}, row {row}: split {cell[SPLIT_COLUMN]!r} is not one of "
                                 f"{', '.join(SPLIT_VALUES)}")
        path = Path(os.path.normpath(images / cell[path_column]))  # an absolute path stays as it is
        reason = _unusable(path, root, seen)
        if reason:
            skipped[str(path)] = f"row {row}: {reason}"
            log.warning("skipped %s (row %d of %s: %s)", path, row, source.name, reason)
            continue
        seen[str(path)] = row
        rows.append((path, names, split))
    multi = bool(labels.columns) or any(len(names) > 1 for _, names, _ in rows)
    names = tuple(labels.columns) or tuple(sorted({name for _, row_names, _ in rows for name in row_names}))
    return LabelTable(source, images, rows, skipped, multi, names)


def _unusable(path: Path, root: str, seen: dict[str, int]) -> str | None:
    """Why a row's file cannot be used, or ``None``."""
    if os.path.commonpath([os.path.abspath(path), root]) != root:
        return "outside the images folder"
    if str(path) in seen:
        return f"listed already on row {seen[str(path)]}"
    if not path.is_file():
        return "not a regular file" if path.exists() else "file not found"
    return None
