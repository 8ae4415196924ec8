"""The store's own connection pool: autocommit psycopg connections, checked out per statement.

A store built from a URL runs each of its operations as one autocommit statement on one of
these connections. SQLAlchemy's pool does far more per checkout (events, reset-on-return, record
bookkeeping) than that needs; measured, it cost more than the statement itself on a fast server
(see docs/benchmarks.md). This pool keeps only what a single-statement call needs: a LIFO stack
of idle connections under one lock, a liveness check that costs no round trip, and a bound on
the number of connections.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from psycopg import pq
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from flowsignals.errors import StoreClosedError

#: How a pooled connection is checked before use. ``"socket"``: without a round trip, by looking
#: for anything the server sent to the idle connection (for a connection that is not
#: listening, only a FATAL message before a close, or the close itself). ``"query"``: a
#: ``SELECT 1`` round trip per checkout, which also catches silently dropped networks.
#: ``None``: no check.
PrePing = Literal["socket", "query"] | None


class ConnectionPool:
    """A bounded pool of autocommit psycopg connections (thread-safe).

    Args:
        connect: Opens a new autocommit connection; keyword arguments override its settings.
        max_size: Most connections open at once; further checkouts wait for one to come back.
        timeout: Seconds a checkout waits before raising ``sqlalchemy.exc.TimeoutError``.
        pre_ping: The liveness check on checkout (see :data:`PrePing`).
    """

    def __init__(
        self,
        connect: Callable[..., psycopg.Connection[Any]],
        *,
        max_size: int,
        timeout: float,
        pre_ping: PrePing,
    ) -> None:
        self._connect = connect
        #: Opens a new autocommit connection with the pool's settings (the listener uses it).
        self.connect = connect
        self._max_size = max_size
        self._timeout = timeout
        self._pre_ping = pre_ping
        self._idle: list[psycopg.Cursor[Any]] = []
        self._size = 0  # connections open or being opened, idle or checked out
        self._closed = False
        self._returned = threading.Condition(threading.Lock())

    @contextmanager
    def cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """Check out a live connection's cursor for one statement, and return it afterwards.

        Each connection keeps one cursor for its life: building one per statement was a
        measurable share of a call's cost. A connection that comes back broken, or not idle (an
        error read mid-statement can leave it busy), is closed instead of being reused.
        """
        cursor = self.checkout()
        try:
            yield cursor
        finally:
            self.checkin(cursor)

    def close(self) -> None:
        """Close idle connections now and the others when they come back."""
        with self._returned:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._returned.notify_all()
        for cursor in idle:
            cursor.connection.close()

    @property
    def size(self) -> int:
        """Connections open (idle or in use)."""
        return self._size

    def checkout(self, timeout: float | None = None) -> psycopg.Cursor[Any]:
        """Check out a live connection's cursor; hand it back with :meth:`checkin`.

        The hot path's form of :meth:`cursor`: a generator-based context manager costs more
        than the rest of a checkout. ``timeout`` (seconds) shortens the pool's own wait for a
        free connection, for a caller with less time left than that.
        """
        limit = self._timeout if timeout is None else min(timeout, self._timeout)
        while True:
            with self._returned:
                cursor = self._take_or_reserve(limit)
            if cursor is None:
                return self._open()
            # From here the slot is ours: whatever interrupts (even KeyboardInterrupt), give it
            # back, or the pool would shrink for good.
            try:
                alive = self._alive(cursor.connection)
            except BaseException:
                self._discard(cursor.connection)
                raise
            if alive:
                return cursor
            self._discard(cursor.connection)

    def _take_or_reserve(self, timeout: float) -> psycopg.Cursor[Any] | None:
        """Pop an idle connection, or reserve a slot for a new one (None); waits when full."""
        if self._idle and not self._closed:
            return self._idle.pop()  # the usual case, without building wait_for's predicate
        if not self._returned.wait_for(
            lambda: self._closed or self._idle or self._size < self._max_size,
            timeout=timeout,
        ):
            raise PoolTimeoutError(
                f"no connection free within {timeout:g} s "
                f"({self._max_size} in use; raise max_connections or shorten transactions)"
            )
        if self._closed:
            raise StoreClosedError("the store is closed")
        if self._idle:
            return self._idle.pop()
        self._size += 1
        return None

    def _open(self) -> psycopg.Cursor[Any]:
        """Open a connection in the slot just reserved; give the slot back if that fails."""
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._connect()
            # Binary results: psycopg parses text timestamps only in DateStyle ISO, and a
            # server or role default of another DateStyle would fail each call after it had
            # committed. Binary values do not depend on DateStyle.
            return conn.cursor(binary=True)
        except BaseException as exc:
            with self._returned:
                self._size -= 1
                self._returned.notify()
            if conn is not None:
                conn.close()
            if isinstance(exc, psycopg.Error):
                # Raised as SQLAlchemy raises a failed connect from engine.connect().
                raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc
            raise

    def checkin(self, cursor: psycopg.Cursor[Any]) -> None:
        """Return a cursor from :meth:`checkout`: kept if its connection is idle, else closed."""
        conn = cursor.connection
        try:
            # pgconn's status, not conn.info's: that builds a ConnectionInfo object per call.
            reusable = not (
                conn.closed
                or conn.broken
                or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE
            )
        except BaseException:
            self._discard(conn)
            raise
        if not reusable:
            self._discard(conn)
            return
        with self._returned:
            if not self._closed:
                self._idle.append(cursor)
                self._returned.notify()
                return
            self._size -= 1
        conn.close()

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._returned:
            self._size -= 1
            self._returned.notify()
        conn.close()

    def _alive(self, conn: psycopg.Connection[Any]) -> bool:
        if conn.closed or conn.broken or conn.pgconn.status != pq.ConnStatus.OK:
            return False
        if self._pre_ping == "socket":
            # An idle connection is sent nothing but a goodbye: a FATAL error (terminated
            # backend, server shutdown) and then the close. Whatever is there, do not reuse it.
            # poll(), not select(): select() cannot take a descriptor above 1023, and a busy
            # process has those.
            poller = select.poll()
            try:
                poller.register(conn.fileno(), select.POLLIN)
                return not poller.poll(0)
            except (OSError, ValueError):
                return False
        if self._pre_ping == "query":
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return False
        return True
