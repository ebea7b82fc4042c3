"""Scanning a dataset folder: class sub-folders, the folder's own split (or one drawn by
:mod:`tlkit.data.split`), and files for prediction.

Hidden entries are ignored (and said so); broken or looping symlinks, folders that cannot be listed
and special files are skipped and named.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import numpy as np

from tlkit.config import DataConfig
from tlkit.data.index import DatasetIndex
from tlkit.data.split import stratified_split
from tlkit.data.table import is_table, scan_table
from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: Folder names accepted for each split of a pre-split dataset.
SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
#: Names listed in one log line at most; the rest are counted.
LISTED_NAMES = 10

def scan(root: str | Path, config: DataConfig) -> DatasetIndex:
    """Index a dataset folder: pre-split (``train/`` + ``validation/``|``val/`` [+ ``test/``]) or plain; or
    images labelled by a CSV (``root`` the CSV, or ``root`` the images folder and ``config.labels`` the CSV).

    A plain folder of class sub-folders is split here: per class, files are
    shuffled with ``config.seed`` and the first ``val_split`` / ``test_split``
    fractions go to validation / test, so every class is represented in every split
    and the same files give the same split each time.

    Hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``...) are ignored, listed in one
    INFO line; broken symlinks, symlink loops, folders that cannot be listed and special
    files are skipped with a warning naming each, and recorded in ``DatasetIndex.skipped``.

    Raises:
        TlkitError: If the folder is missing, holds no class folders or an empty one, or its
            splits' classes differ; for a CSV, see :func:`tlkit.data.table.read_table`.
    """
    root = Path(root)
    if config.labels or is_table(root):
        return scan_table(root, config)
    if not root.exists():
        raise TlkitError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise TlkitError(f"dataset path is not a folder: {root}; give the folder that holds the class folders")
    walk = _Walk(root)
    try:
        class_names, by_split, presplit = _classes_by_split(root, walk, config)
    finally:
        walk.log_hidden()
    files, labels = {}, {}
    for split, classes in by_split.items():
        pairs = [(path, class_names.index(name)) for name in class_names for path in classes[name]]
        files[split] = [path for path, _ in pairs]
        labels[split] = np.array([label for _, label in pairs], dtype=np.int32)
    return DatasetIndex(root, class_names, files, labels, presplit, walk.skipped)


def require_classes(index: DatasetIndex) -> None:
    """Check that a dataset has the two or more classes a classifier needs.

    Raises:
        TlkitError: Naming the folder and how many class folders it has.
    """
    if len(index.class_names) < 2:
        if index.labels_file is not None:
            raise TlkitError(f"labels file {index.labels_file} has {len(index.class_names)} label(s); a classifier "
                             "needs at least 2")
        raise TlkitError(f"{index.root} has {len(index.class_names)} class folder(s); a classifier needs at "
                         "least 2: add a folder of images per class")


def _classes_by_split(root: Path, walk: _Walk, config: DataConfig
                      ) -> tuple[tuple[str, ...], dict[str, dict[str, list[Path]]], bool]:
    """``(class names, split -> class -> files, presplit)``: the folder's own split, or one drawn here."""
    split_dirs = _find_split_dirs(root)
    if not split_dirs:
        by_class = _class_files(root, walk)
        return tuple(sorted(by_class)), stratified_split(by_class, config), False
    if "train" not in split_dirs or "val" not in split_dirs:
        raise TlkitError(
            f"{root} has {', '.join(d.name for d in split_dirs.values())}/ but a split dataset needs "
            "both train/ and validation/ (or val/)"
        )
    for folder in split_dirs.values():  # entered first: a symlink into one ends there
        walk.enter(folder)
    by_split = {split: _class_files(folder, walk) for split, folder in split_dirs.items()}
    class_names = tuple(sorted(by_split["train"]))
    for split, classes in by_split.items():
        if set(classes) != set(class_names):
            raise TlkitError(
                f"classes of {split_dirs[split].name}/ ({', '.join(sorted(classes))}) differ from "
                f"train/ ({', '.join(class_names)}); every split needs the same class folders"
            )
    return class_names, by_split, True


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found


