"""Argument checks shared by every store.

Each check runs before any SQL, raises :class:`InvalidArgumentError` naming the argument and the
rule, and returns the value in the form the store binds. Both stores call these same functions, so
they accept and reject exactly the same input.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import NoReturn

from flowsignals.errors import InvalidArgumentError
from flowsignals.results import SignalWaiter, WaiterCursor, WaiterState
from flowsignals.tables import NAME_MAX_LENGTH

#: Largest ``limit`` of one list or claim, and largest purge batch.
MAX_PAGE = 10_000

#: Payload size limit when none is given: 1 MiB of UTF-8.
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576

# PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name.
_APPLICATION_NAME_BYTES = 63

#: Longest sleep or lock wait Python can take (about 292 years): the bound of every interval.
MAX_SECONDS = threading.TIMEOUT_MAX

# A purge age beyond this is the same as this: no finish time a server stamped is older, and
# subtracting more from its clock would leave the range of timestamps.
_MAX_AGE = timedelta(days=365_000)

# A deadline is read back in the session's time zone, whose offset can be up to 16 hours either
# way; keeping a day inside Python's datetime range means reading it back can never overflow.
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


def check_run_id(run_id: object) -> uuid.UUID:
    """Return ``run_id`` as a UUID; accepts a :class:`uuid.UUID` or a string that parses as one."""
    if isinstance(run_id, uuid.UUID):
        return run_id
    if isinstance(run_id, str):
        try:
            return uuid.UUID(run_id)
        except ValueError:
            _fail("run_id", f"must be a UUID; {_show(run_id)} does not parse as one")
    _fail("run_id", f"must be a uuid.UUID or a str holding one, not {type(run_id).__name__}")


def check_name(argument: str, value: object) -> str:
    """Check a step key or signal name: a non-empty, trimmed str of at most 256 characters."""
    if not isinstance(value, str):
        _fail(argument, f"must be a str, not {type(value).__name__}")
    if not value:
        _fail(argument, "must not be empty")
    if len(value) > NAME_MAX_LENGTH:
        _fail(argument, f"must be at most {NAME_MAX_LENGTH} characters, not {len(value)}")
    if "\x00" in value:
        _fail(argument, "must not contain NUL characters")
    if value.strip() != value:
        _fail(argument, "must not have leading or trailing whitespace")
    _check_encodable(argument, value)
    return value


def check_expires_at(expires_at: object) -> datetime | None:
    """Check a deadline: a timezone-aware datetime in the storable range, or None."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime):
        _fail(
            "expires_at",
            f"must be a timezone-aware datetime or None, not {type(expires_at).__name__}",
        )
    if not is_aware("expires_at", expires_at):
        _fail("expires_at", "must be timezone-aware (a naive datetime is ambiguous)")
    try:
        utc = expires_at.astimezone(timezone.utc)
    except (OverflowError, ValueError, TypeError):
        utc = None
    if utc is None or not _EARLIEST <= utc <= _LATEST:
        _fail("expires_at", "must lie between 0001-01-02 and 9999-12-30 UTC")
    return utc


def check_payload(payload_json: object, max_bytes: int) -> str:
    """Check that ``payload_json`` is a str of strict RFC 8259 JSON within ``max_bytes``.

    The text itself is returned unchanged: it is stored byte for byte, never re-serialised.
    """
    if not isinstance(payload_json, str):
        _fail(
            "payload_json",
            f"must be a str of JSON text, not {type(payload_json).__name__} (serialise it first)",
        )
    # Length in characters bounds the UTF-8 size from below, so a huge payload is refused
    # before it is encoded or parsed.
    if len(payload_json) > max_bytes:
        _fail("payload_json", f"must be at most {max_bytes} bytes of UTF-8")
    size = len(_check_encodable("payload_json", payload_json))
    if size > max_bytes:
        _fail("payload_json", f"must be at most {max_bytes} bytes of UTF-8, not {size}")
    try:
        # Numbers are checked for syntax only: RFC 8259 sets no limit on their digits, while
        # converting one with thousands of digits to int is refused by Python itself.
        json.loads(
            payload_json,
            parse_constant=_reject_constant,
            parse_int=_syntax_only,
            parse_float=_syntax_only,
        )
    except RecursionError:
        _fail("payload_json", "is nested too deeply to parse")
    except ValueError as exc:
        _fail("payload_json", f"must be valid JSON (RFC 8259): {exc}")
    return payload_json


def is_aware(argument: str, value: datetime) -> bool:
    """Whether ``value`` has a UTC offset; a tzinfo whose offset Python refuses is an error."""
    try:
        return value.utcoffset() is not None
    except (ValueError, TypeError) as exc:
        # A tzinfo whose offset is not a timedelta within a day either way.
        _fail(argument, f"must have a valid UTC offset: {exc}")


def check_idempotency_key(value: object) -> str | None:
    """Check a delivery's idempotency key: None, or a str with the rules of a step key."""
    return None if value is None else check_name("idempotency_key", value)


