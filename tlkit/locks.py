"""Exclusive locks on the folders a process writes: a run while it trains, a cache while it is built.

A lock is ``fcntl.flock`` on a lock file, which names its holder (process, command, start time). The
kernel releases it when the holder ends, however it ends, so the file a killed process leaves behind
blocks nobody; a holder that ends normally removes it. A run's lock file is ``.tlkit.lock`` inside
the run folder (a dot-file: never part of the run's checksums); a cache's is ``.<name>.lock`` beside
the cache folder, which appears whole, by rename, only when it is built.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Self

from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: The lock file of a run folder, inside it.
RUN_LOCK = ".tlkit.lock"
#: Seconds an attempt to take a lock keeps trying while it is held (see :func:`_flock`).
GRACE = 0.5


class FolderLock:
    """An exclusive lock held on ``path`` (a lock file) by this process, until :meth:`release` (or the end of
    a ``with`` block)."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path, self.handle = path, handle

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @classmethod
    def try_acquire(cls, path: str | Path, wait: bool = False) -> FolderLock | None:
        """The lock on ``path`` (created if missing), or ``None`` if another process holds it (``wait``: wait for it).

        The holder's record is written into the file once it is locked.
        """
        path = Path(path)
        deadline = time.monotonic() + GRACE
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _flock(handle, wait, deadline)
            except BaseException:
                os.close(handle)
                raise
            if not locked:
                os.close(handle)
                return None
            if _same_file(path, handle):
                break
            os.close(handle)  # its holder removed that file as we locked it: lock the one there now
        lock = cls(path, handle)
        try:
            os.ftruncate(handle, 0)
            os.write(handle, json.dumps(_this_process()).encode())
        except BaseException:  # a full disk: the lock is not kept, nor its handle
            lock.release()
            raise
        return lock

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and release the lock."""
        if self.handle < 0:
            return
        handle, self.handle = self.handle, -1
        try:
            with suppress(OSError):  # a lock file left behind blocks nobody (see the module docstring)
                if _same_file(self.path, handle):
                    self.path.unlink()
        finally:
            os.close(handle)


def holder(path: str | Path) -> str:
    """Who holds the lock file ``path``, in words: ``process 1234 (tlkit train, started 18:30)``."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        started = datetime.fromisoformat(record["started"]).strftime("%H:%M")
        return f"process {record['pid']} ({record['command']}, started {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_run(run_dir: str | Path) -> FolderLock:
    """Lock a run folder for writing.

    Raises:
        TlkitError: Naming the process that holds it.
    """
    path = Path(run_dir) / RUN_LOCK
    lock = FolderLock.try_acquire(path)
    if lock is None:
        raise TlkitError(in_use(run_dir))
    return lock


def in_use(run_dir: str | Path) -> str:
    """The message for a run folder another process holds."""
    return (f"run {run_dir} is in use by {holder(Path(run_dir) / RUN_LOCK)}; wait for it or give another "
            "--run-dir")


def run_in_use(run_dir: str | Path) -> bool:
    """True while another process holds the run folder's lock (it is training, not interrupted).

    It takes the lock (shared) for an instant: :func:`_flock` makes a real acquisition meeting it try again.
    """
    path = Path(run_dir) / RUN_LOCK
    if not path.is_file():
        return False
    try:
        handle = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(handle)


@contextmanager
def building_cache(folder: Path) -> Iterator[None]:
    """Hold the lock of the cache ``folder`` while building it; if another process builds it, wait for that
    process (said so in one line naming it). Check again whether the cache is built once this returns."""
    path = folder.parent / f".{folder.name}.lock"
    lock = FolderLock.try_acquire(path)
    if lock is None:
        log.info("cache %s is being built by %s; waiting for it", folder, holder(path))
        lock = FolderLock.try_acquire(path, wait=True)
    try:
        yield
    finally:
        lock.release()


def _flock(handle: int, wait: bool, deadline: float) -> bool:
    """Lock ``handle`` exclusively: ``True`` once locked, ``False`` if another process holds it past ``deadline``
    (``wait``: wait for it however long).

    A held lock is tried again until ``deadline`` because a process that only looks (:func:`run_in_use`) holds
    it too, for the instant between two system calls: without the retry, a look could make a real acquisition
    fail. A look that takes no lock would need another kind of lock (flock has no test: ``F_GETLK`` sees POSIX
    record locks only, ``/proc/locks`` is Linux's alone), which would no longer exclude the processes of a tlkit
    that takes flock's; the retry keeps the one lock every tlkit takes, and costs only a refusal's half second.
    """
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _same_file(path: Path, handle: int) -> bool:
    """True if ``path`` is still the file open as ``handle``."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle)
    return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


def _this_process() -> dict:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    program = "tlkit" if program == "__main__.py" else program  # python -m tlkit.cli
    verb = sys.argv[1] if program == "tlkit" and len(sys.argv) > 1 and sys.argv[1].isidentifier() else ""
    return {"pid": os.getpid(), "command": f"{program} {verb}".strip(),
            "started": datetime.now().isoformat(timespec="seconds")}
