"""Values returned by the stores: immutable, with timezone-aware datetimes."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from flowsignals.errors import InvalidArgumentError


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
        claimed_at: When :meth:`SignalStore.claim_expired` claimed the waiter after its
            deadline passed, or ``None``. A waiter is never both delivered and claimed.
        idempotency_key: The key the delivery that filled this waiter was sent with, or
            ``None`` (undelivered, or delivered without one).
    """

    run_id: uuid.UUID
    step_key: str
    signal_name: str
    created_at: datetime
    expires_at: datetime | None
    delivered_at: datetime | None
    payload_json: str | None
    claimed_at: datetime | None = None
    idempotency_key: str | None = None

    @property
    def is_delivered(self) -> bool:
        """True once a payload has been recorded."""
        return self.delivered_at is not None

    @property
    def is_claimed(self) -> bool:
        """True once the waiter has been claimed as expired (a tombstone: it stays so)."""
        return self.claimed_at is not None

    def state_at(self, now: datetime) -> WaiterState:
        """The waiter's :class:`WaiterState` at ``now`` (a timezone-aware datetime).

        A deadline at or before ``now`` has passed. The stores judge by their own clock (the
        database server's for PostgreSQL), which may differ from the caller's.
        """
        if self.delivered_at is not None:
            return WaiterState.DELIVERED
        if self.claimed_at is not None:
            return WaiterState.CLAIMED
        if self.expires_at is not None and self.expires_at <= now:
            return WaiterState.EXPIRED
        return WaiterState.PENDING

    @property
    def cursor(self) -> WaiterCursor:
        """Where a :meth:`SignalStore.list_waiters` page ending with this waiter stops."""
        return WaiterCursor(self.created_at, self.run_id, self.step_key)


class WaiterState(enum.Enum):
    """The state of a waiter, as :meth:`SignalStore.list_waiters` filters and counts them.

    Every waiter is in exactly one state. Expiry is judged by the store's clock (the database
    server's for :class:`~flowsignals.PostgresSignalStore`).
    """

    #: Neither delivered nor claimed, and its deadline (if any) has not passed.
    PENDING = "pending"
    #: A payload was delivered to it.
    DELIVERED = "delivered"
    #: Its deadline passed undelivered, and it has not been claimed yet.
    EXPIRED = "expired"
    #: Claimed by :meth:`SignalStore.claim_expired` after its deadline passed.
    CLAIMED = "claimed"


@dataclass(frozen=True, slots=True, order=True)
class WaiterCursor:
    """A position in the stable order of :meth:`SignalStore.list_waiters`.

    Waiters are listed by (``created_at``, ``run_id``, ``step_key``); a page starts strictly
    after its cursor. Take it from the last waiter of a page (:attr:`SignalWaiter.cursor`), or
    carry it between processes as text with :meth:`token` and :meth:`from_token`.
    """

    created_at: datetime
    run_id: uuid.UUID
    step_key: str

    def token(self) -> str:
        """Return the cursor as one opaque line of text."""
        return f"{self.created_at.isoformat()}/{self.run_id}/{self.step_key}"

    @classmethod
    def from_token(cls, token: str) -> WaiterCursor:
        """Parse a :meth:`token`.

        Raises:
            InvalidArgumentError: ``token`` is not one (also a ``ValueError``).
        """
        try:
            created, run, step = token.split("/", 2)
            created_at = datetime.fromisoformat(created)
            run_id = uuid.UUID(run)
        except (AttributeError, ValueError):
            created_at = None
        if created_at is None or created_at.tzinfo is None or not step:
            raise InvalidArgumentError(
                "token", f"is not a waiter cursor token (from WaiterCursor.token()): {token!r}"
            )
        return cls(created_at, run_id, step)


@dataclass(frozen=True, slots=True)
class WaiterCounts:
    """How many waiters are in each :class:`WaiterState`."""

    pending: int = 0
    delivered: int = 0
    expired: int = 0
    claimed: int = 0

    @property
    def total(self) -> int:
        """All waiters counted."""
        return self.pending + self.delivered + self.expired + self.claimed

    def __getitem__(self, state: WaiterState | str) -> int:
        """The count of one state, by :class:`WaiterState` or its string value."""
        value: int = getattr(self, WaiterState(state).value)
        return value
