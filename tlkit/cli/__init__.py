"""The ``tlkit`` command line (console script ``tlkit = tlkit.cli:main``)."""

from tlkit.cli.commands import main

__all__ = ["main"]
