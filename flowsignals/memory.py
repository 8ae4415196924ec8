"""InMemorySignalStore: the same contract as PostgresSignalStore, in process memory.

For users' own unit tests, and the model the PostgreSQL store is tested against: it must keep
exactly the documented semantics, with the same validation.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import TracebackType

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from flowsignals.errors import (
    InvalidArgumentError,
    StoreClosedError,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
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
    check_after,
    check_expires_at,
    check_idempotency_key,
    check_limit,
    check_max_payload_bytes,
    check_name,
    check_older_than,
    check_payload,
    check_run_id,
    check_state,
    check_timeout,
    check_wait_conn,
    is_aware,
)

_TICK = timedelta(microseconds=1)

#: Longest a wait sleeps between looks at the clock: a test's clock can jump a deadline past
#: without telling anyone, so waits notice within this many seconds.
_CLOCK_CHECK = 0.05


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class InMemorySignalStore:
    """A thread-safe, in-memory signal store with the semantics of :class:`PostgresSignalStore`.

    There are no transactions: every call takes effect at once. The ``conn`` keyword is
    accepted (and type-checked) so code written against the PostgreSQL store runs unchanged,
    but it is otherwise ignored.

    Args:
        max_payload_bytes: Largest accepted payload, in UTF-8 bytes.
        clock: Returns the current time (timezone-aware); plays the database server's clock, so
            tests can move time to make deadlines pass.
    """

    def __init__(
        self,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._max_payload_bytes = check_max_payload_bytes(max_payload_bytes)
        if not callable(clock):
            raise InvalidArgumentError(
                "clock", f"must be a callable returning datetimes, not {type(clock).__name__}"
            )
        self._clock = clock
        self._lock = threading.Lock()
        # Every change notifies it, waking wait_for_signal.
        self._changed = threading.Condition(self._lock)
        self._waiters: dict[tuple[uuid.UUID, str], SignalWaiter] = {}
        # The signal each delivered waiter was delivered for (its signal_name may change when
        # it is registered again); a key is matched against this, as the PostgreSQL store does.
        self._delivered_for: dict[tuple[uuid.UUID, str], str] = {}
        self._last_created: datetime | None = None
        self._closed = False

    def register_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        signal_name: str,
        expires_at: datetime | None = None,
        *,
        conn: Connection | Session | None = None,
    ) -> None:
        """Park a step; see :meth:`PostgresSignalStore.register_waiter`."""
        run = check_run_id(run_id)
        step = check_name("step_key", step_key)
        signal = check_name("signal_name", signal_name)
        deadline = check_expires_at(expires_at)
        self._ready(conn)
        with self._lock:
            self._changed.notify_all()
            current = self._waiters.get((run, step))
            if current is not None:
                # Never clears a delivery or a claim: both are tombstones.
                self._waiters[run, step] = replace(current, signal_name=signal, expires_at=deadline)
                return
            self._waiters[run, step] = SignalWaiter(
                run_id=run,
                step_key=step,
                signal_name=signal,
                created_at=self._next_created_at(),
                expires_at=deadline,
                delivered_at=None,
                payload_json=None,
            )

    def deliver_signal(
        self,
        run_id: uuid.UUID | str,
        signal_name: str,
        payload_json: str,
        *,
        idempotency_key: str | None = None,
        conn: Connection | Session | None = None,
    ) -> DeliveryResult:
        """Deliver a payload; see :meth:`PostgresSignalStore.deliver_signal`."""
        run = check_run_id(run_id)
        signal = check_name("signal_name", signal_name)
        payload = check_payload(payload_json, self._max_payload_bytes)
        key = check_idempotency_key(idempotency_key)
        self._ready(conn)
        with self._lock:
            now = self._now()
            matching = sorted(
                (w for w in self._waiters.values() if w.run_id == run and w.signal_name == signal),
                key=lambda w: (w.created_at, w.step_key),
            )
            if key is not None:
                repeated = sorted(
                    (
                        w
                        for w in self._waiters.values()
                        if w.run_id == run
                        and w.idempotency_key == key
                        and self._delivered_for.get((run, w.step_key)) == signal
                    ),
                    key=lambda w: (w.created_at, w.step_key),
                )
                if repeated:
                    first = repeated[0]
                    return DeliveryResult(
                        DeliveryStatus.DELIVERED, first.step_key, first.delivered_at
                    )
            for waiter in matching:
                if waiter.state_at(now) is WaiterState.PENDING:
                    self._waiters[run, waiter.step_key] = replace(
                        waiter, delivered_at=now, payload_json=payload, idempotency_key=key
                    )
                    self._delivered_for[run, waiter.step_key] = signal
                    self._changed.notify_all()
                    return DeliveryResult(DeliveryStatus.DELIVERED, waiter.step_key, now)
            delivered = [w for w in matching if w.delivered_at is not None]
            if delivered:
                # The latest delivery; equal times fall back to the smaller step key.
                latest = min(delivered, key=lambda w: (-_micros(w.delivered_at), w.step_key))
                return DeliveryResult(
                    DeliveryStatus.ALREADY_DELIVERED, latest.step_key, latest.delivered_at
                )
            if matching:
                return DeliveryResult(DeliveryStatus.EXPIRED, matching[0].step_key, None)
            return DeliveryResult(DeliveryStatus.NOT_FOUND)

    def get_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: Connection | Session | None = None,
    ) -> SignalWaiter | None:
        """Return a waiter or None; see :meth:`PostgresSignalStore.get_waiter`."""
        key = (check_run_id(run_id), check_name("step_key", step_key))
        self._ready(conn)
        with self._lock:
            return self._waiters.get(key)

    def remove_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: Connection | Session | None = None,
    ) -> bool:
        """Remove a waiter; see :meth:`PostgresSignalStore.remove_waiter`."""
        key = (check_run_id(run_id), check_name("step_key", step_key))
        self._ready(conn)
        with self._lock:
            self._changed.notify_all()
            self._delivered_for.pop(key, None)
            return self._waiters.pop(key, None) is not None

    def wait_for_signal(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        timeout: float | timedelta,
        conn: Connection | Session | None = None,
    ) -> SignalWaiter:
        """Block until delivered; see :meth:`PostgresSignalStore.wait_for_signal`.

        Woken through a :class:`threading.Condition` by every change. Deadlines are judged by
        the store's ``clock``; the timeout by real (monotonic) time.
        """
        run = check_run_id(run_id)
        step = check_name("step_key", step_key)
        seconds = check_timeout("timeout", timeout)
        check_wait_conn(conn)
        self._ready(None)
        deadline = time.monotonic() + seconds
        with self._lock:
            while True:
                self._ready(None)
                waiter = self._waiters.get((run, step))
                if waiter is None:
                    raise WaiterNotFoundError(run, step)
                state = waiter.state_at(self._now())
                if state is WaiterState.DELIVERED:
                    return waiter
                if state is not WaiterState.PENDING:
                    raise WaiterExpiredError(waiter)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(run, step, seconds)
                self._changed.wait(min(remaining, _CLOCK_CHECK))

    def claim_expired(
        self, *, limit: int = 100, conn: Connection | Session | None = None
    ) -> list[SignalWaiter]:
        """Claim expired waiters; see :meth:`PostgresSignalStore.claim_expired`."""
        count = check_limit("limit", limit)
        self._ready(conn)
        with self._lock:
            now = self._now()
            due = sorted(
                (w for w in self._waiters.values() if w.state_at(now) is WaiterState.EXPIRED),
                key=lambda w: (w.expires_at, w.run_id, w.step_key),
            )[:count]
            claimed = [replace(w, claimed_at=now) for w in due]
            for waiter in claimed:
                self._waiters[waiter.run_id, waiter.step_key] = waiter
            if claimed:
                self._changed.notify_all()
            return claimed

    def purge(
        self,
        *,
        older_than: timedelta,
        limit: int | None = None,
        batch_size: int = 1000,
        conn: Connection | Session | None = None,
    ) -> int:
        """Delete long-finished waiters; see :meth:`PostgresSignalStore.purge`."""
        age = check_older_than(older_than)
        most = None if limit is None else check_limit("limit", limit, maximum=None)
        check_limit("batch_size", batch_size)
        self._ready(conn)
        with self._lock:
            cutoff = self._now() - age
            doomed = [
                key
                for key, w in self._waiters.items()
                if (w.delivered_at is not None and w.delivered_at < cutoff)
                or (w.claimed_at is not None and w.claimed_at < cutoff)
            ][:most]
            for key in doomed:
                del self._waiters[key]
                self._delivered_for.pop(key, None)
            if doomed:
                self._changed.notify_all()
            return len(doomed)

    def list_waiters(
        self,
        *,
        run_id: uuid.UUID | str | None = None,
        signal_name: str | None = None,
        state: WaiterState | str | None = None,
        limit: int = 100,
        after: SignalWaiter | WaiterCursor | None = None,
        conn: Connection | Session | None = None,
    ) -> list[SignalWaiter]:
        """List waiters a page at a time; see :meth:`PostgresSignalStore.list_waiters`."""
        count = check_limit("limit", limit)
        run = None if run_id is None else check_run_id(run_id)
        signal = None if signal_name is None else check_name("signal_name", signal_name)
        wanted = check_state(state)
        cursor = check_after(after)
        self._ready(conn)
        with self._lock:
            now = self._now()
            chosen = [
                w
                for w in self._waiters.values()
                if (run is None or w.run_id == run)
                and (signal is None or w.signal_name == signal)
                and (wanted is None or w.state_at(now) is wanted)
                and (cursor is None or _position(w) > _position(cursor))
            ]
        return sorted(chosen, key=_position)[:count]

    def count_waiters(
        self,
        *,
        run_id: uuid.UUID | str | None = None,
        signal_name: str | None = None,
        conn: Connection | Session | None = None,
    ) -> WaiterCounts:
        """Count waiters by state; see :meth:`PostgresSignalStore.count_waiters`."""
        run = None if run_id is None else check_run_id(run_id)
        signal = None if signal_name is None else check_name("signal_name", signal_name)
        self._ready(conn)
        counts = dict.fromkeys(WaiterState, 0)
        with self._lock:
            now = self._now()
            for w in self._waiters.values():
                if (run is None or w.run_id == run) and (signal is None or w.signal_name == signal):
                    counts[w.state_at(now)] += 1
        return WaiterCounts(**{state.value: n for state, n in counts.items()})

    def close(self) -> None:
        """Close the store: every later call, and every wait still running, raises
        :class:`StoreClosedError`, as on :class:`PostgresSignalStore`."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()

    def _ready(self, conn: object) -> None:
        if conn is not None and not isinstance(conn, (Connection, Session)):
            raise InvalidArgumentError(
                "conn",
                f"must be a sqlalchemy Connection or Session, or None, not {type(conn).__name__}",
            )
        if self._closed:
            raise StoreClosedError("the store is closed; create a new one to go on")

    def __enter__(self) -> InMemorySignalStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _now(self) -> datetime:
        now: object = self._clock()
        if not isinstance(now, datetime) or not is_aware("clock", now):
            raise InvalidArgumentError("clock", "must return timezone-aware datetimes")
        return now.astimezone(timezone.utc)

    def _next_created_at(self) -> datetime:
        # Strictly increasing, as PostgreSQL's now() is across separate transactions, so that
        # "oldest first" never depends on the step-key tiebreak by accident of clock resolution.
        now = self._now()
        if self._last_created is not None and now <= self._last_created:
            now = self._last_created + _TICK
        self._last_created = now
        return now


def _position(item: SignalWaiter | WaiterCursor) -> tuple[datetime, uuid.UUID, str]:
    return (item.created_at, item.run_id, item.step_key)


def _micros(value: datetime | None) -> int:
    assert value is not None
    return (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _TICK
