"""``claim_expired`` and ``purge`` in rows per second, against the same work written by hand.

Each contender gets its own copy of the table (a schema of its own), loaded by the same COPY
with the same expired, undelivered waiters row for row, with autovacuum off on every copy so
that no vacuum lands on one contender's batches and not on the other's. The contenders then work
through their copy in interleaved batches of the same size (A B A B ..., the order rotated every
round), so both see the same machine load. Claiming stamps every row; purging then deletes the
claimed tombstones. Between the two phases both copies are vacuumed (untimed), as autovacuum
would have done after a million updates: otherwise every purge batch's scan would first walk
over the million dead row versions the claims left, and purge would be timed doing that.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from flowsignals import PostgresSignalStore

#: Columns a claim returns: what a caller needs to fail the step (as the store returns).
_CLAIMED = "run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload_json"

#: The floor's claim: the same rows in the same order (earliest deadline first), the same
#: SKIP LOCKED queue semantics and the same columns back; no notifications (nothing waits).
CLAIM_FLOOR = (
    "UPDATE {table} SET claimed_at = now()"
    " WHERE (run_id, step_key) IN ("
    " SELECT run_id, step_key FROM {table}"
    " WHERE expires_at <= now() AND delivered_at IS NULL AND claimed_at IS NULL"
    " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)"
    f" RETURNING {_CLAIMED}, claimed_at"
)
#: The floor's purge batch: finished (delivered or claimed) before now() - age, SKIP LOCKED.
PURGE_FLOOR = (
    "DELETE FROM {table} WHERE (run_id, step_key) IN ("
    " SELECT run_id, step_key FROM {table}"
    " WHERE delivered_at < now() - %s OR claimed_at < now() - %s"
    " LIMIT %s FOR UPDATE SKIP LOCKED)"
)

CONTENDERS = ("floor", "flowsignals")


@dataclass
class Rate:
    """Rows handled, seconds spent and per-batch times, per contender."""

    batch: int
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONTENDERS, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CONTENDERS, 0.0))
    #: Wall time of every full batch (a last, partial or empty batch is left out).
    batches: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in CONTENDERS}
    )

    def per_second(self, name: str) -> float:
        """Rows per second over the whole table: all rows over all the time spent."""
        return self.rows[name] / self.seconds[name] if self.seconds[name] else 0.0

    def median_batch(self, name: str) -> float:
        return statistics.median(self.batches[name])


def _interleave(steps: dict[str, Callable[[], int]], rate: Rate) -> None:
    """Call each contender's batch in turn, rotating the order, until each one returns 0."""
    names = list(steps)
    done: set[str] = set()
    number = 0
    while len(done) < len(names):
        shift = number % len(names)
        number += 1
        for name in names[shift:] + names[:shift]:
            if name in done:
                continue
            start = time.perf_counter()
            count = steps[name]()
            seconds = time.perf_counter() - start
            rate.seconds[name] += seconds
            rate.rows[name] += count
            if count == rate.batch:
                rate.batches[name].append(seconds)
            if count == 0:
                done.add(name)


def claim_and_purge(
    conninfo: str,
    floor_schema: str,
    store: PostgresSignalStore,
    *,
    batch: int,
) -> tuple[Rate, Rate]:
    """Claim every expired waiter, then purge the claimed ones; return (claim, purge) rates.

    The floor runs on raw psycopg (autocommit, prepared) against ``floor_schema``'s table; the
    store through its public API against its own schema's table. Both use ``batch`` rows per
    statement: ``claim_expired(limit=batch)`` and ``purge(limit=batch)`` (one statement each).
    """
    table = sql.Identifier(floor_schema, "flow_signal_waiters").as_string(None)
    claim_sql = CLAIM_FLOOR.format(table=table)
    purge_sql = PURGE_FLOOR.format(table=table)
    zero = timedelta(0)
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def floor_claim() -> int:
            rows: list[tuple[Any, ...]] = conn.execute(claim_sql, (batch,), prepare=True).fetchall()
            return len(rows)

        def store_claim() -> int:
            return len(store.claim_expired(limit=batch))

        claim = Rate(batch)
        _interleave({"floor": floor_claim, "flowsignals": store_claim}, claim)

        def floor_purge() -> int:
            return conn.execute(purge_sql, (zero, zero, batch), prepare=True).rowcount

        def store_purge() -> int:
            return store.purge(older_than=zero, limit=batch, batch_size=batch)

        for schema in (floor_schema, store.schema):
            target = sql.Identifier(schema or "public", "flow_signal_waiters")
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(target))

        purge = Rate(batch)
        _interleave({"floor": floor_purge, "flowsignals": store_purge}, purge)
    return claim, purge
