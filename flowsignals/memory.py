"""InMemorySignalStore: the same contract as PostgresSignalStore, in process memory.

For users' own unit tests, and the model the PostgreSQL store is tested against: it must keep
exactly the documented semantics, with the same validation.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import TracebackType

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from flowsignals.errors import InvalidArgumentError
from flowsignals.results import DeliveryResult, DeliveryStatus, SignalWaiter
from flowsignals.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_expires_at,
    check_max_payload_bytes,
    check_name,
    check_payload,
    check_run_id,
)

_TICK = timedelta(microseconds=1)


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
        self._clock = clock
        self._lock = threading.Lock()
        self._waiters: dict[tuple[uuid.UUID, str], SignalWaiter] = {}
        self._last_created: datetime | None = None

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
        _check_conn(conn)
        with self._lock:
            current = self._waiters.get((run, step))
            if current is not None:
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
        conn: Connection | Session | None = None,
    ) -> DeliveryResult:
        """Deliver a payload; see :meth:`PostgresSignalStore.deliver_signal`."""
        run = check_run_id(run_id)
        signal = check_name("signal_name", signal_name)
        payload = check_payload(payload_json, self._max_payload_bytes)
        _check_conn(conn)
        with self._lock:
            now = self._now()
            matching = sorted(
                (w for w in self._waiters.values() if w.run_id == run and w.signal_name == signal),
                key=lambda w: (w.created_at, w.step_key),
            )
            for waiter in matching:
                if waiter.delivered_at is None and (
                    waiter.expires_at is None or waiter.expires_at > now
                ):
                    self._waiters[run, waiter.step_key] = replace(
                        waiter, delivered_at=now, payload_json=payload
                    )
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
        _check_conn(conn)
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
        _check_conn(conn)
        with self._lock:
            return self._waiters.pop(key, None) is not None

    def close(self) -> None:
        """Nothing to release; present so both stores are used alike."""

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
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
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


def _micros(value: datetime | None) -> int:
    assert value is not None
    return (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _TICK


def _check_conn(conn: object) -> None:
    if conn is not None and not isinstance(conn, (Connection, Session)):
        raise InvalidArgumentError(
            "conn",
            f"must be a sqlalchemy Connection or Session, or None, not {type(conn).__name__}",
        )
