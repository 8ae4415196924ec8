"""What a store builds for itself from a URL: a SQLAlchemy engine and its own connection pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.exc import ArgumentError

from flowsignals.errors import InvalidArgumentError
from flowsignals.pool import ConnectionPool, PrePing
from flowsignals.urls import to_sqlalchemy_url

#: What PostgreSQL's SQLAlchemy dialects accept as an engine's isolation_level.
_ISOLATION_LEVELS = frozenset(
    {"AUTOCOMMIT", "READ COMMITTED", "READ UNCOMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)

#: psycopg.connect() arguments that are not libpq connection parameters.
_PSYCOPG_ARGUMENTS = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)


def build_engine_and_pool(
    database: str | URL,
    *,
    application_name: str,
    prepared_statements: bool,
    engine_options: Mapping[str, Any],
    max_connections: int,
    pool_timeout: float,
    pre_ping: PrePing,
) -> tuple[Engine, ConnectionPool]:
    """Build what a store owns when it is given a URL.

    The pool runs the store's own operations; the engine (SQLAlchemy's pool, pre-ping on)
    serves :attr:`PostgresSignalStore.engine` and schema checks. Both connect with the same
    settings: the dialect's translation of the URL plus the same ``connect_args``; so does the
    listener, through ``pool.connect(application_name=...)``.
    """
    url = to_sqlalchemy_url(database)
    connect_args: dict[str, Any] = {"application_name": application_name}
    if not prepared_statements:
        # pgbouncer in transaction pooling mode moves sessions between server connections, so
        # a statement prepared on one is unknown on the next.
        connect_args["prepare_threshold"] = None
    options: dict[str, Any] = dict(engine_options)
    extra_connect_args = options.pop("connect_args", {})
    if not isinstance(extra_connect_args, Mapping):
        raise InvalidArgumentError("engine_options", "its connect_args must be a mapping")
    connect_args.update(extra_connect_args)
    options.setdefault("pool_pre_ping", True)
    level = options.get("isolation_level")
    if level is not None and level not in _ISOLATION_LEVELS:
        # SQLAlchemy would only say so at the engine's first connection.
        raise InvalidArgumentError(
            "engine_options",
            f"its isolation_level must be one of {', '.join(sorted(_ISOLATION_LEVELS))},"
            f" not {level!r}",
        )
    try:
        engine = create_engine(url, connect_args=connect_args, **options)
    except (TypeError, ArgumentError) as exc:
        # An option create_engine (or the pool it builds) does not take.
        raise InvalidArgumentError("engine_options", str(exc)) from exc

    _, dialect_args = engine.dialect.create_connect_args(engine.url)
    settings = {**dialect_args, **connect_args, "autocommit": True}
    # Without a bound, connecting to an unreachable host can outlast any pool or wait timeout.
    settings.setdefault("connect_timeout", 10)
    _check_conninfo({k: v for k, v in settings.items() if k not in _PSYCOPG_ARGUMENTS})

    def connect(**overrides: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**{**settings, **overrides})

    pool = ConnectionPool(
        connect, max_size=max_connections, timeout=pool_timeout, pre_ping=pre_ping
    )
    return engine, pool


def _check_conninfo(parameters: Mapping[str, Any]) -> None:
    """Refuse what libpq would refuse at every connection: an unknown parameter, say."""
    try:
        make_conninfo("", **parameters)
    except psycopg.ProgrammingError as exc:
        raise InvalidArgumentError(
            "engine_options", f"its connect_args are not libpq's: {str(exc).strip()}"
        ) from exc