def _class_files(folder: Path, walk: _Walk) -> dict[str, list[Path]]:
    """Class name -> sorted files under it (recursively), for each sub-folder of ``folder``."""
    # Every class folder is entered before any is walked, so that no symlink leads one class into another.
    subfolders = [path for path, info in walk.entries(folder) if stat.S_ISDIR(info.st_mode) and walk.enter(path, info)]
    classes = {path.name: walk.files(path) for path in subfolders}
    if not classes:
        raise TlkitError(f"no class sub-folders in {folder}; expected one folder of images per class")
    empty = [name for name, paths in classes.items() if not paths]
    if empty:
        raise TlkitError(f"class folder(s) with no files in {folder}: {', '.join(empty)}; "
                         "add images to them or remove them")
    return classes


class _Walk:
    """Lists the files under a folder, recursively, keeping a record of what it leaves out.

    Hidden entries (a dot-file, a dot-folder and all inside it) are ignored and noted in
    ``hidden``. Broken symlinks, symlink loops (a symlink to itself, or to a folder it is
    inside), folders that cannot be listed and special files (FIFOs, sockets, devices) are
    skipped, with a warning, into ``skipped``. Symlinks to other folders are followed, but
    each real folder is entered once: a second way into one is skipped too.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: dict[str, str] = {}
        self.hidden: list[Path] = []
        self.entered: set[tuple[int, int]] = set()
        self.enter(root)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped[str(path)] = reason
        log.warning("skipped %s (%s)", path, reason)

    def enter(self, folder: Path, info: os.stat_result | None = None) -> bool:
        """Mark ``folder`` entered; False, and skipped, when it already was (reached again through a symlink)."""
        info = folder.stat() if info is None else info
        if (info.st_dev, info.st_ino) in self.entered:
            self.skip(folder, f"reached again through a symlink: {os.path.realpath(folder)} is already scanned")
            return False
        self.entered.add((info.st_dev, info.st_ino))
        return True

    def entries(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        """The visible entries of ``folder`` with their status (symlinks followed), sorted by name."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            self.skip(folder, f"cannot list the folder: {exc.strerror}")
            return []
        found = []
        for name in names:
            path = folder / name
            if name.startswith("."):
                self.hidden.append(path)
                continue
            try:
                info = path.stat()
            except OSError as exc:
                self.skip(path, _unreachable(path, exc))
                continue
            if stat.S_ISDIR(info.st_mode) and _leads_back(path, folder):
                self.skip(path, f"symlink loop: leads back to {os.path.realpath(path)}, a folder it is inside")
                continue
            found.append((path, info))
        return found

    def files(self, folder: Path) -> list[Path]:
        """Every file under ``folder``, recursively, sorted."""
        found = []
        for path, info in self.entries(folder):
            if stat.S_ISDIR(info.st_mode):
                if self.enter(path, info):
                    found.extend(self.files(path))
            elif stat.S_ISREG(info.st_mode):
                found.append(path)
            else:
                self.skip(path, "not a regular file (a FIFO, socket or device)")
        return sorted(found)

    def log_hidden(self) -> None:
        """One INFO line naming the hidden entries ignored, so that nothing is left out silently."""
        if self.hidden:
            names = [path.relative_to(self.root).as_posix() for path in self.hidden]
            log.info("ignored %d hidden file(s)/folder(s) in %s: %s", len(names), self.root, listing(names))


def _leads_back(path: Path, folder: Path) -> bool:
    """True when ``path``, in ``folder``, resolves to ``folder`` or a folder holding it: a symlink loop."""
    target = os.path.realpath(path)
    return os.path.commonpath([target, os.path.realpath(folder)]) == target


def _unreachable(path: Path, exc: OSError) -> str:
    """Why ``path``, listed in its folder, cannot be followed (usually a bad symlink)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: too many levels of symbolic links"
    if path.is_symlink() and exc.errno == errno.ENOENT:
        return f"broken symlink: its target {os.readlink(path)} does not exist"
    return f"cannot read: {exc.strerror}"


def listing(names: list[str]) -> str:
    """The first :data:`LISTED_NAMES` names, then how many more."""
    shown = ", ".join(names[:LISTED_NAMES])
    return shown if len(names) <= LISTED_NAMES else f"{shown} and {len(names) - LISTED_NAMES} more"



def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into a list of files, for prediction.

    Inside folders, hidden entries are ignored (one INFO line names them) and broken or
    looping symlinks are skipped with a warning, as :func:`scan` does.

    Raises:
        TlkitError: If a path does not exist, or nothing is found at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walk = _Walk(path)
            found.extend(walk.files(path))
            walk.log_hidden()
        elif path.is_file():
            found.append(path)
        else:
            raise TlkitError(f"no such file or folder: {path}")
    if not found:
        raise TlkitError(f"no files found in {', '.join(map(str, paths))}; give image files or folders holding some")
    return found
