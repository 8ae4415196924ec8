"""The ``flowsignals`` command line: signals, waits, deadlines, inspection, migrations, a demo.

``register``, ``deliver``, ``get``, ``remove`` and ``claim-expired`` are each one transaction;
``wait`` reads the table until the waiter is delivered (each read its own transaction, woken by
LISTEN/NOTIFY); ``purge`` deletes in batches, each its own transaction; ``ls`` reads in one
transaction, so every state it shows is judged at one instant of the server's clock. The signal
commands print one JSON object on stdout; ``ls`` and ``stats`` print a readable table unless
given ``--json``. Times are ISO 8601 in UTC, as the database server recorded them.
Errors go to stderr as one line, never as a traceback.

Exit codes:

* 0: success (registered, DELIVERED, found, removed, migrated; wait: the signal arrived;
  claim-expired, purge, ls, stats done; demo invariants all PASS)
* 1: unexpected error (database unreachable, schema not migrated...); ``migrate --check``: not
  at the newest revision; ``demo``: an invariant FAILed
* 2: usage error or invalid argument (the message names the argument), or no database URL
* 3: ``deliver``: NOT_FOUND; ``get``/``remove``/``wait``: no such waiter
* 4: ``deliver``: ALREADY_DELIVERED
* 5: ``deliver``: EXPIRED; ``wait``: the deadline passed undelivered, or the waiter was claimed
* 6: ``wait``: the timeout passed with the waiter still pending
* 130: interrupted (Ctrl-C)

Durations (``--timeout``, ``--poll-interval``, ``--older-than``, ``--expires-in``) are seconds
(``30``, ``0.5``) or a number with a unit: ``30s``, ``5m`` (minutes), ``2h``, ``7d``.

The database URL comes from ``--database-url`` or else the ``FLOWSIGNALS_DATABASE_URL``
environment variable; ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` are
accepted, including the unix socket forms.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shlex
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

import psycopg
from alembic.util import CommandError
from sqlalchemy import URL, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flowsignals import migrations
from flowsignals.errors import (
    InvalidArgumentError,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
from flowsignals.results import DeliveryStatus, SignalWaiter, WaiterCursor, WaiterState
from flowsignals.store import PostgresSignalStore
from flowsignals.urls import to_sqlalchemy_url
from flowsignals.validation import MAX_PAGE, check_after, check_name, check_run_id

__all__ = [
    "DATABASE_URL_ENV",
    "EXIT_ALREADY_DELIVERED",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
    "parse_duration",
]

#: Environment variable holding the database URL when ``--database-url`` is not given.
DATABASE_URL_ENV = "FLOWSIGNALS_DATABASE_URL"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_ALREADY_DELIVERED = 4
EXIT_EXPIRED = 5
EXIT_TIMEOUT = 6
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
    "timeout": "--timeout",
    "poll_interval": "--poll-interval",
    "limit": "--limit",
    "batch_size": "--batch-size",
    "older_than": "--older-than",
    "state": "--state",
    "after": "--after",
    "after.step_key": "--after",
    "url": "--database-url",
    "database": "--database-url",
    "schema": "--schema",
}

#: The same arguments as ``ls`` and ``stats`` spell them (they filter, so they are options).
_FILTER_ARGUMENT_NAMES = {"run_id": "--run", "signal_name": "--signal"}

#: Units of a duration (see :func:`parse_duration`), in seconds.
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)([smhd]?)")

#: Width of a command's description in its --help, as the exit code list below it.
_HELP_WIDTH = 95

#: Widest a name is shown in the ``ls`` table; longer ones end with an ellipsis.
_NAME_COLUMN_WIDTH = 24

#: Seconds libpq waits for a connection before giving up, unless the URL says otherwise;
#: without it an unroutable host makes a command hang for minutes.
_CONNECT_TIMEOUT_SECONDS = 10

_EPILOG = """\
exit codes:
  0  success: registered, DELIVERED, found, removed, migrated; wait: the signal arrived;
     claim-expired, purge, ls, stats done; demo invariants all PASS
  1  unexpected error (database unreachable, schema not migrated, ...); migrate --check: not
     at the newest revision; demo: an invariant FAILed
  2  usage error or invalid argument (the message names it), or no database URL
  3  deliver: NOT_FOUND; get, remove, wait: no such waiter
  4  deliver: ALREADY_DELIVERED
  5  deliver: EXPIRED; wait: the deadline passed undelivered, or the waiter was claimed
  6  wait: the timeout passed with the waiter still pending

