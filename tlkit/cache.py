"""On-disk caches keyed by what they were computed from.

A cache folder's name is a hash of its *recipe*: a JSON-able record of every input
(files with their sizes and mtimes, image size, weights...). The same recipe finds
the same folder; any change finds a new one. A folder is built under a temporary
name and renamed into place whole, so a half-built cache is never found, and it lists
its files' sizes and CRC-32s, so a cache damaged later is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tlkit.files import damage, readable_by_all, write_checksums

log = logging.getLogger("tlkit")

#: The file a finished cache folder always holds (its recipe).
MANIFEST = "manifest.json"
#: Caches are checked for damage, not tampering: CRC-32 reads at memory speed.
CACHE_CHECKSUM = "crc32"


def file_records(files: list[Path], root: Path) -> list[list]:
    """``[relative name, size, mtime_ns, ctime_ns]`` of each file: what a recipe compares.

    The inode change time catches what the modification time does not, such as a ``chmod``
    that makes an unreadable (so skipped) file readable.
    """
    records = []
    for path in files:
        stat = os.stat(path)
        records.append([relative_name(path, root), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])
    return records


def relative_name(path: Path, root: Path) -> str:
    """A dataset file's name relative to the dataset folder: the same however the folder was spelled."""
    return path.relative_to(root).as_posix()


def cache_folder(cache_dir: str | Path, kind: str, recipe: dict) -> Path:
    """The folder of the ``kind`` cache (``features``, ``images``) computed from ``recipe``."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / kind / key


def is_built(folder: Path) -> bool:
    """True when ``folder`` is a finished cache whose files all match their checksums.

    A finished folder with a truncated, altered or missing file (a disk filled up, a copy cut
    short, a stray edit) is removed, so that it is built again instead of being trusted.
    """
    if not (folder / MANIFEST).is_file():
        return False
    problem = damage(folder)
    if problem is not None:
        log.warning("cache %s is damaged (%s); building it again", folder, problem)
        _remove(folder)
        return False
    return True


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; when the block succeeds it becomes ``folder``, whole.

    If another process finished the same cache meanwhile, its folder is kept and ours dropped:
    a finished cache is only ever replaced when it is damaged. Staging folders left by killed
    processes are removed first.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
    try:
        yield staging
        write_checksums(staging, CACHE_CHECKSUM)
        readable_by_all(staging)
        try:
            os.rename(staging, folder)  # one step; refused while another process's folder is there
        except OSError:
            if is_built(folder):
                return  # finished first by another process: keep theirs
            _remove(folder)  # an unfinished folder of the same recipe
            os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Move ``folder`` aside in one rename, then delete it: no reader finds it half-deleted."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.removed.", dir=folder.parent))
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        pass  # removed meanwhile by another process
    shutil.rmtree(aside, ignore_errors=True)


def _remove_abandoned(folder: Path) -> None:
    """Delete the staging folders of ``folder`` left by processes that no longer run (killed mid-build)."""
    for leftover in folder.parent.glob(f".{folder.name}.*"):
        pid = leftover.name.split(".")[2]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


class RowFile:
    """An ``.npy`` array read and written a row range at a time with plain file I/O.

    Unlike a memory map, rows pass through the page cache without staying in the process's
    resident memory, so building or streaming a cache of any size keeps memory flat. The file
    is an ordinary ``.npy`` (``np.load(path, mmap_mode="r", allow_pickle=False)`` reads it back).
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
        """Write ``rows`` at row ``start`` onwards (all of them: a short write is continued)."""
        data = memoryview(np.ascontiguousarray(rows, self.dtype).tobytes())
        position = self.offset + start * self.row_bytes
        while data:
            written = os.pwrite(self.handle.fileno(), data, position)
            data, position = data[written:], position + written

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive), as a new array.

        Raises:
            OSError: If the file holds fewer bytes than its header promises (truncated).
        """
        size = (stop - start) * self.row_bytes
        raw = os.pread(self.handle.fileno(), size, self.offset + start * self.row_bytes)
        if len(raw) != size:
            raise OSError(f"{self.path} is truncated: rows {start}-{stop} are missing")
        return np.frombuffer(raw, self.dtype).reshape(stop - start, *self.shape[1:])

    def close(self) -> None:
        """Close the file; a written file is flushed to disk first."""
        if self.handle.mode != "rb":
            os.fsync(self.handle.fileno())
        self.handle.close()

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
