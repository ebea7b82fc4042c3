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

import numpy as np

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


class RowFile:
    """An ``.npy`` array read and written a row range at a time with plain file I/O.

    Unlike a memory map, rows pass through the page cache without staying in the process's
    resident memory, so building or streaming a cache of any size keeps memory flat. The file
    is an ordinary ``.npy`` (``np.load(path, mmap_mode="r")`` reads it back).
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...] | None = None, dtype="float32") -> None:
        """Open ``path`` for reading, or create it (sized, zero-filled) when ``shape`` is given."""
        self.path = Path(path)
        if shape is not None:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": tuple(shape)}
            with open(self.path, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                handle.truncate(handle.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        with open(self.path, "rb") as handle:
            np.lib.format.read_magic(handle)
            self.shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            self.offset = handle.tell()
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.handle = open(self.path, "r+b" if shape is not None else "rb")

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` at row ``start`` onwards."""
        os.pwrite(self.handle.fileno(), np.ascontiguousarray(rows, self.dtype).tobytes(),
                  self.offset + start * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive), as a new array."""
        raw = os.pread(self.handle.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(raw, self.dtype).reshape(stop - start, *self.shape[1:])

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
