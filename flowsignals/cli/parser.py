"""The argparse tree of the ``flowsignals`` command: every subcommand, its arguments and help."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Callable
from importlib import metadata
from typing import Any

from flowsignals.cli import admin, signals
from flowsignals.cli.arguments import (
    checked,
    int_between,
    parse_after,
    parse_duration,
    parse_expires_at,
    positive_duration,
)
from flowsignals.cli.database import DATABASE_URL_ENV
from flowsignals.results import WaiterState
from flowsignals.validation import MAX_PAGE, check_name, check_run_id

#: The same arguments as ``ls`` and ``stats`` spell them (they filter, so they are options).
_FILTER_ARGUMENT_NAMES = {"run_id": "--run", "signal_name": "--signal"}

#: Width of a command's description in its --help, as the exit code list below it.
_HELP_WIDTH = 95

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
    parser.add_argument("--version", action="version", version=f"flowsignals {_version()}")
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

    register = add("register", "Park STEP of RUN until SIGNAL is delivered.", signals.register)
    _add_waiter_arguments(register)
    register.add_argument("signal_name", metavar="SIGNAL", help="the signal the step waits for")
    deadline = register.add_mutually_exclusive_group()
    deadline.add_argument(
        "--expires-at",
        metavar="ISO8601",
        type=parse_expires_at,
        help="deadline with a UTC offset, e.g. 2030-01-31T12:00:00+00:00 (default: none)",
    )
    deadline.add_argument(
        "--expires-in",
        metavar="DURATION",
        type=parse_duration,
        help="deadline this long from now (30, 5m, 2h, 7d), by this machine's clock",
    )

    deliver = add("deliver", "Deliver SIGNAL with a JSON payload to RUN.", signals.deliver)
    deliver.add_argument("run_id", metavar="RUN", help="the workflow run (a UUID)")
    deliver.add_argument("signal_name", metavar="SIGNAL", help="the signal being delivered")
    deliver.add_argument(
        "payload_json", metavar="PAYLOAD_JSON", help="JSON text, or - to read it from stdin"
    )
    deliver.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="name this delivery: a retry with the same KEY delivers nothing more and reports "
        "the first delivery",
    )

    get = add("get", "Show the waiter of STEP in RUN.", signals.get)
    _add_waiter_arguments(get)

    remove = add("remove", "Remove the waiter of STEP in RUN, delivered or not.", signals.remove)
    _add_waiter_arguments(remove)

    wait = add(
        "wait",
        "Block until STEP of RUN is delivered, then print it with its payload. Woken by "
        "LISTEN/NOTIFY; the table is read again at least every 5 s regardless.",
        signals.wait,
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
        type=positive_duration,
        default=None,
        help="read the table this often instead of listening (for pgbouncer in transaction "
        "pooling mode, where LISTEN does not work)",
    )

    claim = add(
        "claim-expired",
        "Claim waiters whose deadline passed (server clock), each exactly once, so the caller "
        "can fail their steps; print them, earliest deadline first.",
        admin.claim_expired,
    )
    _add_page_size(claim, "--limit", default=100, help_text="most waiters to claim")

    purge = add(
        "purge",
        "Delete delivered and claimed waiters finished longer ago than --older-than, in "
        "batches, each its own transaction. Pending and expired (unclaimed) waiters stay.",
        admin.purge,
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
        type=int_between(1, None),
        default=None,
        help="most waiters to delete in all (default: no limit)",
    )
    _add_page_size(purge, "--batch-size", default=1000, help_text="most waiters per transaction")

    ls = add(
        "ls",
        "List waiters oldest first, as a table (or JSON with --json). A full page ends with "
        "the --after token of the next one.",
        admin.ls,
        _FILTER_ARGUMENT_NAMES,
    )
    _add_filter_arguments(ls)
    ls.add_argument(
        "--state",
        choices=[state.value for state in WaiterState],
        default=None,
        help="only waiters in this state, by the server's clock",
    )
    _add_page_size(ls, "--limit", default=100, help_text="most waiters on the page")
    ls.add_argument(
        "--after",
        metavar="TOKEN",
        type=parse_after,
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
        admin.stats,
        _FILTER_ARGUMENT_NAMES,
    )
    _add_filter_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    migrate = add("migrate", "Upgrade the database schema of flowsignals.", admin.migrate)
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
        admin.demo,
    )
    demo.add_argument(
        "--runs", type=int_between(1, None), default=300, help="workflow runs (default: 300)"
    )
    demo.add_argument(
        "--threads",
        type=int_between(2, None),
        default=8,
        help="concurrent senders, at least 2 (default: 8)",
    )
    demo.add_argument(
        "--seed", type=int, default=None, help="seed of the workload plan (default: random)"
    )
    return parser


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
        "--run", metavar="RUN", type=checked(check_run_id), help="only this run's waiters"
    )
    parser.add_argument(
        "--signal",
        metavar="NAME",
        type=checked(lambda name: check_name("signal_name", name)),
        help="only waiters of this signal",
    )


def _add_page_size(
    parser: argparse.ArgumentParser, option: str, *, default: int, help_text: str
) -> None:
    # A count of waiters that one statement handles, so at most MAX_PAGE.
    parser.add_argument(
        option,
        metavar="N",
        type=int_between(1, MAX_PAGE),
        default=default,
        help=f"{help_text}, 1 to {MAX_PAGE} (default: %(default)s)",
    )


def _version() -> str:
    try:
        return metadata.version("flowsignals")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"
