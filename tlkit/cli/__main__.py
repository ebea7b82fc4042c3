"""``python -m tlkit.cli``: the ``tlkit`` command."""

from tlkit.cli.commands import main

main()
