"""What the command line settles before it loads any ML framework, and what it does with the unexpected.

A command's paths (data, images, run folders), its config file and its options are checked by
:func:`early_checks` before the command's own work starts: a missing path or a bad setting answers in
a fraction of a second, not after TensorFlow's start-up. An exception nobody foresaw becomes one line
(:func:`unexpected`), its traceback kept in a log file (and shown with ``tlkit --debug`` or
``TLKIT_DEBUG=1``).

Importing this module imports no ML framework.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from tlkit import config as cfg
from tlkit.errors import OptionError, TlkitError
from tlkit.limits import fallback_cache_dir, usable_home
from tlkit.outputs import check_output

#: Environment variable that makes every unexpected error print its traceback, as ``--debug`` does.
DEBUG_ENV = "TLKIT_DEBUG"
#: The config fields, by name (a command's keyword arguments of these names are its config flags).
FIELD_NAMES = frozenset(spec.name for section in cfg.SECTIONS.values() for spec in dataclasses.fields(section))


def _run(path: str | None) -> None:
    if path is None:
        from tlkit.runs import latest_run

        latest_run()  # raises when there is none
    elif not Path(path).is_dir():
        raise TlkitError(f"run folder not found: {path}")


def _source_run(path: str | None) -> None:
    if path is not None:
        _run(path)


def _data(path: str | None) -> None:
    if path is not None and not os.path.lexists(path):
        raise TlkitError(f"{'labels file' if path.lower().endswith('.csv') else 'dataset folder'} not found: {path}")


def _labels_table(data: str | None, config: cfg.Config) -> None:
    """A labels CSV given as the data, read as the settings say (its columns and rows): before any framework."""
    from tlkit.data.table import is_table, read_labels  # numpy and Pillow: not for --help

    if data is not None and is_table(data) and not config.data.labels:
        read_labels(Path(data), config.data)


def _labels(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise TlkitError(f"labels file not found: {path}")


def _inputs(paths: tuple[str, ...]) -> None:
    for path in paths:
        if not os.path.lexists(path):
            raise TlkitError(f"no such file or folder: {path}")


def _image(path: str) -> None:
    if not Path(path).is_file():
        raise TlkitError(f"no such image file: {path}")


def _output(path: str | None) -> None:
    if path is not None:
        check_output(path)


CHECKS: dict[str, Callable] = {"run": _run, "source_run": _source_run, "data": _data, "labels": _labels,
                               "inputs": _inputs, "image": _image, "output": _output}


def check_config(config_file: str | None, options: dict) -> cfg.Config:
    """Defaults, then the config file, then the flags given, checked whole (ranges, memory, cache folder).

    Raises:
        TlkitError: On a missing or bad file, or a value out of range.
        OptionError: When no feature-cache folder can be chosen (no ``HOME``, no ``--cache-dir``).
    """
    from tlkit.cli.parsing import build_config

    config = build_config(config_file, options)
    _labels(config.data.labels or None)
    if (config.runtime.cache_dir == fallback_cache_dir() and usable_home() is None
            and not os.environ.get(cfg.CACHE_ENV)):
        raise OptionError("HOME is not set (or empty), so there is no default feature-cache folder: give "
                          f"--cache-dir or set {cfg.CACHE_ENV}")
    config.check_memory()
    return config


def early_checks(*, config: bool = False, **params: str) -> Callable[[Callable], Callable]:
    """Decorator checking a command's arguments before its work: each keyword names a parameter and what
    it holds (``run``, ``source_run``, ``data``, ``inputs``, ``image``, ``output``: a file to write), checked in the
    order given, then
    (``config``) the config file and flags. A positional run (``legacy_run``, the former form of
    ``--run``) is taken as ``--run`` with a deprecation notice."""

    def decorate(command):
        @functools.wraps(command)
        def checked(*args, **kwargs):
            legacy = kwargs.pop("legacy_run", None)
            if legacy is not None:
                if kwargs.get("run_dir") not in (None, legacy):
                    raise OptionError("name the run once, as --run RUN")
                name = click.get_current_context().info_name
                click.echo(f"tlkit {name} RUN is deprecated: use --run RUN", err=True)
                kwargs["run_dir"] = legacy
            for name, kind in params.items():
                CHECKS[kind](kwargs.get(name))
            if config:
                settings = check_config(kwargs.get("config_file"),
                                        {key: kwargs[key] for key in FIELD_NAMES & kwargs.keys()})
                _labels_table(kwargs.get("data"), settings)
            return command(*args, **kwargs)

        return checked

    return decorate


def legacy_run_argument(command: Callable) -> Callable:
    """Decorator: the run as an optional positional argument, the form ``--run`` replaces (see
    :func:`early_checks`)."""
    return click.argument("legacy_run", required=False, type=click.Path(), metavar="[RUN]")(command)


def unexpected(exc: BaseException, debug: bool) -> str:
    """The one line that reports an exception tlkit did not expect; its traceback goes to a log file (and,
    with ``debug`` or ``TLKIT_DEBUG=1``, to stderr)."""
    details = "".join(traceback.format_exception(exc))
    if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        sys.stderr.write(details)
    where = ""
    try:
        handle, path = tempfile.mkstemp(prefix="tlkit-error-", suffix=".log")
        with os.fdopen(handle, "w", encoding="utf-8") as log_file:
            log_file.write(f"tlkit {' '.join(sys.argv[1:])}\n{details}")
        where = f"details in {path}; "
    except OSError:
        pass
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"{message} ({where}--debug shows the traceback)"


def stdout_is_closed() -> bool:
    """Whether standard output cannot be written at all (``tlkit ... >&-``)."""
    return sys.stdout is None  # Python's stdout when descriptor 1 was closed at start


def quiet_matplotlib_config() -> None:
    """Point matplotlib at a private temporary config folder when its default one cannot be written
    (a read-only or missing ``HOME``), so that it does not print ``mkdir -p failed`` lines."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = usable_home() or Path("/nonexistent")
    folders = [Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config"),
               Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")]
    if not all(_writable(folder / "matplotlib") for folder in folders):
        folder = Path(tempfile.gettempdir()) / f"tlkit-matplotlib-{os.getuid()}"  # one per user, kept between runs
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.is_symlink() or folder.stat().st_uid != os.getuid():  # not ours: a private one for this run
            folder = Path(tempfile.mkdtemp(prefix="tlkit-matplotlib-"))
        os.environ["MPLCONFIGDIR"] = str(folder)


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists and can be written, or could be created (its nearest existing parent can)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
