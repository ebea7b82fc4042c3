"""The one exception type tlkit raises for bad input."""


class TlkitError(ValueError):
    """A problem with the user's input (path, option, data or run) that tlkit can explain in one line.

    The CLI prints its message as ``Error: ...`` and exits with a non-zero code, without a traceback.
    """
