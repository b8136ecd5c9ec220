"""The one exception the CLI turns into exit status 2 (a usage error)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad command line, bad target or unreadable log directory: exit status 2.

    ``details`` (a traceback of the user's code, for instance) is printed after the
    message; the CLI never prints a traceback of its own.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details
