"""Files and folders written whole or not at all, checked before they are trusted, and keyed caches.

Every file tlkit writes goes to a temporary name in the same folder, is flushed to disk, then renamed
over its final name (:func:`atomic_write`); a folder is built under a temporary name beside its final
one and renamed into place whole (:func:`atomic_folder`). A crash leaves the old file or folder or the
new one, never half of one. Folders that must be used whole (a cache, a run) carry a ``checksums.json``
of their files' sizes and digests: a file truncated or altered later (a disk error, a copy cut short, a
hand edit) is detected before it is used.

A cache folder's name is a hash of its *manifest*: a JSON-able record of every input (files with their
sizes and times, image size, weights...). The same manifest finds the same folder; any change finds a
new one (:func:`cache_folder`). :class:`RowFile` reads and writes ``.npy`` tables a row range at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tlkit.errors import TlkitError
from tlkit.outputs import DiskError, disk_error_number, disk_errors, json_text, refuse_to_replace

log = logging.getLogger("tlkit")

#: The list of a folder's files with their sizes and digests.
CHECKSUMS = "checksums.json"
#: Digests: ``crc32`` (fast; caches, to catch damage) and ``sha256`` (runs, to catch changes too).
ALGORITHMS = ("crc32", "sha256")
_BLOCK = 16 << 20
#: The process's umask, read once: temporary files are created private, then given the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(temporary_path)``, flush it to disk, then rename it onto ``path``: whole or not at all.

    A ``path`` that is not a regular file is refused; a full disk is a one-line error (:mod:`tlkit.outputs`).
    """
    path = Path(path)
    refuse_to_replace(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    temporary = None
    try:
        with disk_errors(path):
            handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
            os.close(handle)
            write(temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
            readable_by_all(Path(temporary))
            os.replace(temporary, path)
            fsync(path.parent)  # the rename itself survives a power cut
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def readable_by_all(path: Path) -> None:
    """Give a temporary file or folder (created private) the mode an ordinary one would have under the umask."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


def fsync(path: Path) -> None:
    """Flush a file or a folder (its entries: a rename in it) to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (never NaN or an infinity: :func:`~tlkit.outputs.json_text`)."""
    text = json_text(value, path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: Path) -> Any:
    """Read a JSON file of a run or cache, with a one-line error if it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TlkitError(f"missing {path.name} in {path.parent}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TlkitError(f"damaged {path}: {exc}") from None


def digest(path: str | Path, algorithm: str) -> str:
    """The ``crc32`` or ``sha256`` digest of a file, as hex."""
    if algorithm == "crc32":
        value = 0
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                value = zlib.crc32(block, value)
        return f"{value:08x}"
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def write_checksums(folder: Path, algorithm: str, pending: dict[str, Path] | None = None) -> None:
    """Record the size and digest of every file in ``folder`` (dot-files aside) in its ``checksums.json``.

    Args:
        folder: The folder.
        algorithm: One of :data:`ALGORITHMS`.
        pending: Files to list under a name they do not have yet: ``{final name: temporary path}``.
    """
    files = {p.name: p for p in sorted(folder.iterdir())
             if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".")}
    files.update(pending or {})
    records = {name: [path.stat().st_size, digest(path, algorithm)] for name, path in files.items()}
    write_json(folder / CHECKSUMS, {"algorithm": algorithm, "files": records})


def damage(folder: Path) -> str | None:
    """What is wrong with ``folder``'s files against its ``checksums.json``, or ``None`` if they all match."""
    try:
        record = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        algorithm, files = record["algorithm"], record["files"]
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{CHECKSUMS} is missing or damaged ({type(exc).__name__})"
    for name, (size, expected) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes instead of {size} (truncated or overwritten)"
        if digest(path, algorithm) != expected:
            return f"{name} does not match its {algorithm} checksum (damaged or modified)"
    return None


@contextmanager
def atomic_folder(folder: Path, checksums: str | None = None,
                  keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; when the block succeeds it is flushed to disk (with a
    ``checksums.json`` of ``checksums``' algorithm, if given) and renamed to ``folder``, whole.

    Args:
        folder: The final folder; its parent must exist.
        checksums: One of :data:`ALGORITHMS`, or ``None`` for no ``checksums.json``.
        keep_existing: When ``folder`` appeared meanwhile: called with it; ``True`` keeps it (and drops
            ours), ``False`` replaces it. Without it, the rename's error is raised.
    """
    refuse_to_replace(folder, folder=True)
    with disk_errors(folder):
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
    try:
        yield staging
        if checksums is not None:
            write_checksums(staging, checksums)
        for path in sorted(staging.rglob("*"), reverse=True):  # files before the folders holding them
            fsync(path)
        fsync(staging)
        readable_by_all(staging)
        try:
            os.rename(staging, folder)  # one step; refused while a non-empty folder is there
        except OSError:
            if keep_existing is None:
                raise
            if keep_existing(folder):
                return
            remove_folder(folder)
            os.rename(staging, folder)
        fsync(folder.parent)
    except Exception as exc:
        number = exc.number if isinstance(exc, DiskError) else disk_error_number(exc)
        if number is None:
            raise
        raise DiskError(number, _final_name(exc, staging, folder)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _final_name(exc: Exception, staging: Path, folder: Path) -> Path:
    """The file an error met in ``staging`` was about, under the name it would have had in ``folder``."""
    written = exc.path if isinstance(exc, DiskError) else getattr(exc, "filename", None)
    try:
        return folder / Path(written).relative_to(staging)
    except (TypeError, ValueError):  # no file named, or one outside the staging folder
        return folder

#: The file a finished cache folder always holds (its manifest).
MANIFEST = "manifest.json"
#: Caches are checked for damage, not tampering: CRC-32 reads at memory speed.
CACHE_CHECKSUM = "crc32"


def file_records(files: list[Path], root: Path) -> list[list]:
    """``[relative name, size, mtime_ns, ctime_ns]`` of each file: what a manifest compares.

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


def cache_folder(cache_dir: str | Path, kind: str, manifest: dict) -> Path:
    """The folder of the ``kind`` cache (``features``, ``images``) computed from ``manifest``."""
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:20]
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
        remove_folder(folder)
        return False
    return True


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Yield a staging folder that becomes the cache ``folder`` when the block succeeds (checksummed with
    :data:`CACHE_CHECKSUM`).

    If another process finished the same cache meanwhile, its folder is kept and ours dropped: a
    finished cache is only ever replaced when it is damaged. Staging folders left by killed processes
    are removed first.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    with atomic_folder(folder, CACHE_CHECKSUM, keep_existing=is_built) as staging:
        yield staging


def remove_folder(folder: Path) -> None:
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
        with disk_errors(self.path):  # inside a cache being built: named by atomic_folder
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
        with self.handle:  # closed even on a full disk: a deleted staging file then frees its space
            if self.handle.mode != "rb":
                with disk_errors(self.path):
                    os.fsync(self.handle.fileno())

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
