"""Where a store's statement runs, and who owns its transaction.

Every store operation is one SQL statement, handed to :meth:`Executor.execute` with the
caller's ``conn`` (or ``None``). This is the one place that decides transaction ownership:

* a caller's Connection or Session: the statement runs there, inside the caller's transaction,
  and nothing is begun, committed, rolled back or closed;
* none, on a store built from a URL: the store's own pool (:mod:`flowsignals.pool`) lends an
  autocommit connection, and the single statement is its own transaction;
* none, on a store given an Engine: a connection of that engine's pool, switched to
  autocommit for the statement.

Errors are raised as SQLAlchemy raises them (``sqlalchemy.exc.DBAPIError`` subclasses wrapping
psycopg's), whichever path ran the statement, so one handler serves them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.orm import Session

from flowsignals.errors import InvalidArgumentError, StoreClosedError
from flowsignals.pool import ConnectionPool

#: What every public method accepts as ``conn``: a Connection or a Session of the caller's.
CallerConnection = Connection | Session

#: Rows and row count of one statement.
Outcome = tuple[list[tuple[Any, ...]], int]

#: Key of the cursor kept in a pooled connection's ``info`` (see :func:`_reusable_cursor`).
_CURSOR_KEY = "flowsignals.cursor"

_ROWS = psycopg.pq.ExecStatus.TUPLES_OK


class Executor:
    """Runs one statement at a time for a store (thread-safe).

    Args:
        engine: The store's engine: the caller's, or the one built with ``pool``.
        pool: The store's own pool (a store built from a URL), or ``None`` to borrow
            connections from ``engine``'s pool.
        prepare: psycopg's ``prepare`` flag for the store's own connections: ``True`` prepares
            on first use, ``None`` keeps psycopg's policy (a caller's engine may sit behind
            pgbouncer).
    """

    def __init__(self, engine: Engine, pool: ConnectionPool | None, prepare: bool | None) -> None:
        self.engine = engine
        self.pool = pool
        self._prepare = prepare
        #: Set by the store's close(): every later call raises StoreClosedError.
        self.closed = False

    def execute(
        self,
        conn: CallerConnection | None,
        sql: str,
        params: Mapping[str, Any],
        *,
        pool_timeout: float | None = None,
    ) -> Outcome:
        """Run one statement; return its rows (empty for no result set) and its row count.

        Without ``conn`` the single statement runs in autocommit: no BEGIN and COMMIT round
        trips, and no SQLAlchemy Connection to set up (that layer costs more than the
        statement itself on a fast server). ``pool_timeout`` caps the wait for one of the
        store's own connections (a blocking wait's time left); a caller's Engine keeps its
        pool's own timeout.
        """
        # The caller's conn is an argument: checked first, as the in-memory store does.
        connection = None if conn is None else caller_connection(conn)
        if self.closed:
            raise StoreClosedError("the store is closed; create a new one to go on")
        if connection is not None:
            result = connection.exec_driver_sql(sql, params)
            count = result.rowcount  # read first: consuming the rows closes the result
            rows = [tuple(row) for row in result] if result.returns_rows else []
            return rows, count
        if self.pool is not None:
            cursor = self.pool.checkout(pool_timeout)
            try:
                return self._run(cursor, sql, params)
            finally:
                self.pool.checkin(cursor)
        return self._execute_on_engine(sql, params)

    def _run(self, cursor: psycopg.Cursor[Any], sql: str, params: Mapping[str, Any]) -> Outcome:
        try:
            cursor.execute(sql, params, prepare=self._prepare)
            # The result status, not ``cursor.description``, which builds column objects.
            result = cursor.pgresult
            rows = cursor.fetchall() if result is not None and result.status == _ROWS else []
        except psycopg.Error as exc:
            # The same exception a caller's own SQLAlchemy connection would raise. A connection
            # that is broken, or not idle after the error (a FATAL message read before libpq saw
            # the close leaves it busy), is not reused: the pools check on return.
            driver = cursor.connection
            invalidated = driver.broken or not _idle(driver)
            raise DBAPIError.instance(
                sql, dict(params), exc, psycopg.Error, connection_invalidated=invalidated
            ) from exc
        return rows, cursor.rowcount

    def _execute_on_engine(self, sql: str, params: Mapping[str, Any]) -> Outcome:
        try:
            pooled = self.engine.raw_connection()
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


def caller_connection(conn: object) -> Connection:
    """The Connection behind a caller's ``conn`` (a Session's, in its transaction).

    Raises:
        InvalidArgumentError: ``conn`` is not a Connection or Session on psycopg 3.
    """
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
            "conn", f"must use the psycopg (3) driver, not {connection.dialect.driver}"
        )
    return connection


def _reusable_cursor(info: dict[Any, Any], driver: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """Return the cursor kept with this pooled connection, creating it on first use.

    Building a cursor per statement was a measurable share of a call's client-side cost. A
    pooled connection is checked out by one thread at a time, so its cursor is too. The
    identity check drops a cursor left from a connection the pool replaced. Binary results:
    psycopg parses text timestamps only in DateStyle ISO; binary values do not depend on it.
    """
    cursor: psycopg.Cursor[Any] | None = info.get(_CURSOR_KEY)
    if cursor is None or cursor.connection is not driver or cursor.closed:
        cursor = info[_CURSOR_KEY] = driver.cursor(binary=True)
    return cursor


def _idle(driver: psycopg.Connection[Any]) -> bool:
    return not driver.closed and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
