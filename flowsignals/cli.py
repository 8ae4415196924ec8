"""The ``flowsignals`` command line: signal operations, migrations and a demo.

Each signal operation (``register``, ``deliver``, ``get``, ``remove``) is one transaction and
prints one JSON object on stdout. Times are ISO 8601 in UTC, as the database server recorded
them. Errors go to stderr as one line, never as a traceback.

Exit codes:

* 0: success (registered, DELIVERED, found, removed, migrated; demo invariants all PASS)
* 1: unexpected error (database unreachable, schema not migrated...); ``migrate --check``: not
  at the newest revision; ``demo``: an invariant FAILed
* 2: usage error or invalid argument (the message names the argument), or no database URL
* 3: ``deliver``: NOT_FOUND; ``get``/``remove``: no such waiter
* 4: ``deliver``: ALREADY_DELIVERED
* 5: ``deliver``: EXPIRED
* 130: interrupted (Ctrl-C)

The database URL comes from ``--database-url`` or else the ``FLOWSIGNALS_DATABASE_URL``
environment variable; ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` are
accepted, including the unix socket forms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

import psycopg
from alembic.util import CommandError
from sqlalchemy import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flowsignals import migrations
from flowsignals.errors import InvalidArgumentError
from flowsignals.results import DeliveryStatus, SignalWaiter
from flowsignals.store import PostgresSignalStore
from flowsignals.urls import to_sqlalchemy_url

__all__ = [
    "DATABASE_URL_ENV",
    "EXIT_ALREADY_DELIVERED",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

#: Environment variable holding the database URL when ``--database-url`` is not given.
DATABASE_URL_ENV = "FLOWSIGNALS_DATABASE_URL"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_ALREADY_DELIVERED = 4
EXIT_EXPIRED = 5
EXIT_INTERRUPTED = 130

_DELIVERY_EXIT_CODES = {
    DeliveryStatus.DELIVERED: EXIT_OK,
    DeliveryStatus.NOT_FOUND: EXIT_NOT_FOUND,
    DeliveryStatus.ALREADY_DELIVERED: EXIT_ALREADY_DELIVERED,
    DeliveryStatus.EXPIRED: EXIT_EXPIRED,
}

#: The store's argument names, as the command line spells them in messages.
_CLI_ARGUMENT_NAMES = {
    "run_id": "RUN",
    "step_key": "STEP",
    "signal_name": "SIGNAL",
    "payload_json": "PAYLOAD_JSON",
    "expires_at": "--expires-at",
    "url": "--database-url",
    "database": "--database-url",
    "schema": "--schema",
}

#: Seconds libpq waits for a connection before giving up, unless the URL says otherwise;
#: without it an unroutable host makes a command hang for minutes.
_CONNECT_TIMEOUT_SECONDS = 10

_EPILOG = """\
exit codes:
  0  success: registered, DELIVERED, found, removed, migrated; demo invariants all PASS
  1  unexpected error (database unreachable, schema not migrated, ...); migrate --check: not
     at the newest revision; demo: an invariant FAILed
  2  usage error or invalid argument (the message names it), or no database URL
  3  deliver: NOT_FOUND; get, remove: no such waiter
  4  deliver: ALREADY_DELIVERED
  5  deliver: EXPIRED

