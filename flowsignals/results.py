"""Values returned by the stores: immutable, with timezone-aware datetimes."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime


class DeliveryStatus(enum.Enum):
    """What :meth:`SignalStore.deliver_signal` did."""

    #: The payload was recorded on the oldest pending waiter of that signal.
    DELIVERED = "delivered"
    #: No waiter took the signal: none exists for this run and signal name.
    NOT_FOUND = "not_found"
    #: No pending waiter is left, and at least one of them already holds a delivery.
    ALREADY_DELIVERED = "already_delivered"
    #: Matching waiters exist, but none holds a delivery and every deadline has passed.
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of one delivery.

    Attributes:
        status: What happened.
        step_key: ``DELIVERED``: the step that received the payload. ``ALREADY_DELIVERED``: the
            step that holds the earlier delivery. ``EXPIRED``: the expired step. Else ``None``.
        delivered_at: ``DELIVERED``: this delivery's time. ``ALREADY_DELIVERED``: the earlier
            delivery's time. Else ``None``. Always timezone-aware (UTC), by the server's clock.
    """

    status: DeliveryStatus
    step_key: str | None = None
    delivered_at: datetime | None = None

    @property
    def delivered(self) -> bool:
        """True when this call delivered the payload."""
        return self.status is DeliveryStatus.DELIVERED


@dataclass(frozen=True, slots=True)
class SignalWaiter:
    """A parked step, as stored.

    Attributes:
        run_id: The workflow run.
        step_key: The step, unique within the run.
        signal_name: The signal the step waits for.
        created_at: When the step was first registered (never reset by re-registration).
        expires_at: The deadline, or ``None`` for none.
        delivered_at: When a payload was delivered, or ``None``.
        payload_json: The delivered JSON text, exactly as sent, or ``None``.
    """

    run_id: uuid.UUID
    step_key: str
    signal_name: str
    created_at: datetime
    expires_at: datetime | None
    delivered_at: datetime | None
    payload_json: str | None

    @property
    def is_delivered(self) -> bool:
        """True once a payload has been recorded."""
        return self.delivered_at is not None
