"""``main``: parse the command line, run the command, turn its failures into exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import psycopg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flowsignals.cli.diagnostics import UsageError, error, first_line, log_warnings_as_lines
from flowsignals.cli.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from flowsignals.cli.parser import build_parser
from flowsignals.errors import FlowSignalsError, InvalidArgumentError

#: The store's argument names, as the command line spells them in messages.
_CLI_ARGUMENT_NAMES = {
    "run_id": "RUN",
    "step_key": "STEP",
    "signal_name": "SIGNAL",
    "payload_json": "PAYLOAD_JSON",
    "idempotency_key": "--idempotency-key",
    "expires_at": "--expires-at",
    "timeout": "--timeout",
    "poll_interval": "--poll-interval",
    "limit": "--limit",
    "batch_size": "--batch-size",
    "older_than": "--older-than",
    "state": "--state",
    "after": "--after",
    "url": "--database-url",
    "database": "--database-url",
    "schema": "--schema",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flowsignals`` command line.

    Args:
        argv: The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit code (see the :mod:`flowsignals.cli` docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    log_warnings_as_lines()
    try:
        return command(args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except InvalidArgumentError as exc:
        names: dict[str, str] = {**_CLI_ARGUMENT_NAMES, **args.argument_names}
        name = names.get(exc.argument, exc.argument)
        error(f"argument {name}: {exc.rule}")
        return EXIT_USAGE
    except FlowSignalsError as exc:
        # One the command does not turn into an outcome, such as HostLineageError from migrate.
        error(" ".join(str(exc).split()))
        return EXIT_ERROR
    except DBAPIError as exc:
        error(_describe_database_error(exc.orig if exc.orig is not None else exc))
        return EXIT_ERROR
    except psycopg.Error as exc:
        # The store's own connections can raise the driver's error unwrapped when connecting.
        error(_describe_database_error(exc))
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        error(first_line(str(exc)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


def _describe_database_error(exc: BaseException) -> str:
    detail = first_line(str(exc))
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "42P01":  # undefined_table
        return f"flowsignals' table is missing ({detail}): run 'flowsignals migrate' first"
    if sqlstate is None or sqlstate.startswith("08"):
        return f"cannot use the database: {detail}"
    return f"database error: {detail}"