The database URL is --database-url, or else the FLOWSIGNALS_DATABASE_URL environment variable:
postgresql://, postgres:// or postgresql+psycopg://, including the unix socket forms
(postgresql://user@/db?host=/run/postgresql). Signal commands print one JSON object; times are
ISO 8601 in UTC, by the database server's clock.
"""


class UsageError(Exception):
    """A command-line argument is missing or invalid (exit code 2)."""

    def __init__(self, argument: str | None, message: str) -> None:
        self.argument = argument
        super().__init__(message if argument is None else f"argument {argument}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flowsignals`` command line.

    Args:
        argv: The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit code (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except InvalidArgumentError as exc:
        name = _CLI_ARGUMENT_NAMES.get(exc.argument, exc.argument)
        _error(f"argument {name}: {exc.rule}")
        return EXIT_USAGE
    except DBAPIError as exc:
        _error(_describe_database_error(exc.orig if exc.orig is not None else exc))
        return EXIT_ERROR
    except psycopg.Error as exc:
        # The store's own connections can raise the driver's error unwrapped when connecting.
        _error(_describe_database_error(exc))
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        _error(_first_line(str(exc)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``flowsignals`` command."""
    common = argparse.ArgumentParser(add_help=False)
    _add_database_arguments(common, default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="flowsignals",
        description="A durable 'wait for a signal' store for workflow engines, on PostgreSQL.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_database_arguments(parser, default=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(command=handler)
        return sub

    register = add("register", "Park STEP of RUN until SIGNAL is delivered.", _register)
    _add_waiter_arguments(register)
    register.add_argument("signal_name", metavar="SIGNAL", help="the signal the step waits for")
    deadline = register.add_mutually_exclusive_group()
    deadline.add_argument(
        "--expires-at",
        metavar="ISO8601",
        type=_parse_expires_at,
        help="deadline with a UTC offset, e.g. 2030-01-31T12:00:00+00:00 (default: none)",
    )
    deadline.add_argument(
        "--expires-in",
        metavar="SECONDS",
        type=_parse_seconds,
        help="deadline this many seconds from now, by this machine's clock",
    )

    deliver = add("deliver", "Deliver SIGNAL with a JSON payload to RUN.", _deliver)
    deliver.add_argument("run_id", metavar="RUN", help="the workflow run (a UUID)")
    deliver.add_argument("signal_name", metavar="SIGNAL", help="the signal being delivered")
    deliver.add_argument(
        "payload_json", metavar="PAYLOAD_JSON", help="JSON text, or - to read it from stdin"
    )

    get = add("get", "Show the waiter of STEP in RUN.", _get)
    _add_waiter_arguments(get)

    remove = add("remove", "Remove the waiter of STEP in RUN, delivered or not.", _remove)
    _add_waiter_arguments(remove)

    migrate = add("migrate", "Upgrade the database schema of flowsignals.", _migrate)
    mode = migrate.add_mutually_exclusive_group()
    mode.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL instead of running it (needs no database)",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 unless the database is at the newest revision",
    )
    migrate.add_argument(
        "--revision", default="head", help="target revision (default: %(default)s)"
    )

    demo = add(
        "demo",
        "Run a concurrent approval-flow workload and check the store's guarantees. Without a "
        "database URL, a throwaway embedded PostgreSQL server is started and removed after.",
        _demo,
    )
    demo.add_argument(
        "--runs", type=_int_at_least(1), default=300, help="workflow runs (default: 300)"
    )
    demo.add_argument(
        "--threads",
        type=_int_at_least(2),
        default=8,
        help="concurrent senders, at least 2 (default: 8)",
    )
    demo.add_argument(
        "--seed", type=int, default=None, help="seed of the workload plan (default: random)"
    )
    return parser


# -- commands ------------------------------------------------------------------------------


def _register(args: argparse.Namespace) -> int:
    expires_at: datetime | None = args.expires_at
    if args.expires_in is not None:
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=args.expires_in)
    with _open_store(args) as store:
        store.register_waiter(args.run_id, args.step_key, args.signal_name, expires_at)
    _print_json(
        {
            "status": "registered",
            "run_id": _canonical_run_id(args.run_id),
            "step_key": args.step_key,
            "signal_name": args.signal_name,
            "expires_at": _iso(expires_at),
        }
    )
    return EXIT_OK


def _deliver(args: argparse.Namespace) -> int:
    payload: str = args.payload_json
    if payload == "-":
        payload = sys.stdin.read()
    with _open_store(args) as store:
        result = store.deliver_signal(args.run_id, args.signal_name, payload)
    _print_json(
        {
            "status": result.status.value,
            "run_id": _canonical_run_id(args.run_id),
            "signal_name": args.signal_name,
            "step_key": result.step_key,
            "delivered_at": _iso(result.delivered_at),
        }
    )
    return _DELIVERY_EXIT_CODES[result.status]


