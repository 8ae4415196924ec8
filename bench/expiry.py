"""``claim_expired`` and ``purge`` in rows per second, against the same work written by hand.

Two copies of the table (two schemas) are loaded with the same number of expired, undelivered
waiters; the hand-written floor works on one and the store on the other, in interleaved batches
of the same size, so both see the same machine load. Claiming marks the rows; purging then
deletes the claimed tombstones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from flowsignals import PostgresSignalStore

#: The column issue 4's revision adds for a claim; the floor's SQL writes it by hand.
CLAIMED_COLUMN = "claimed_at"

CLAIM_FLOOR = (
    "UPDATE {table} SET {claimed} = now() WHERE ctid = ANY(ARRAY("
    " SELECT ctid FROM {table}"
    " WHERE expires_at <= now() AND delivered_at IS NULL AND {claimed} IS NULL"
    " LIMIT %s FOR UPDATE SKIP LOCKED))"
    " RETURNING run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload_json"
)
PURGE_FLOOR = (
    "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
    " SELECT ctid FROM {table}"
    " WHERE ({claimed} IS NOT NULL AND {claimed} < now() - %s)"
    " OR (delivered_at IS NOT NULL AND delivered_at < now() - %s)"
    " LIMIT %s))"
)


def available() -> bool:
    """Whether this build of flowsignals has ``claim_expired`` and ``purge`` (issue 4)."""
    return hasattr(PostgresSignalStore, "claim_expired") and hasattr(PostgresSignalStore, "purge")


@dataclass
class Rate:
    """Rows handled and the seconds spent, per contender."""

    rows: dict[str, int] = field(default_factory=lambda: {"floor": 0, "flowsignals": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"floor": 0.0, "flowsignals": 0.0})

    def per_second(self, name: str) -> float:
        return self.rows[name] / self.seconds[name] if self.seconds[name] else 0.0


def _interleave(floor: Callable[[], int], store: Callable[[], int], rate: Rate) -> None:
    done = {"floor": False, "flowsignals": False}
    steps = {"floor": floor, "flowsignals": store}
    while not all(done.values()):
        for name, step in steps.items():
            if done[name]:
                continue
            start = time.perf_counter()
            count = step()
            rate.seconds[name] += time.perf_counter() - start
            rate.rows[name] += count
            done[name] = count == 0


def claim_and_purge(
    conninfo: str,
    floor_table: str,
    store: PostgresSignalStore,
    *,
    batch: int,
) -> tuple[Rate, Rate]:
    """Claim every expired waiter, then purge the claimed ones; return (claim, purge) rates."""
    store_any: Any = store  # claim_expired and purge arrive with issue 4
    claim_sql = CLAIM_FLOOR.format(table=floor_table, claimed=CLAIMED_COLUMN)
    purge_sql = PURGE_FLOOR.format(table=floor_table, claimed=CLAIMED_COLUMN)
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def floor_claim() -> int:
            return len(conn.execute(claim_sql, (batch,), prepare=True).fetchall())

        def store_claim() -> int:
            return len(store_any.claim_expired(limit=batch))

        claim = Rate()
        _interleave(floor_claim, store_claim, claim)

        def floor_purge() -> int:
            zero = timedelta(0)
            return conn.execute(purge_sql, (zero, zero, batch), prepare=True).rowcount

        def store_purge() -> int:
            return int(store_any.purge(older_than=timedelta(0), limit=batch))

        purge = Rate()
        _interleave(floor_purge, store_purge, purge)
    return claim, purge