def check_max_payload_bytes(value: object) -> int:
    """Check the store's payload size limit: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail("max_payload_bytes", f"must be a positive int, not {value!r}")
    return value


def check_timeout(argument: str, value: object, *, maximum: float | None = None) -> float:
    """Check a duration in seconds (int, float or timedelta) that is finite and not negative.

    ``maximum``, where given, is the longest accepted (for a value handed to a lock's wait).
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _seconds(argument, value)
    else:
        _fail(
            argument, f"must be seconds (int or float) or a timedelta, not {type(value).__name__}"
        )
    if not 0 <= seconds < float("inf"):
        _fail(argument, f"must be finite and not negative, not {value!r}")
    if maximum is not None and seconds > maximum:
        _fail(argument, f"must be at most {maximum:.0f} seconds, not {value!r}")
    return seconds


def check_interval(argument: str, value: object) -> float:
    """Check a polling interval in seconds: positive, at most :data:`MAX_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(argument, f"must be seconds (int or float), not {type(value).__name__}")
    seconds = _seconds(argument, value)
    if not 0 < seconds < float("inf"):
        _fail(argument, f"must be positive and finite, not {value!r}")
    if seconds > MAX_SECONDS:
        _fail(argument, f"must be at most {MAX_SECONDS:.0f} seconds, not {value!r}")
    return seconds


def _seconds(argument: str, value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        _fail(argument, "must be finite (this int is too large for a float)")


def check_limit(argument: str, value: object, *, maximum: int | None = MAX_PAGE) -> int:
    """Check a row count: a positive int, at most ``maximum`` unless that is None."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(argument, f"must be a positive int, not {type(value).__name__}")
    if value <= 0:
        _fail(argument, f"must be a positive int, not {value}")
    if maximum is not None and value > maximum:
        _fail(argument, f"must be at most {maximum}, not {value}")
    return value


def check_older_than(value: object) -> timedelta:
    """Check a purge age: a timedelta, not negative; beyond 1,000 years it means 1,000 years."""
    if not isinstance(value, timedelta):
        _fail("older_than", f"must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0):
        _fail("older_than", f"must not be negative, not {value}")
    return min(value, _MAX_AGE)


def check_state(value: object) -> WaiterState | None:
    """Check a waiter state filter: a WaiterState, its string value, or None."""
    if value is None or isinstance(value, WaiterState):
        return value
    if isinstance(value, str):
        try:
            return WaiterState(value)
        except ValueError:
            pass
    names = ", ".join(state.value for state in WaiterState)
    _fail("state", f"must be one of {names} (or a WaiterState), not {value!r}")


def check_after(value: object) -> WaiterCursor | None:
    """Check a keyset position: a SignalWaiter (the last of a page), a WaiterCursor, or None.

    Either is checked field by field (a SignalWaiter can be built by hand) and returned as a
    cursor whose ``run_id`` is a UUID.
    """
    if value is None:
        return None
    if isinstance(value, SignalWaiter):
        value = value.cursor
    elif not isinstance(value, WaiterCursor):
        _fail(
            "after",
            f"must be a SignalWaiter, a WaiterCursor or None, not {type(value).__name__}",
        )
    try:
        run = check_run_id(value.run_id)
        step = check_name("step_key", value.step_key)
    except InvalidArgumentError as exc:
        _fail("after", f"its {exc.argument} {exc.rule}")
    created = value.created_at
    if not isinstance(created, datetime) or not is_aware("after", created):
        _fail("after", "must hold a timezone-aware created_at")
    return WaiterCursor(created, run, step)


def check_application_name(value: object) -> str:
    """Check the ``application_name`` a store reports: a str libpq can send."""
    if not isinstance(value, str):
        _fail("application_name", f"must be a str, not {type(value).__name__}")
    if "\x00" in value:
        _fail("application_name", "must not contain NUL characters")
    size = len(_check_encodable("application_name", value))
    if size > _APPLICATION_NAME_BYTES:
        # The server would cut it short (or, long enough, refuse the connection).
        _fail(
            "application_name",
            f"must be at most {_APPLICATION_NAME_BYTES} bytes of UTF-8 (PostgreSQL keeps no"
            f" more), not {size}",
        )
    return value


def check_wait_conn(conn: object) -> None:
    """Refuse a caller's connection for a wait."""
    if conn is not None:
        _fail(
            "conn",
            "must not be given to wait_for_signal: inside a transaction the wait could never "
            "see the delivery (its snapshot predates it); wait outside any transaction",
        )


def _syntax_only(text: str) -> None:
    return None


def _reject_constant(name: str) -> NoReturn:
    # Python's json module accepts NaN and Infinity; RFC 8259 does not.
    raise ValueError(f"{name} is not a JSON value")


def _check_encodable(argument: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        _fail(argument, f"must be encodable as UTF-8 (a lone surrogate at index {exc.start})")


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _fail(argument: str, rule: str) -> NoReturn:
    raise InvalidArgumentError(argument, rule)
