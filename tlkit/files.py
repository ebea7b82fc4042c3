"""Files written whole or not at all, and checked before they are trusted.

Every file tlkit writes goes to a temporary name in the same folder, is flushed to disk,
then renamed over its final name, so a crash leaves the old file or the new one, never
half of one. Folders that must be used whole (a cache, a run, a checkpoint) carry a
``checksums.json`` of their files' sizes and digests: a file truncated or altered later
(a disk error, a copy cut short, a hand edit) is detected before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError

#: The list of a folder's files with their sizes and digests.
CHECKSUMS = "checksums.json"
#: Digests: ``crc32`` (fast; caches, to catch damage) and ``sha256`` (runs, to catch changes too).
ALGORITHMS = ("crc32", "sha256")
_BLOCK = 16 << 20
#: The process's umask, read once: temporary files are created private, then given the usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(temporary_path)``, flush it to disk, then rename it onto ``path``: whole or not at all."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        readable_by_all(Path(temporary))
        os.replace(temporary, path)
        fsync(path.parent)  # the rename itself survives a power cut
    finally:
        if os.path.exists(temporary):
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
    """Write ``value`` as indented JSON, atomically."""
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
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


def require_parent(path: str | Path) -> Path:
    """``path``, once its folder is known to exist (checked before any work, so a typo fails at once).

    Raises:
        TlkitError: If the folder that would hold ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise TlkitError(f"folder not found for {path}: create {path.parent} first")
    return path
