"""The database a command works on: its URL, and the store opened on it."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from sqlalchemy import URL

from flowsignals.cli.diagnostics import UsageError
from flowsignals.store import PostgresSignalStore
from flowsignals.urls import to_sqlalchemy_url

#: Environment variable holding the database URL when ``--database-url`` is not given.
DATABASE_URL_ENV = "FLOWSIGNALS_DATABASE_URL"

#: Seconds libpq waits for a connection before giving up, unless the URL says otherwise;
#: without it an unroutable host makes a command hang for minutes.
_CONNECT_TIMEOUT_SECONDS = 10


def database_url(args: argparse.Namespace) -> URL:
    """The URL of ``--database-url`` (or its environment variable), with a connect timeout.

    Raises:
        UsageError: No URL was given.
    """
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


def open_store(
    args: argparse.Namespace, *, poll_interval: timedelta | None = None
) -> PostgresSignalStore:
    """The store on the command's database; with ``poll_interval``, waits poll instead of LISTEN.

    Raises:
        UsageError: No URL was given.
    """
    polling: dict[str, Any] = {}
    if poll_interval is not None:
        polling = {"listen": False, "poll_interval": poll_interval.total_seconds()}
    # Few statements per process: preparing them server-side would only add round trips.
    return PostgresSignalStore(
        database_url(args),
        schema=args.schema,
        prepared_statements=False,
        application_name="flowsignals-cli",
        **polling,
    )
