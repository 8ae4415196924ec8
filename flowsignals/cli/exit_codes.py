"""The exit codes of the ``flowsignals`` command (listed in the package docstring)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_ALREADY_DELIVERED = 4
EXIT_EXPIRED = 5
EXIT_TIMEOUT = 6
EXIT_INTERRUPTED = 130
