"""The exception types tlkit raises for bad input."""


class TlkitError(ValueError):
    """A problem with the user's input (path, option, data or run) that tlkit can explain in one line.

    The CLI prints its message as ``Error: ...`` and exits with a non-zero code (1), without a traceback.
    """


class OptionError(TlkitError):
    """Options that cannot go together (the CLI exits with 2 for it, as for any bad usage)."""
