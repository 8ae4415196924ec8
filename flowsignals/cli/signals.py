"""The commands on one waiter or signal: ``register``, ``deliver``, ``get``, ``remove``, ``wait``.

Each prints one JSON object on stdout and returns the command's exit code.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.exc import DBAPIError

from flowsignals.cli.database import open_store
from flowsignals.cli.diagnostics import UsageError
from flowsignals.cli.exit_codes import (
    EXIT_ALREADY_DELIVERED,
    EXIT_EXPIRED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
)
from flowsignals.cli.output import iso, print_json, waiter_to_json
from flowsignals.errors import (
    InvalidArgumentError,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
from flowsignals.results import DeliveryStatus

_DELIVERY_EXIT_CODES = {
    DeliveryStatus.DELIVERED: EXIT_OK,
    DeliveryStatus.NOT_FOUND: EXIT_NOT_FOUND,
    DeliveryStatus.ALREADY_DELIVERED: EXIT_ALREADY_DELIVERED,
    DeliveryStatus.EXPIRED: EXIT_EXPIRED,
}


def register(args: argparse.Namespace) -> int:
    """``flowsignals register``: park a step until its signal comes."""
    expires_at: datetime | None = args.expires_at
    if args.expires_in is not None:
        try:
            expires_at = datetime.now(timezone.utc) + args.expires_in
        except OverflowError:
            raise UsageError("--expires-in", "must end before the year 9999") from None
    with open_store(args) as store:
        try:
            store.register_waiter(args.run_id, args.step_key, args.signal_name, expires_at)
        except InvalidArgumentError as exc:
            if exc.argument == "expires_at" and args.expires_in is not None:
                raise UsageError("--expires-in", exc.rule) from exc
            raise
    print_json(
        {
            "status": "registered",
            "run_id": _canonical_run_id(args.run_id),
            "step_key": args.step_key,
            "signal_name": args.signal_name,
            "expires_at": iso(expires_at),
        }
    )
    return EXIT_OK


def deliver(args: argparse.Namespace) -> int:
    """``flowsignals deliver``: deliver a signal with its payload (``-``: read from stdin)."""
    payload: str = args.payload_json
    if payload == "-":
        payload = sys.stdin.read()
    with open_store(args) as store:
        result = store.deliver_signal(
            args.run_id, args.signal_name, payload, idempotency_key=args.idempotency_key
        )
    print_json(
        {
            "status": result.status.value,
            "run_id": _canonical_run_id(args.run_id),
            "signal_name": args.signal_name,
            "step_key": result.step_key,
            "delivered_at": iso(result.delivered_at),
        }
    )
    return _DELIVERY_EXIT_CODES[result.status]


def get(args: argparse.Namespace) -> int:
    """``flowsignals get``: show one waiter."""
    with open_store(args) as store:
        waiter = store.get_waiter(args.run_id, args.step_key)
    if waiter is None:
        print_json(_waiter_status("not_found", args))
        return EXIT_NOT_FOUND
    print_json({"status": "found", **waiter_to_json(waiter)})
    return EXIT_OK


def remove(args: argparse.Namespace) -> int:
    """``flowsignals remove``: remove one waiter, delivered or not."""
    with open_store(args) as store:
        removed = store.remove_waiter(args.run_id, args.step_key)
    if not removed:
        print_json(_waiter_status("not_found", args))
        return EXIT_NOT_FOUND
    print_json(_waiter_status("removed", args))
    return EXIT_OK


def wait(args: argparse.Namespace) -> int:
    """``flowsignals wait``: block until the waiter is delivered, expires or the timeout passes."""
    poll_interval: timedelta | None = args.poll_interval
    with open_store(args, poll_interval=poll_interval) as store:
        try:
            waiter = store.wait_for_signal(args.run_id, args.step_key, timeout=args.timeout)
        except WaiterNotFoundError as exc:
            return _wait_ended(_waiter_status("not_found", args), exc, EXIT_NOT_FOUND)
        except WaiterExpiredError as exc:
            document = {"status": "expired", **waiter_to_json(exc.waiter)}
            return _wait_ended(document, exc, EXIT_EXPIRED)
        except WaitTimeoutError as exc:
            if isinstance(exc.__cause__, DBAPIError):
                # The last read failed: whether the signal came is unknown, and saying
                # "timeout" would claim it did not. Reported as the database error it is.
                raise exc.__cause__ from None
            document = {**_waiter_status("timeout", args), "timeout_seconds": exc.timeout}
            return _wait_ended(document, exc, EXIT_TIMEOUT)
    print_json({"status": "delivered", **waiter_to_json(waiter)})
    return EXIT_OK


def _wait_ended(document: dict[str, Any], exc: Exception, code: int) -> int:
    # The outcome as JSON for scripts, and one line on stderr for the person at the terminal.
    print_json(document)
    print(f"flowsignals: {exc}", file=sys.stderr, flush=True)
    return code


def _waiter_status(status: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "status": status,
        "run_id": _canonical_run_id(args.run_id),
        "step_key": args.step_key,
    }


def _canonical_run_id(run_id: str) -> str:
    # Only called after the store accepted run_id, so it parses.
    return str(uuid.UUID(run_id))
