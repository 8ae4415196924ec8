"""The original (.NET) design's access pattern, reproduced on psycopg for comparison.

* Every call opens a new connection and closes it afterwards (no pool), as the original did.
* Delivery is an UPDATE of the oldest pending waiter picked with ``FOR UPDATE SKIP LOCKED``;
  when it updates nothing, a second SELECT decides what to report. Under contention the skipped
  row is one a racing delivery is still writing, so the SELECT can see it as neither delivered
  nor expired and the caller is told NOT_FOUND although a waiter exists: the contention section
  counts how often that happens.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from bench.floor import GET, REGISTER, REMOVE
from flowsignals import DeliveryStatus

DELIVER = (
    "UPDATE flow_signal_waiters SET delivered_at = now(), payload_json = %s"
    " WHERE run_id = %s AND step_key = ("
    "   SELECT step_key FROM flow_signal_waiters"
    "   WHERE run_id = %s AND signal_name = %s AND delivered_at IS NULL"
    "   AND (expires_at IS NULL OR expires_at > now())"
    "   ORDER BY created_at, step_key LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " RETURNING step_key, delivered_at"
)
CLASSIFY = (
    "SELECT delivered_at IS NOT NULL, expires_at IS NOT NULL AND expires_at <= now()"
    " FROM flow_signal_waiters WHERE run_id = %s AND signal_name = %s"
)


class OriginalClient:
    """One connection per call; delivery in up to two statements."""

    name = "original"

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._conninfo, autocommit=True)

    def register(
        self, run_id: uuid.UUID, step_key: str, signal_name: str, expires_at: datetime | None
    ) -> None:
        with self._connect() as conn:
            conn.execute(REGISTER, (run_id, step_key, signal_name, expires_at))

    def deliver(self, run_id: uuid.UUID, signal_name: str, payload_json: str) -> bool:
        return self.deliver_status(run_id, signal_name, payload_json) is DeliveryStatus.DELIVERED

    def deliver_status(
        self, run_id: uuid.UUID, signal_name: str, payload_json: str
    ) -> DeliveryStatus:
        """Deliver and classify the outcome the way the original design did."""
        with self._connect() as conn:
            row = conn.execute(DELIVER, (payload_json, run_id, run_id, signal_name)).fetchone()
            if row is not None:
                return DeliveryStatus.DELIVERED
            seen = conn.execute(CLASSIFY, (run_id, signal_name)).fetchall()
        if any(delivered for delivered, _ in seen):
            return DeliveryStatus.ALREADY_DELIVERED
        if any(expired for _, expired in seen):
            return DeliveryStatus.EXPIRED
        return DeliveryStatus.NOT_FOUND

    def get(self, run_id: uuid.UUID, step_key: str) -> tuple[Any, ...] | None:
        with self._connect() as conn:
            return conn.execute(GET, (run_id, step_key)).fetchone()

    def remove(self, run_id: uuid.UUID, step_key: str) -> bool:
        with self._connect() as conn:
            return conn.execute(REMOVE, (run_id, step_key)).rowcount == 1

    def close(self) -> None:
        """Nothing to close: no connection outlives a call."""