The database URL is --database-url, or else the FLOWSIGNALS_DATABASE_URL environment variable:
postgresql://, postgres:// or postgresql+psycopg://, including the unix socket forms
(postgresql://user@/db?host=/run/postgresql). Signal commands print one JSON object (ls and
stats: a table, unless --json); times are ISO 8601 in UTC, by the database server's clock.
Durations are seconds (30, 0.5) or a number with a unit: 30s, 5m (minutes), 2h, 7d.
"""


class _WarningLines(logging.Handler):
    """Writes flowsignals' warnings to stderr as one line each, repeats dropped.

    The listener warns on every failed reconnection attempt during ``wait``; the same line in a
    row is said once.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        line = _first_line(record.getMessage())
        if line != self._last:
            self._last = line
            print(f"flowsignals: warning: {line}", file=sys.stderr, flush=True)


def _log_warnings_as_lines() -> None:
    # Without a handler, logging's last resort would print each multi-line message in full.
    logger = logging.getLogger("flowsignals")
    if not any(isinstance(handler, _WarningLines) for handler in logger.handlers):
        logger.addHandler(_WarningLines())


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
    _log_warnings_as_lines()
    try:
        return command(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except InvalidArgumentError as exc:
        names: dict[str, str] = {**_CLI_ARGUMENT_NAMES, **args.argument_names}
        name = names.get(exc.argument, exc.argument)
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

    def add(
        name: str,
        help_text: str,
        handler: Callable[[argparse.Namespace], int],
        argument_names: dict[str, str] | None = None,
    ) -> Any:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=textwrap.fill(help_text, width=_HELP_WIDTH),
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(command=handler, argument_names=argument_names or {})
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
        metavar="DURATION",
        type=parse_duration,
        help="deadline this long from now (30, 5m, 2h, 7d), by this machine's clock",
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

    wait = add(
        "wait",
        "Block until STEP of RUN is delivered, then print it with its payload. Woken by "
        "LISTEN/NOTIFY; the table is read again at least every 5 s regardless.",
        _wait,
    )
    _add_waiter_arguments(wait)
    wait.add_argument(
        "--timeout",
        metavar="DURATION",
        type=parse_duration,
        required=True,
        help="longest wait (30, 0.5, 5m, 2h); 0 reads the table once",
    )
    wait.add_argument(
        "--poll-interval",
        metavar="DURATION",
        type=_positive_duration,
        default=None,
        help="read the table this often instead of listening (for pgbouncer in transaction "
        "pooling mode, where LISTEN does not work)",
    )

    claim = add(
        "claim-expired",
        "Claim waiters whose deadline passed (server clock), each exactly once, so the caller "
        "can fail their steps; print them, earliest deadline first.",
        _claim_expired,
    )
    claim.add_argument(
        "--limit",
        metavar="N",
        type=_int_between(1, MAX_PAGE),
        default=100,
        help=f"most waiters to claim, 1 to {MAX_PAGE} (default: %(default)s)",
    )

    purge = add(
        "purge",
        "Delete delivered and claimed waiters finished longer ago than --older-than, in "
        "batches, each its own transaction. Pending and expired (unclaimed) waiters stay.",
        _purge,
    )
    purge.add_argument(
        "--older-than",
        metavar="DURATION",
        type=parse_duration,
        required=True,
        help="how long ago a waiter must have finished (e.g. 7d), by the server's clock",
    )
    purge.add_argument(
        "--limit",
        metavar="N",
        type=_int_between(1, None),
        default=None,
        help="most waiters to delete in all (default: no limit)",
    )
    purge.add_argument(
        "--batch-size",
        metavar="N",
        type=_int_between(1, MAX_PAGE),
        default=1000,
        help=f"most waiters per transaction, 1 to {MAX_PAGE} (default: %(default)s)",
    )

    ls = add(
        "ls",
        "List waiters oldest first, as a table (or JSON with --json). A full page ends with "
        "the --after token of the next one.",
        _ls,
        _FILTER_ARGUMENT_NAMES,
    )
    _add_filter_arguments(ls)
    ls.add_argument(
        "--state",
        choices=[state.value for state in WaiterState],
        default=None,
        help="only waiters in this state, by the server's clock",
    )
    ls.add_argument(
        "--limit",
        metavar="N",
        type=_int_between(1, MAX_PAGE),
        default=100,
        help=f"most waiters on the page, 1 to {MAX_PAGE} (default: %(default)s)",
    )
    ls.add_argument(
        "--after",
        metavar="TOKEN",
        type=_parse_after,
        default=None,
        help="start after this token, printed at the end of the previous page",
    )
    ls.add_argument(
        "--json",
        action="store_true",
        help='print {"waiters": [...], "next": TOKEN or null} instead of a table',
    )

    stats = add(
        "stats",
        "Count waiters by state (pending, delivered, expired, claimed) and in total.",
        _stats,
        _FILTER_ARGUMENT_NAMES,
    )
    _add_filter_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")

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
        "--runs", type=_int_between(1, None), default=300, help="workflow runs (default: 300)"
    )
    demo.add_argument(
        "--threads",
        type=_int_between(2, None),
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
        try:
            expires_at = datetime.now(timezone.utc) + args.expires_in
        except OverflowError:
            raise UsageError("--expires-in", "must end before the year 9999") from None
    with _open_store(args) as store:
        try:
            store.register_waiter(args.run_id, args.step_key, args.signal_name, expires_at)
        except InvalidArgumentError as exc:
            if exc.argument == "expires_at" and args.expires_in is not None:
                raise UsageError("--expires-in", exc.rule) from exc
            raise
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


def _wait(args: argparse.Namespace) -> int:
    poll_interval: timedelta | None = args.poll_interval
    with _open_store(args, poll_interval=poll_interval) as store:
        try:
            waiter = store.wait_for_signal(args.run_id, args.step_key, timeout=args.timeout)
        except WaiterNotFoundError as exc:
            return _wait_ended(_missing_waiter(args), exc, EXIT_NOT_FOUND)
        except WaiterExpiredError as exc:
            document = {"status": "expired", **waiter_to_json(exc.waiter)}
            return _wait_ended(document, exc, EXIT_EXPIRED)
        except WaitTimeoutError as exc:
            if isinstance(exc.__cause__, DBAPIError):
                # The last read failed: whether the signal came is unknown, and saying
                # "timeout" would claim it did not. Reported as the database error it is.
                raise exc.__cause__ from None
            document = {
                "status": "timeout",
                "run_id": _canonical_run_id(args.run_id),
                "step_key": args.step_key,
                "timeout_seconds": exc.timeout,
            }
            return _wait_ended(document, exc, EXIT_TIMEOUT)
    _print_json({"status": "delivered", **waiter_to_json(waiter)})
    return EXIT_OK


def _wait_ended(document: dict[str, Any], exc: Exception, code: int) -> int:
    # The outcome as JSON for scripts, and one line on stderr for the person at the terminal.
    _print_json(document)
    print(f"flowsignals: {exc}", file=sys.stderr, flush=True)
    return code


def _claim_expired(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        claimed = store.claim_expired(limit=args.limit)
    _print_json({"claimed": [waiter_to_json(waiter) for waiter in claimed], "count": len(claimed)})
    return EXIT_OK


def _purge(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        purged = store.purge(
            older_than=args.older_than, limit=args.limit, batch_size=args.batch_size
        )
    _print_json({"purged": purged})
    return EXIT_OK


def _ls(args: argparse.Namespace) -> int:
    limit: int = args.limit
    filters = {"run_id": args.run, "signal_name": args.signal, "state": args.state}
    # One transaction: now() is the same instant in every statement, so the state shown for
    # each waiter agrees with the --state filter, and the look-ahead sees the same rows.
    with _open_store(args) as store, store.engine.begin() as conn:
        now: datetime = conn.execute(select(func.now())).scalar_one()
        page = store.list_waiters(**filters, limit=limit, after=args.after, conn=conn)
        # A full page has a next one only if a waiter follows: look one ahead.
        more = len(page) == limit and bool(
            store.list_waiters(**filters, limit=1, after=page[-1], conn=conn)
        )
    next_token = page[-1].cursor.token() if more else None
    if args.json:
        waiters = [{**waiter_to_json(w), "state": w.state_at(now).value} for w in page]
        _print_json({"waiters": waiters, "next": next_token})
        return EXIT_OK
    _print_text(_waiter_table(page, now))
    if next_token is not None:
        _print_text([f"next page: --after {shlex.quote(next_token)}"])
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        counts = store.count_waiters(run_id=args.run, signal_name=args.signal)
    by_state = {state.value: counts[state] for state in WaiterState}
    if args.json:
        _print_json({**by_state, "total": counts.total})
        return EXIT_OK
    width = len(str(counts.total))
    _print_text(
        f"{name:<10} {count:>{width}}"
        for name, count in [*by_state.items(), ("total", counts.total)]
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
        "claimed_at": _iso(waiter.claimed_at),
    }


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


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", metavar="RUN", type=_checked(check_run_id), help="only this run's waiters"
    )
    parser.add_argument(
        "--signal",
        metavar="NAME",
        type=_checked(lambda name: check_name("signal_name", name)),
        help="only waiters of this signal",
    )


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


def _open_store(
    args: argparse.Namespace, *, poll_interval: timedelta | None = None
) -> PostgresSignalStore:
    # Few statements per process: preparing them server-side would only add round trips.
    if poll_interval is None:
        return PostgresSignalStore(
            _database_url(args),
            schema=args.schema,
            prepared_statements=False,
            application_name="flowsignals-cli",
        )
    return PostgresSignalStore(
        _database_url(args),
        schema=args.schema,
        prepared_statements=False,
        application_name="flowsignals-cli",
        listen=False,
        poll_interval=poll_interval.total_seconds(),
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


def _positive_duration(text: str) -> timedelta:
    duration = parse_duration(text)
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return duration


def _parse_after(text: str) -> WaiterCursor:
    try:
        cursor = check_after(WaiterCursor.from_token(text))
    except ValueError:  # InvalidArgumentError is one too
        raise argparse.ArgumentTypeError(
            f"must be a token printed by 'flowsignals ls' for its next page, got {text!r}"
        ) from None
    assert cursor is not None
    return cursor


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type running one of the store's argument checks.

    Bad input is refused before any connection, with a message naming the option.
    """

    def parse(text: str) -> Any:
        try:
            return check(text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(exc.rule) from None

    return parse


def _int_between(minimum: int, maximum: int | None) -> Callable[[str], int]:
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


def _waiter_table(waiters: Sequence[SignalWaiter], now: datetime) -> list[str]:
    if not waiters:
        return ["no waiters"]
    header = ("RUN_ID", "STEP_KEY", "SIGNAL", "STATE", "CREATED", "EXPIRES", "DELIVERED")
    rows = [header] + [
        (
            str(w.run_id),
            _cell(w.step_key),
            _cell(w.signal_name),
            w.state_at(now).value,
            _compact_time(w.created_at),
            _compact_time(w.expires_at),
            _compact_time(w.delivered_at),
        )
        for w in waiters
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _cell(name: str) -> str:
    # Names may hold tabs, newlines or other control characters: escaped, they cannot break
    # the table's lines or columns.
    shown = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in name
    )
    if len(shown) > _NAME_COLUMN_WIDTH:
        return shown[: _NAME_COLUMN_WIDTH - 1] + "\u2026"
    return shown


def _compact_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    utc = value.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="seconds") + "Z"


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


def _print_text(lines: Iterable[str]) -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or pipe that cannot encode a name (or the ellipsis) shows an escape.
        sys.stdout.reconfigure(errors="backslashreplace")
    for line in lines:
        print(line)
    sys.stdout.flush()


def _error(message: str) -> None:
    print(f"flowsignals: error: {message}", file=sys.stderr, flush=True)
