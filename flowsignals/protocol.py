"""SignalStore: the contract PostgresSignalStore and InMemorySignalStore both keep."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from flowsignals.results import DeliveryResult, SignalWaiter


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
        conn: Connection | Session | None = None,
    ) -> DeliveryResult:
        """Hand a JSON payload to the oldest pending waiter of the signal."""
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

    def close(self) -> None:
        """Release the store's resources."""
        ...
