"""What the command says on stderr: usage errors, error lines and flowsignals' warnings."""

from __future__ import annotations

import logging
import sys


class UsageError(Exception):
    """A command-line argument is missing or invalid (exit code 2)."""

    def __init__(self, argument: str | None, message: str) -> None:
        self.argument = argument
        super().__init__(message if argument is None else f"argument {argument}: {message}")


class _WarningLines(logging.Handler):
    """Writes flowsignals' warnings to stderr as one line each, repeats dropped.

    The listener warns on every failed reconnection attempt during ``wait``; the same line in a
    row is said once.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        line = first_line(record.getMessage())
        if line != self._last:
            self._last = line
            print(f"flowsignals: warning: {line}", file=sys.stderr, flush=True)


def log_warnings_as_lines() -> None:
    """Send flowsignals' warnings to stderr, one line each (installed once per process)."""
    # Without a handler, logging's last resort would print each multi-line message in full.
    logger = logging.getLogger("flowsignals")
    if not any(isinstance(handler, _WarningLines) for handler in logger.handlers):
        logger.addHandler(_WarningLines())


def error(message: str) -> None:
    """Print ``message`` on stderr as the command's one error line."""
    print(f"flowsignals: error: {message}", file=sys.stderr, flush=True)


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped (``text`` itself if it has none)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text
