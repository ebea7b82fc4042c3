"""On-disk caches keyed by what they were computed from.

A cache folder's name is a hash of its *recipe*: a JSON-able record of every input
(files with their sizes and mtimes, image size, weights...). The same recipe finds
the same folder; any change finds a new one. A folder is built under a temporary
name and renamed into place whole, so a half-built cache is never found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The file a finished cache folder always holds (its recipe); written last.
MANIFEST = "manifest.json"


def file_records(files: list[Path], root: Path) -> list[list]:
    """``[relative name, size, mtime_ns]`` of each file: what a recipe compares."""
    records = []
    for path in files:
        stat = os.stat(path)
        records.append([relative_name(path, root), stat.st_size, stat.st_mtime_ns])
    return records


def relative_name(path: Path, root: Path) -> str:
    """A dataset file's name relative to the dataset folder: the same however the folder was spelled."""
    return path.relative_to(root).as_posix()


def cache_folder(cache_dir: str | Path, kind: str, recipe: dict) -> Path:
    """The folder of the ``kind`` cache (``features``, ``images``) computed from ``recipe``."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / kind / key


def is_built(folder: Path) -> bool:
    """True when ``folder`` is a finished cache."""
    return (folder / MANIFEST).is_file()


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; when the block succeeds it becomes ``folder``, whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        if folder.exists():  # an unfinished or damaged folder of the same recipe
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