def _get(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        waiter = store.get_waiter(args.run_id, args.step_key)
    if waiter is None:
        _print_json(_missing_waiter(args))
        return EXIT_NOT_FOUND
    _print_json({"status": "found", **waiter_to_json(waiter)})
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        removed = store.remove_waiter(args.run_id, args.step_key)
    if not removed:
        _print_json(_missing_waiter(args))
        return EXIT_NOT_FOUND
    _print_json(
        {
            "status": "removed",
            "run_id": _canonical_run_id(args.run_id),
            "step_key": args.step_key,
        }
    )
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    schema: str | None = args.schema
    revision: str = args.revision
    try:
        if args.sql:
            sys.stdout.write(migrations.sql(schema=schema, revision=revision))
            return EXIT_OK
        url = _database_url(args)
        if args.check:
            return _check_migrated(url, schema)
        before = migrations.current(url, schema)
        migrations.upgrade(url, schema, revision)
        after = migrations.current(url, schema)
    except CommandError as exc:
        raise UsageError("--revision", _first_line(str(exc))) from exc
    _print_json(
        {
            "status": "up_to_date" if before == after else "upgraded",
            "schema": schema,
            "from_revision": before,
            "to_revision": after,
        }
    )
    return EXIT_OK


def _check_migrated(url: URL, schema: str | None) -> int:
    current, head = migrations.check(url, schema)
    _print_json(
        {
            "status": "at_head" if current == head else "behind",
            "schema": schema,
            "current_revision": current,
            "head_revision": head,
        }
    )
    if current != head:
        print(
            f"flowsignals: the schema is at {current or 'no revision (not installed)'}, "
            f"not at {head}: run 'flowsignals migrate'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    # Imported here: the signal commands should not pay for the demo's imports.
    from flowsignals.demo import run_demo

    url = None if args.database_url is None else _database_url(args)
    return run_demo(url, schema=args.schema, runs=args.runs, threads=args.threads, seed=args.seed)


# -- helpers -------------------------------------------------------------------------------


def waiter_to_json(waiter: SignalWaiter) -> dict[str, Any]:
    """Return a waiter as a JSON-ready dict; times are ISO 8601 in UTC.

    ``payload_json`` is the stored JSON text exactly as delivered (a string, not re-parsed).
    """
    return {
        "run_id": str(waiter.run_id),
        "step_key": waiter.step_key,
        "signal_name": waiter.signal_name,
        "created_at": _iso(waiter.created_at),
        "expires_at": _iso(waiter.expires_at),
        "delivered_at": _iso(waiter.delivered_at),
        "payload_json": waiter.payload_json,
    }


def _add_database_arguments(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=(os.environ.get(DATABASE_URL_ENV) or None) if default is None else default,
        help=f"PostgreSQL URL (default: ${DATABASE_URL_ENV})",
    )
    parser.add_argument(
        "--schema",
        default=default,
        help="schema holding flowsignals' table (default: the search_path)",
    )


def _add_waiter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN", help="the workflow run (a UUID)")
    parser.add_argument("step_key", metavar="STEP", help="the step within the run")


def _database_url(args: argparse.Namespace) -> URL:
    raw: str | None = args.database_url
    if not raw:
        raise UsageError(
            None,
            f"no database URL: pass --database-url or set {DATABASE_URL_ENV}",
        )
    url = to_sqlalchemy_url(raw)
    if "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(_CONNECT_TIMEOUT_SECONDS)})
    return url


def _open_store(args: argparse.Namespace) -> PostgresSignalStore:
    # One statement per process: preparing it server-side would only add a round trip.
    return PostgresSignalStore(
        _database_url(args),
        schema=args.schema,
        prepared_statements=False,
        application_name="flowsignals-cli",
    )


def _missing_waiter(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "status": "not_found",
        "run_id": _canonical_run_id(args.run_id),
        "step_key": args.step_key,
    }


def _canonical_run_id(run_id: str) -> str:
    # Only called after the store accepted run_id, so it parses.
    return str(uuid.UUID(run_id))


def _parse_expires_at(text: str) -> datetime:
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


def _parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be finite and not negative, got {text!r}")
    return seconds


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _describe_database_error(exc: BaseException) -> str:
    detail = _first_line(str(exc))
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "42P01":  # undefined_table
        return f"flowsignals' table is missing ({detail}): run 'flowsignals migrate' first"
    if sqlstate is None or sqlstate.startswith("08"):
        return f"cannot use the database: {detail}"
    return f"database error: {detail}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _print_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    print(json.dumps(document), file=stream or sys.stdout, flush=True)


def _error(message: str) -> None:
    print(f"flowsignals: error: {message}", file=sys.stderr, flush=True)
