"""The single exception type of the project."""


class OmamaError(Exception):
    """An error a user can act on: the CLIs print its message as one line and exit 1."""
