"""SignalStore: the contract PostgresSignalStore and InMemorySignalStore both keep."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from flowsignals.results import (
    DeliveryResult,
    SignalWaiter,
    WaiterCounts,
    WaiterCursor,
    WaiterState,
)


@runtime_checkable
class SignalStore(Protocol):
    """What a workflow engine needs of a signal store.

    Type against this to swap :class:`~flowsignals.PostgresSignalStore` for
    :class:`~flowsignals.InMemorySignalStore` in unit tests.
    """

    def register_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        signal_name: str,
        expires_at: datetime | None = None,
        *,
        conn: Connection | Session | None = None,
    ) -> None:
        """Park a step until its signal is delivered (idempotent on run_id, step_key)."""
        ...

    def deliver_signal(
        self,
        run_id: uuid.UUID | str,
        signal_name: str,
        payload_json: str,
        *,
        idempotency_key: str | None = None,
        conn: Connection | Session | None = None,
    ) -> DeliveryResult:
        """Hand a JSON payload to the oldest pending waiter of the signal, once per key."""
        ...

    def get_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: Connection | Session | None = None,
    ) -> SignalWaiter | None:
        """Return the waiter of (run_id, step_key), or None."""
        ...

    def remove_waiter(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        conn: Connection | Session | None = None,
    ) -> bool:
        """Remove the waiter of (run_id, step_key); True if one was removed."""
        ...

    def wait_for_signal(
        self,
        run_id: uuid.UUID | str,
        step_key: str,
        *,
        timeout: float | timedelta,
        conn: Connection | Session | None = None,
    ) -> SignalWaiter:
        """Block until the waiter is delivered and return it, payload included.

        PostgresSignalStore is woken by LISTEN/NOTIFY (or polls, with ``listen=False``);
        InMemorySignalStore by a condition variable. ``conn`` must be None.

        Raises:
            WaitTimeoutError: The timeout passed first.
            WaiterNotFoundError: No such waiter, or it was removed while waiting.
            WaiterExpiredError: Its deadline passed undelivered, or it was claimed.
        """
        ...

    def claim_expired(
        self, *, limit: int = 100, conn: Connection | Session | None = None
    ) -> list[SignalWaiter]:
        """Claim, exactly once, waiters whose deadline passed undelivered."""
        ...

    def purge(
        self,
        *,
        older_than: timedelta,
        limit: int | None = None,
        batch_size: int = 1000,
        conn: Connection | Session | None = None,
    ) -> int:
        """Delete delivered and claimed waiters finished more than ``older_than`` ago."""
        ...

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
        """List waiters by (created_at, run_id, step_key), one keyset page at a time."""
        ...

    def count_waiters(
        self,
        *,
        run_id: uuid.UUID | str | None = None,
        signal_name: str | None = None,
        conn: Connection | Session | None = None,
    ) -> WaiterCounts:
        """Count waiters by state."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...
