"""Where tlkit may write, and what it may write: output paths checked before any work, a full disk named
with the file it stopped, and JSON that stays JSON.

- :func:`check_output` is called on every path a user chooses (``--out``, ``--confusion``...) before a
  model is loaded or an image read, so a typo, a missing folder or a path that must not be replaced fails
  at once. tlkit writes a file under a temporary name and renames it over the target: that would put a
  regular file where a symbolic link or a device node was (as root, ``--out /dev/null`` would replace the
  system's ``/dev/null``), so anything there that is not a regular file (a folder, for a folder) is refused.
- :func:`disk_errors` turns a full, over-quota or read-only disk met while writing into one line naming the
  file (:class:`DiskError`), also when a library says it in its own words (TensorFlow, HDF5).
- :func:`json_text` refuses NaN and infinities, which are not JSON: a file tlkit writes stays readable by
  any JSON parser.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError

#: Errors of the disk rather than of tlkit: what each is called, and what to do.
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space and rerun"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
    errno.EFBIG: ("file too large for its file system", "write elsewhere"),
}


class DiskError(TlkitError):
    """A write refused by the disk (full, over quota, read-only), naming the file it was writing."""

    def __init__(self, number: int, path: str | Path) -> None:
        self.number, self.path = number, Path(path)
        what, todo = DISK_ERRORS[number]
        super().__init__(f"{what} writing {path}: {todo}")


def disk_error_number(exc: BaseException) -> int | None:
    """The ``errno`` of :data:`DISK_ERRORS` behind ``exc``, or ``None`` if the disk is not the cause.

    Libraries with their own I/O (TensorFlow's ``ResourceExhaustedError``, HDF5) put the system's
    message in their text instead of an ``errno``.
    """
    if isinstance(exc, TlkitError):
        return None
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        return exc.errno
    text = str(exc)
    return next((number for number in DISK_ERRORS if os.strerror(number) in text), None)


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Raise a disk's refusal met in the block (:data:`DISK_ERRORS`) as a :class:`DiskError` naming ``path``."""
    try:
        yield
    except Exception as exc:
        number = disk_error_number(exc)
        if number is None:
            raise
        raise DiskError(number, path) from None


def require_parent(path: str | Path) -> Path:
    """``path``, once its folder is known to exist (checked before any work, so a typo fails at once).

    Raises:
        TlkitError: If the folder that would hold ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise TlkitError(f"folder not found for {path}: create {path.parent} first")
    return path


def check_output(path: str | Path, *, folder: bool = False) -> Path:
    """``path``, once it is known that tlkit may write it (call it before any work).

    Its folder exists and is writable, and nothing is at ``path`` yet, or a regular file (a folder, with
    ``folder=True``) that tlkit may replace whole.

    Raises:
        TlkitError: Naming the path and what is wrong with it.
    """
    path = Path(path)
    refuse_to_replace(path, folder=folder)
    require_parent(path)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise TlkitError(f"cannot write {path}: its folder {path.parent} is not writable (permissions, or a "
                         "read-only file system); choose another place")
    return path


def refuse_to_replace(path: Path, *, folder: bool = False) -> None:
    """Refuse a ``path`` that holds what a rename must not replace: anything but a regular file (a folder,
    with ``folder=True``), a symbolic link included, whatever it points to."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
        return
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))
    what = next((name for test, name in kinds if test(mode)), "a special file")
    raise TlkitError(f"refusing to write over {path}: it is {what}; give the path of a "
                     f"{'folder' if folder else 'regular file'} or of nothing yet")


def json_text(value: Any, path: str | Path) -> str:
    """``value`` as indented JSON text for the file ``path``.

    Raises:
        TlkitError: If ``value`` holds NaN or an infinity (not JSON; a bug in tlkit), naming the file and key.
    """
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        key, number = _non_finite(value, "")
        if number is None:  # another ValueError (a circular reference...): not a number's fault
            raise
        raise TlkitError(f"not writing {path}: {key or 'its value'} is {number}, which JSON cannot hold "
                         "(a bug in tlkit: please report it)") from None


def _non_finite(value: Any, key: str) -> tuple[str, float] | tuple[None, None]:
    """The first key (``a.b[2]``) in ``value`` holding NaN or an infinity, with that number."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        children = ((f"{key}.{name}" if key else str(name), child) for name, child in value.items())
    elif isinstance(value, (list, tuple)):
        children = ((f"{key}[{index}]", child) for index, child in enumerate(value))
    else:
        return None, None
    for child_key, child in children:
        found = _non_finite(child, child_key)
        if found[0] is not None:
            return found
    return None, None
