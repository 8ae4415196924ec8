"""The engine a store builds for itself from a URL, and its connection liveness check."""

from __future__ import annotations

import select
from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from flowsignals.urls import to_sqlalchemy_url

#: How a pooled connection is checked before use. ``"socket"``: without a round trip, by looking
#: for an end-of-file or error the server already sent (a terminated backend, a restart, a
#: pooler closing it). ``"query"``: SQLAlchemy's ``pool_pre_ping``, a ``SELECT 1`` round trip
#: per checkout that also catches silently dropped networks. ``None``: no check.
PrePing = Literal["socket", "query"] | None


def build_engine(
    database: str | URL,
    *,
    application_name: str,
    prepared_statements: bool,
    pre_ping: PrePing,
    engine_options: Mapping[str, Any],
) -> Engine:
    """Build the pooled psycopg 3 engine a store owns when it is given a URL."""
    url = to_sqlalchemy_url(database) if isinstance(database, str) else database
    connect_args: dict[str, Any] = {"application_name": application_name}
    if not prepared_statements:
        # pgbouncer in transaction pooling mode moves sessions between server connections, so
        # a statement prepared on one is unknown on the next.
        connect_args["prepare_threshold"] = None
    options: dict[str, Any] = dict(engine_options)
    connect_args.update(options.pop("connect_args", {}))
    options.setdefault("pool_pre_ping", pre_ping == "query")
    engine = create_engine(url, connect_args=connect_args, **options)
    if pre_ping == "socket":
        event.listen(engine, "checkout", _check_socket)
    return engine


def _check_socket(
    dbapi_connection: Any,
    connection_record: ConnectionPoolEntry,
    connection_proxy: PoolProxiedConnection,
) -> None:
    """Refuse a pooled connection whose server side has already gone away.

    An idle connection has nothing to read unless the server sent something: for a connection
    that is not listening, that is an error message before a close, or the close itself. Raising
    DisconnectionError makes the pool discard it and connect afresh, so a store call after a
    killed backend or a server restart succeeds instead of failing on a dead socket.
    """
    conn: psycopg.Connection[Any] = dbapi_connection
    if conn.closed:
        raise DisconnectionError("connection closed")
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, psycopg.Error) as exc:
        raise DisconnectionError(f"connection lost: {exc}") from exc
    if readable:
        # An idle pooled connection is sent nothing but a goodbye: a FATAL error (terminated
        # backend, server shutdown) and then the close. Reading it does not tell: libpq files
        # the FATAL message as a notice and reports the connection OK until a later read finds
        # the end of file, so a read-and-check here passed dead connections on to the caller.
        raise DisconnectionError("the server sent data to an idle pooled connection")
    if conn.broken or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        raise DisconnectionError("connection lost")
