"""Argument types: parse and check each value before any connection is opened.

Each raises :class:`argparse.ArgumentTypeError`, so argparse reports the option by name and
exits with the usage code.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flowsignals.errors import InvalidArgumentError
from flowsignals.results import WaiterCursor
from flowsignals.validation import check_after

#: Units of a duration (see :func:`parse_duration`), in seconds.
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)([smhd]?)")


def parse_duration(text: str) -> timedelta:
    """Parse a command-line duration: seconds, or a number with a unit.

    ``30`` and ``0.5`` are seconds; ``30s``, ``5m`` (minutes), ``2h`` and ``7d`` carry a unit.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not such a duration, is negative, or is longer
            than a :class:`~datetime.timedelta` holds.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            "must be a duration: seconds (30, 0.5) or a number with a unit s, m, h or d "
            f"(30s, 5m, 2h, 7d); got {text!r}"
        )
    sign, number, unit = match.groups()
    if sign:
        raise argparse.ArgumentTypeError(f"must be finite and not negative, got {text!r}")
    try:
        return timedelta(seconds=float(number) * _DURATION_UNITS[unit])
    except OverflowError:
        raise argparse.ArgumentTypeError(f"must be shorter, got {text!r}") from None


def positive_duration(text: str) -> timedelta:
    """A :func:`parse_duration` duration that is more than 0."""
    duration = parse_duration(text)
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return duration


def parse_expires_at(text: str) -> datetime:
    """An ISO 8601 date and time with a UTC offset (``Z`` included)."""
    # Python before 3.11 does not read a trailing "Z" as UTC.
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    invalid = argparse.ArgumentTypeError(
        f"must be an ISO 8601 date and time, e.g. 2030-01-31T12:00:00+00:00; got {text!r}"
    )
    # A date alone is not a deadline (and Python 3.11 reads "2030-01-01+00:00" as naive).
    if len(candidate) <= 10 or candidate[10] not in "Tt ":
        raise invalid
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        raise invalid from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"must include a UTC offset (+00:00 or Z): {text!r} is ambiguous"
        )
    return value


def parse_after(text: str) -> WaiterCursor:
    """The ``--after`` token ``ls`` printed for its next page."""
    try:
        cursor = check_after(WaiterCursor.from_token(text))
    except ValueError:  # InvalidArgumentError is one too
        raise argparse.ArgumentTypeError(
            f"must be a token printed by 'flowsignals ls' for its next page, got {text!r}"
        ) from None
    assert cursor is not None
    return cursor


def checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type running one of the store's argument checks.

    Bad input is refused before any connection, with a message naming the option.
    """

    def parse(text: str) -> Any:
        try:
            return check(text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(exc.rule) from None

    return parse


def int_between(minimum: int, maximum: int | None) -> Callable[[str], int]:
    """An argparse type for an integer from ``minimum`` to ``maximum`` (``None``: no limit)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse
