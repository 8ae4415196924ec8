"""PostgresSignalStore: the signal-waiter repository over a SQLAlchemy Engine."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.orm import Session

from flowsignals import statements as sql
from flowsignals.engine import build_engine_and_pool
from flowsignals.errors import InvalidArgumentError
from flowsignals.pool import ConnectionPool, PrePing
from flowsignals.results import DeliveryResult, DeliveryStatus, SignalWaiter
from flowsignals.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_expires_at,
    check_max_payload_bytes,
    check_name,
    check_payload,
    check_run_id,
    check_timeout,
)

#: What every public method accepts as ``conn``: a Connection or a Session of the caller's.
CallerConnection = Connection | Session

#: Key of the cursor kept in a pooled connection's ``info`` (see :func:`_reusable_cursor`).
_CURSOR_KEY = "flowsignals.cursor"

_ROWS = psycopg.pq.ExecStatus.TUPLES_OK

_OUTCOMES = {
    sql.OUTCOME_DELIVERED: DeliveryStatus.DELIVERED,
    sql.OUTCOME_ALREADY_DELIVERED: DeliveryStatus.ALREADY_DELIVERED,
    sql.OUTCOME_EXPIRED: DeliveryStatus.EXPIRED,
}


class PostgresSignalStore:
    """Signal waiters kept in PostgreSQL.

    Every operation is one SQL statement. Each public method takes a keyword-only ``conn``:

    * without it, the call is one transaction of its own on a pooled connection (the single
      statement runs in autocommit: no separate BEGIN and COMMIT round trips);
    * with a caller's :class:`~sqlalchemy.Connection` or :class:`~sqlalchemy.orm.Session`, it
      runs inside the caller's transaction, and the store never begins, commits, rolls back or
      closes anything: the caller's commit makes it durable, the caller's rollback undoes it.

    The store is thread-safe; share one per process.

    Args:
        database: A URL (``postgresql://...`` as libpq writes it, or
            ``postgresql+psycopg://...``) or an existing :class:`~sqlalchemy.Engine`. From a URL
            the store builds and owns a pooled psycopg 3 engine, disposed by :meth:`close`; an
            Engine passed in is used as it is and never disposed by the store.
        schema: The PostgreSQL schema holding the table; ``None`` uses the search_path.
        max_payload_bytes: Largest accepted payload, in UTF-8 bytes.
        prepared_statements: Let psycopg prepare the store's statements server-side (only for
            an engine the store builds). Turn off behind pgbouncer in transaction pooling mode.
        application_name: Reported in ``pg_stat_activity`` (only for an engine the store builds).
        pre_ping: How the store's own pool checks a connection before use (see
            :data:`flowsignals.pool.PrePing`): ``"socket"`` (default) costs no round trip.
        max_connections: Most connections the store's own pool opens (only from a URL);
            calls beyond that wait for one to be free.
        pool_timeout: Seconds such a call waits before raising ``sqlalchemy.exc.TimeoutError``.
        engine_options: Extra keyword arguments for :func:`sqlalchemy.create_engine` (only from
            a URL); ``connect_args`` in it apply to the store's own pool too.
        verify_schema: Check at construction, in one short transaction of the store's own, that
            the database is at flowsignals' head revision (see
            :func:`flowsignals.migrations.check`).

    Raises:
        InvalidArgumentError: ``database`` or another argument is not acceptable.
        SchemaNotAtHeadError: ``verify_schema`` is set and the database is not at head.
    """

    def __init__(
        self,
        database: str | URL | Engine,
        *,
        schema: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        prepared_statements: bool = True,
        application_name: str = "flowsignals",
        pre_ping: PrePing = "socket",
        max_connections: int = 20,
        pool_timeout: float = 30.0,
        engine_options: Mapping[str, Any] | None = None,
        verify_schema: bool = False,
    ) -> None:
        self._max_payload_bytes = check_max_payload_bytes(max_payload_bytes)
        if schema is not None:
            check_name("schema", schema)
        self._schema = schema
        self._sql = sql.for_schema(schema)
        if isinstance(database, Engine):
            self._engine = database
            self._owns_engine = False
            # A caller's engine keeps its own pool, and psycopg's own prepare policy (it may
            # sit behind pgbouncer).
            self._pool: ConnectionPool | None = None
            self._prepare: bool | None = None
        elif isinstance(database, (str, URL)):
            if isinstance(max_connections, bool) or not isinstance(max_connections, int):
                raise InvalidArgumentError("max_connections", "must be a positive int")
            if max_connections < 1:
                raise InvalidArgumentError("max_connections", "must be a positive int")
            try:
                self._engine, self._pool = build_engine_and_pool(
                    database,
                    application_name=application_name,
                    prepared_statements=prepared_statements,
                    engine_options=engine_options or {},
                    max_connections=max_connections,
                    pool_timeout=check_timeout("pool_timeout", pool_timeout),
                    pre_ping=pre_ping,
                )
            except InvalidArgumentError as exc:
                if exc.argument != "url":
                    raise
                raise InvalidArgumentError("database", exc.rule) from exc
            self._owns_engine = True
            # Prepare on first use, as a hand-written client would, rather than on the fifth.
            self._prepare = True if prepared_statements else None
        else:
            raise InvalidArgumentError(
                "database",
                f"must be a URL string or a sqlalchemy.Engine, not {type(database).__name__}",
            )
        self._closed = False
        if verify_schema:
            # Imported here: only stores that check the revision need Alembic loaded.
            from flowsignals import migrations

            try:
                migrations.verify(self._engine, schema)
            except BaseException:
                self.close()
                raise

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine: the one passed in, or one built from the URL for your use.

        A store built from a URL runs its own operations on a pool of its own, not on this
        engine's; the engine is there for your transactions (``conn=``) and schema checks.
        """
        return self._engine

    @property
    def schema(self) -> str | None:
        """The schema holding the waiter table, or ``None`` for the search_path."""
        return self._schema

    def register_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        signal_name: str,
        expires_at: datetime | None = None,
        *,
        conn: CallerConnection | None = None,
    ) -> None:
        """Park a step until ``signal_name`` is delivered to its run.

        Idempotent on (run_id, step_key): registering again changes only the signal name and the
        deadline. It never resets ``created_at`` and never clears a delivery already recorded, so
        a re-run step finds its payload. Concurrent registrations of one key never fail.

        Args:
            run_id: The workflow run (a UUID, or a str holding one).
            step_key: The step within the run.
            signal_name: The signal the step waits for.
            expires_at: Timezone-aware deadline, judged by the database server's clock; ``None``
                waits forever.
            conn: Run inside this caller's transaction instead of one of the store's own.

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was written.
        """
        params = {
            "run": check_run_id(run_id),
            "step": check_name("step_key", step_key),
            "signal": check_name("signal_name", signal_name),
            "deadline": check_expires_at(expires_at),
        }
        self._execute(conn, self._sql.register, params)

    def deliver_signal(
        self,
        run_id: uuid.UUID | str,
        signal_name: str,
        payload_json: str,
        *,
        conn: CallerConnection | None = None,
    ) -> DeliveryResult:
        """Hand ``payload_json`` to the oldest pending waiter of (run_id, signal_name).

        The oldest waiter (by ``created_at``, then ``step_key``) that is neither delivered nor
        past its deadline receives the payload. One statement decides and reports the outcome,
        waiting on row locks held by racing deliveries rather than skipping them, so of any
        number of concurrent deliveries to K pending waiters exactly min(N, K) are DELIVERED
        and every other one is told ALREADY_DELIVERED, never NOT_FOUND.

        Args:
            run_id: The workflow run (a UUID, or a str holding one).
            signal_name: The signal being delivered.
            payload_json: Strict RFC 8259 JSON text, stored exactly as given.
            conn: Run inside this caller's transaction instead of one of the store's own.

        Returns:
            DELIVERED with the step and time of this delivery; else ALREADY_DELIVERED with the
            step and time of the latest earlier delivery; else EXPIRED with the oldest expired
            step; else NOT_FOUND (nothing is written in any of these).

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was written.
        """
        params = {
            "run": check_run_id(run_id),
            "signal": check_name("signal_name", signal_name),
            "payload": check_payload(payload_json, self._max_payload_bytes),
        }
        rows, _ = self._execute(conn, self._sql.deliver, params)
        if not rows:
            return DeliveryResult(DeliveryStatus.NOT_FOUND)
        outcome, step_key, delivered_at = rows[0]
        return DeliveryResult(_OUTCOMES[outcome], step_key, _utc(delivered_at))

    def get_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: CallerConnection | None = None,
    ) -> SignalWaiter | None:
        """Return the waiter of (run_id, step_key), or ``None`` if there is none.

        Raises:
            InvalidArgumentError: An argument broke its rule.
        """
        params = {"run": check_run_id(run_id), "step": check_name("step_key", step_key)}
        rows, _ = self._execute(conn, self._sql.get, params)
        return waiter_from_row(rows[0]) if rows else None

    def remove_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: CallerConnection | None = None,
    ) -> bool:
        """Delete the waiter of (run_id, step_key), delivered or not.

        Returns:
            True if a waiter was removed, False if there was none.

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was removed.
        """
        params = {"run": check_run_id(run_id), "step": check_name("step_key", step_key)}
        _, count = self._execute(conn, self._sql.remove, params)
        return count == 1

    def close(self) -> None:
        """Close what the store built: its pool and engine. An Engine passed in is left alone."""
        if not self._closed:
            self._closed = True
            if self._pool is not None:
                self._pool.close()
            if self._owns_engine:
                self._engine.dispose()

    def __enter__(self) -> PostgresSignalStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"<PostgresSignalStore {url} schema={self._schema!r}>"

    def _execute(
        self, conn: CallerConnection | None, sql: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; return its rows (empty for no result set) and its row count.

        The one place that decides transaction ownership. A caller's connection is used as it
        is, inside the caller's transaction, and never committed, rolled back or closed.
        Otherwise one pooled connection runs the single statement in autocommit, which is its
        own transaction: no BEGIN and COMMIT round trips, and no SQLAlchemy Connection to set
        up (that layer costs more than the statement itself on a fast server).
        """
        if conn is not None:
            result = self._caller_connection(conn).exec_driver_sql(sql, params)
            rows = [tuple(row) for row in result] if result.returns_rows else []
            return rows, result.rowcount
        if self._pool is not None:
            with self._pool.cursor() as cursor:
                return self._run(cursor, sql, params)
        return self._execute_on_engine(sql, params)

    def _run(
        self, cursor: psycopg.Cursor[Any], sql: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        try:
            cursor.execute(sql, params, prepare=self._prepare)
        except psycopg.Error as exc:
            # The same exception a caller's own SQLAlchemy connection would raise, so one
            # handler serves both paths. A connection that is broken, or not idle after the
            # error, is not reused (the pool checks on return).
            driver = cursor.connection
            invalidated = driver.broken or not _idle(driver)
            raise DBAPIError.instance(
                sql, dict(params), exc, psycopg.Error, connection_invalidated=invalidated
            ) from exc
        # The result status, not ``cursor.description``, which builds column objects.
        result = cursor.pgresult
        rows = cursor.fetchall() if result is not None and result.status == _ROWS else []
        return rows, cursor.rowcount

    def _execute_on_engine(
        self, sql: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement in autocommit on a connection of the caller's engine's pool."""
        try:
            pooled = self._engine.raw_connection()
        except psycopg.Error as exc:
            # Connecting failed: raised as SQLAlchemy raises it from engine.connect().
            raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc
        except InvalidRequestError as exc:
            # The pool's checkout check refused a new connection three times in a row (each
            # died at once); SQLAlchemy says so with an InvalidRequestError. It is a lost
            # connection like any other: raise the same OperationalError.
            lost = psycopg.OperationalError(f"no live connection after repeated attempts: {exc}")
            raise DBAPIError.instance(
                None, None, lost, psycopg.Error, connection_invalidated=True
            ) from exc
        try:
            driver: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
            restore = not driver.autocommit
            if restore:
                driver.autocommit = True
            try:
                return self._run(_reusable_cursor(pooled.info, driver), sql, params)
            finally:
                if restore and _idle(driver):
                    driver.autocommit = False
        except DBAPIError as exc:
            if exc.connection_invalidated:
                pooled.invalidate(exc.orig)
            raise
        finally:
            pooled.close()

    def _caller_connection(self, conn: object) -> Connection:
        if isinstance(conn, Session):
            connection = conn.connection()
        elif isinstance(conn, Connection):
            connection = conn
        else:
            raise InvalidArgumentError(
                "conn",
                f"must be a sqlalchemy Connection or Session, or None, not {type(conn).__name__}",
            )
        if connection.dialect.driver != "psycopg":
            raise InvalidArgumentError(
                "conn",
                f"must use the psycopg (3) driver, not {connection.dialect.driver}",
            )
        return connection


def _reusable_cursor(info: dict[Any, Any], driver: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """Return the cursor kept with this pooled connection, creating it on first use.

    Building a cursor per statement was a measurable share of a call's client-side cost. A
    pooled connection is checked out by one thread at a time, so its cursor is too. It holds
    the last result until the next statement on that connection (at most one per pooled
    connection). The identity check drops a cursor left from a connection the pool replaced.
    """
    cursor: psycopg.Cursor[Any] | None = info.get(_CURSOR_KEY)
    if cursor is None or cursor.connection is not driver or cursor.closed:
        cursor = info[_CURSOR_KEY] = driver.cursor(binary=True)
    return cursor


def waiter_from_row(row: Sequence[Any]) -> SignalWaiter:
    """Build a SignalWaiter from a row of :func:`flowsignals.statements.waiter_columns`."""
    run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload_json = row
    return SignalWaiter(
        run_id=run_id,
        step_key=step_key,
        signal_name=signal_name,
        created_at=created_at.astimezone(timezone.utc),
        expires_at=_utc(expires_at),
        delivered_at=_utc(delivered_at),
        payload_json=payload_json,
    )


def _idle(driver: psycopg.Connection[Any]) -> bool:
    return not driver.closed and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _utc(value: datetime | None) -> datetime | None:
    # psycopg returns the session's time zone; results are always in UTC whatever it is.
    return None if value is None else value.astimezone(timezone.utc)
