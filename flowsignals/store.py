"""PostgresSignalStore: the signal-waiter repository over a SQLAlchemy Engine."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy import URL, Engine

from flowsignals import statements as sql
from flowsignals.engine import build_engine_and_pool
from flowsignals.errors import (
    InvalidArgumentError,
)
from flowsignals.executor import CallerConnection, Executor
from flowsignals.listener import Listener
from flowsignals.pool import ConnectionPool, PrePing
from flowsignals.results import (
    DeliveryResult,
    DeliveryStatus,
    SignalWaiter,
    WaiterCounts,
    WaiterCursor,
    WaiterState,
)
from flowsignals.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_SECONDS,
    check_after,
    check_application_name,
    check_expires_at,
    check_idempotency_key,
    check_interval,
    check_limit,
    check_max_payload_bytes,
    check_name,
    check_older_than,
    check_payload,
    check_run_id,
    check_state,
    check_timeout,
    check_wait_conn,
)
from flowsignals.waiting import wait_for_delivery

#: Default pause between table reads of a wait: with LISTEN, a safety net behind the
#: notifications; without it (``listen=False``), the polling interval.
DEFAULT_RECHECK_INTERVAL = 5.0
DEFAULT_POLL_INTERVAL = 0.5

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
        listen: Let :meth:`wait_for_signal` be woken by LISTEN/NOTIFY, on one dedicated
            connection per store. Turn off where LISTEN does not work (pgbouncer in transaction
            pooling mode): waits then poll the table every ``poll_interval`` seconds.
        recheck_interval: With ``listen``, how often (seconds) a wait reads the table even
            without a notification; bounds how late a wait can be if a notification is lost.
        poll_interval: Without ``listen``, how often (seconds) a wait reads the table.

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
        listen: bool = True,
        recheck_interval: float = DEFAULT_RECHECK_INTERVAL,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self._max_payload_bytes = check_max_payload_bytes(max_payload_bytes)
        self._listen = bool(listen)
        self._recheck_interval = check_interval("recheck_interval", recheck_interval)
        self._poll_interval = check_interval("poll_interval", poll_interval)
        check_application_name(application_name)
        if engine_options is not None and not isinstance(engine_options, Mapping):
            raise InvalidArgumentError(
                "engine_options",
                "must be a mapping of create_engine arguments, "
                f"not {type(engine_options).__name__}",
            )
        self._listener_application_name = f"{application_name}-listener"[:63]
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        if schema is not None:
            check_name("schema", schema)
        self._schema = schema
        self._sql = sql.for_schema(schema)
        self._channel = sql.notify_channel(schema)
        if pre_ping not in ("socket", "query", None):
            raise InvalidArgumentError(
                "pre_ping", f'must be "socket", "query" or None, not {pre_ping!r}'
            )
        if isinstance(database, Engine):
            if database.dialect.driver != "psycopg":
                raise InvalidArgumentError(
                    "database",
                    "an Engine must use the psycopg (3) driver (postgresql+psycopg://...), "
                    f"not {database.dialect.name}+{database.dialect.driver}",
                )
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
                    pool_timeout=check_timeout("pool_timeout", pool_timeout, maximum=MAX_SECONDS),
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
        self._executor = Executor(self._engine, self._pool, self._prepare)
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
        self._executor.execute(conn, self._sql.register, params)

    def deliver_signal(
        self,
        run_id: uuid.UUID | str,
        signal_name: str,
        payload_json: str,
        *,
        idempotency_key: str | None = None,
        conn: CallerConnection | None = None,
    ) -> DeliveryResult:
        """Hand ``payload_json`` to the oldest pending waiter of (run_id, signal_name).

        The oldest waiter (by ``created_at``, then ``step_key``) that is neither delivered nor
        past its deadline receives the payload. One statement decides and reports the outcome,
        waiting on row locks held by racing deliveries rather than skipping them, so of any
        number of concurrent deliveries to K pending waiters exactly min(N, K) are DELIVERED
        and every other one is told ALREADY_DELIVERED, never NOT_FOUND.

        A delivery whose outcome was lost (the connection dropped after the server committed)
        is safe to retry with the same ``idempotency_key``: when a waiter of (run_id,
        signal_name) already holds a delivery made with that key, nothing is written and that
        delivery is reported as DELIVERED again, its step and time unchanged (the retry's
        payload is not stored). The key is kept on the delivered waiter with the signal it was
        delivered for, so it is remembered for as long as that waiter is (until it is removed
        or purged), even if the waiter is registered again under another signal name.

        Args:
            run_id: The workflow run (a UUID, or a str holding one).
            signal_name: The signal being delivered.
            payload_json: Strict RFC 8259 JSON text, stored exactly as given.
            idempotency_key: The caller's name for this delivery, the same on every retry
                (the rules of a step key); ``None``: every call is a new delivery.
            conn: Run inside this caller's transaction instead of one of the store's own.

        Returns:
            DELIVERED with the step and time of this delivery (or of the earlier delivery with
            the same key); else ALREADY_DELIVERED with the step and time of the latest earlier
            delivery; else EXPIRED with the oldest expired step; else NOT_FOUND (nothing is
            written in any of these).

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was written.
        """
        params = {
            "run": check_run_id(run_id),
            "signal": check_name("signal_name", signal_name),
            "payload": check_payload(payload_json, self._max_payload_bytes),
            "key": check_idempotency_key(idempotency_key),
            "channel": self._channel,
        }
        rows, _ = self._executor.execute(conn, self._sql.deliver, params)
        if not rows:
            return DeliveryResult(DeliveryStatus.NOT_FOUND)
        outcome, step_key, delivered_at = rows[0]
        return DeliveryResult(_OUTCOMES[outcome], step_key, sql.as_utc(delivered_at))

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
        rows, _ = self._executor.execute(conn, self._sql.get, params)
        return sql.waiter_from_row(rows[0]) if rows else None

    def remove_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: CallerConnection | None = None,
    ) -> bool:
        """Delete the waiter of (run_id, step_key), delivered or not.

        A wait on it ends with :class:`WaiterNotFoundError` once the removal commits.

        Returns:
            True if a waiter was removed, False if there was none.

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was removed.
        """
        params = {
            "run": check_run_id(run_id),
            "step": check_name("step_key", step_key),
            "channel": self._channel,
        }
        # One row back (the notification) per waiter removed.
        rows, _ = self._executor.execute(conn, self._sql.remove, params)
        return len(rows) == 1

    def wait_for_signal(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        timeout: float | timedelta,
        conn: CallerConnection | None = None,
    ) -> SignalWaiter:
        """Block until the waiter of (run_id, step_key) is delivered; return it, payload included.

        Returns at once if it already was. With ``listen`` (the default) the wait is woken by a
        notification the delivery sends on commit (never on rollback); it reads the table again
        every ``recheck_interval`` seconds regardless, and at once whenever the listener
        reconnects, so neither a killed listener connection nor a server restart loses a
        delivery. With ``listen=False`` it reads the table every ``poll_interval`` seconds.
        Reads that fail because the connection was lost are retried until the timeout.

        Each read is its own transaction on a pooled connection, so a wait never holds a
        connection or a snapshot while it sleeps.

        Args:
            run_id: The workflow run (a UUID, or a str holding one).
            step_key: The step within the run.
            timeout: Longest wait, in seconds or as a timedelta; 0 reads the table once.
            conn: Must be ``None``: inside a caller's transaction the wait might never see
                the delivery (its snapshot predates it), and would hold the transaction open.

        Returns:
            The delivered waiter (``payload_json`` and ``delivered_at`` set).

        Raises:
            InvalidArgumentError: An argument broke its rule, or ``conn`` was given.
            WaitTimeoutError: ``timeout`` passed with the waiter still pending.
            WaiterNotFoundError: There is no such waiter, or it was removed while waiting.
            WaiterExpiredError: Its deadline passed (server clock) undelivered, or it was
                claimed.
        """
        run = check_run_id(run_id)
        step = check_name("step_key", step_key)
        seconds = check_timeout("timeout", timeout)
        check_wait_conn(conn)
        deadline = time.monotonic() + seconds
        wait = (self._executor, self._sql, run, step, seconds, deadline)
        if not self._listen:
            return wait_for_delivery(*wait, None, self._poll_interval)
        with self._get_listener().subscribe(run, step) as event:
            return wait_for_delivery(*wait, event, self._recheck_interval)

    def claim_expired(
        self, *, limit: int = 100, conn: CallerConnection | None = None
    ) -> list[SignalWaiter]:
        """Claim up to ``limit`` waiters whose deadline has passed, for the caller to fail.

        A waiter is claimable once its deadline is at or before the server's clock while it is
        neither delivered nor claimed. Claiming stamps ``claimed_at`` and is final: the waiter
        stays as a tombstone that :meth:`get_waiter` shows, a delivery to it returns EXPIRED,
        re-registering it never clears the claim, and a wait on it raises
        :class:`WaiterExpiredError`. Parallel claimers skip rows locked by one another (it is a
        queue) so they never block each other and never get the same waiter twice; a delivery
        racing a claim has exactly one outcome.

        With ``conn`` the claim is part of the caller's transaction: fail the steps in it and
        commit, or roll back and the waiters are claimable again.

        Returns:
            The claimed waiters (``claimed_at`` set), earliest deadline first; a limited claim
            takes tied deadlines in (``run_id``, ``step_key``) order.

        Raises:
            InvalidArgumentError: ``limit`` is not a positive int (at most 10,000).
        """
        params = {"limit": check_limit("limit", limit), "channel": self._channel}
        rows, _ = self._executor.execute(conn, self._sql.claim_expired, params)
        waiters = [sql.waiter_from_row(row[:-1]) for row in rows]
        return sorted(waiters, key=lambda w: (w.expires_at, w.run_id, w.step_key))

    def purge(
        self,
        *,
        older_than: timedelta,
        limit: int | None = None,
        batch_size: int = 1000,
        conn: CallerConnection | None = None,
    ) -> int:
        """Delete delivered and claimed waiters that finished more than ``older_than`` ago.

        Finish time is ``delivered_at`` or ``claimed_at``, against the server's clock. Pending
        and expired-but-unclaimed waiters are never deleted. Rows are deleted in batches of at
        most ``batch_size``, each one statement; without ``conn`` each batch is its own short
        transaction, so a large purge never holds many locks for long. Rows locked by another
        transaction are skipped, not waited for (a later purge takes them). With ``conn`` the
        batches run in the caller's transaction (and its locks last until it ends).

        Args:
            older_than: How long a waiter must have been finished (a non-negative timedelta).
            limit: Most rows to delete in all, or ``None`` for no limit.
            batch_size: Most rows per statement (at most 10,000).
            conn: Run inside this caller's transaction instead of the store's own.

        Returns:
            How many waiters were deleted.

        Raises:
            InvalidArgumentError: An argument broke its rule; nothing was deleted.
        """
        age = check_older_than(older_than)
        remaining = None if limit is None else check_limit("limit", limit, maximum=None)
        batch = check_limit("batch_size", batch_size)
        total = 0
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            _, deleted = self._executor.execute(
                conn, self._sql.purge_batch, {"age": age, "batch": size}
            )
            total += deleted
            if remaining is not None:
                remaining -= deleted
            if deleted < size:
                break
        return total

    def list_waiters(
        self,
        *,
        run_id: uuid.UUID | str | None = None,
        signal_name: str | None = None,
        state: WaiterState | str | None = None,
        limit: int = 100,
        after: SignalWaiter | WaiterCursor | None = None,
        conn: CallerConnection | None = None,
    ) -> list[SignalWaiter]:
        """List waiters in a stable order, one keyset page at a time.

        The order is (``created_at``, ``run_id``, ``step_key``). For the next page pass the
        last waiter of this one (or its :attr:`SignalWaiter.cursor`) as ``after``: pages never
        repeat or skip a waiter that exists throughout, however many are added meanwhile.

        Args:
            run_id: Only this run's waiters.
            signal_name: Only waiters of this signal.
            state: Only waiters in this :class:`WaiterState` (or its value, e.g. "pending"),
                judged by the server's clock.
            limit: Most waiters to return (1 to 10,000).
            after: Start after this waiter or cursor.
            conn: Run inside this caller's transaction instead of one of the store's own.

        Raises:
            InvalidArgumentError: An argument broke its rule.
        """
        params: dict[str, Any] = {"limit": check_limit("limit", limit)}
        if run_id is not None:
            params["run"] = check_run_id(run_id)
        if signal_name is not None:
            params["signal"] = check_name("signal_name", signal_name)
        waiter_state = check_state(state)
        cursor = check_after(after)
        if cursor is not None:
            params.update(
                after_created=cursor.created_at,
                after_run=cursor.run_id,
                after_step=cursor.step_key,
            )
        statement = sql.list_waiters(
            self._schema,
            by_run=run_id is not None,
            by_signal=signal_name is not None,
            state=waiter_state,
            after=cursor is not None,
        )
        rows, _ = self._executor.execute(conn, statement, params)
        return [sql.waiter_from_row(row) for row in rows]

    def count_waiters(
        self,
        *,
        run_id: uuid.UUID | str | None = None,
        signal_name: str | None = None,
        conn: CallerConnection | None = None,
    ) -> WaiterCounts:
        """Count waiters by :class:`WaiterState`, in one statement.

        Args:
            run_id: Only this run's waiters.
            signal_name: Only waiters of this signal (of every run, unless ``run_id`` is given).
            conn: Run inside this caller's transaction instead of one of the store's own.

        Raises:
            InvalidArgumentError: An argument broke its rule.
        """
        params: dict[str, Any] = {}
        if run_id is not None:
            params["run"] = check_run_id(run_id)
        if signal_name is not None:
            params["signal"] = check_name("signal_name", signal_name)
        if run_id is not None and signal_name is not None:
            statement = self._sql.count_run_signal
        elif run_id is not None:
            statement = self._sql.count_run
        elif signal_name is not None:
            statement = self._sql.count_signal
        else:
            statement = self._sql.count
        rows, _ = self._executor.execute(conn, statement, params)
        pending, delivered, expired, claimed = rows[0]
        return WaiterCounts(pending, delivered, expired, claimed)

    def close(self) -> None:
        """Stop the listener and close what the store built: its pool and engine.

        An Engine passed in is left alone (its pool is the caller's). Every later call, and
        every wait still running, raises :class:`StoreClosedError`.
        """
        with self._listener_lock:
            if self._closed:
                return
            self._closed = True
            self._executor.closed = True
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
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

    def _get_listener(self) -> Listener:
        with self._listener_lock:
            if self._listener is None:
                listener = Listener(self._listener_connection, self._channel)
                if self._closed:
                    # Never started, never stopped: its waits poll every recheck_interval.
                    listener.stop()
                    return listener
                self._listener = listener
            return self._listener

    def _listener_connection(self) -> psycopg.Connection[Any]:
        """A new autocommit connection outside the pools, made as the store's others are.

        From a URL: the pool's settings (``connect_args`` included). On a caller's Engine: one
        of its connections, detached from its pool, so its ``creator`` and connect arguments
        apply too.
        """
        name = self._listener_application_name
        if self._pool is not None:
            return self._pool.connect(application_name=name)
        pooled = self._engine.raw_connection()
        conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        pooled.detach()
        conn.rollback()
        conn.autocommit = True
        conn.execute("SELECT set_config('application_name', %s, false)", [name])
        return conn

    @property
    def listener(self) -> Listener | None:
        """The store's listener, once a wait has started it (for monitoring and tests)."""
        return self._listener
