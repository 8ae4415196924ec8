"""Bounded soak: every operation at once on overlapping runs; then the invariants hold.

Runs by default for ``FLOWSIGNALS_SOAK_SECONDS`` (30 s). Eight worker threads mix register,
deliver, get, remove, claim_expired, list_waiters and count_waiters on 6 runs x 6 steps, with
deadlines none, an hour away, an hour ago, or a fraction of a second away (so deliveries race
claims at the deadline); three more threads run short ``wait_for_signal`` calls on the same
steps; a purger on its own store (its own ``application_name``) purges finished waiters.

A test-only trigger audits, in the database itself, every delivery, claim and deletion, with
the ``application_name`` that made it, so the invariants are checked against what really
happened, not against what the threads believe:

* no delivery or claim is ever overwritten, and no row is ever both delivered and claimed (a
  claimed waiter is never delivered and vice versa);
* every recorded delivery is exactly one DELIVERED result (same step, time, payload and
  signal), and every recorded claim exactly one waiter returned by ``claim_expired``: no
  waiter is delivered twice or claimed twice;
* every wait that returned holds the payload and time of that waiter's one recorded delivery;
  every WaiterExpiredError carries an undelivered waiter whose claim (if any) was recorded;
* the purger deleted only delivered or claimed waiters, finished before its statement began;
* counts add up: DELIVERED results == delivered rows now + delivered rows deleted since, the
  same for claims, removals + purged == rows deleted, and ``count_waiters`` equals the table;
* every ALREADY_DELIVERED names a real delivery; listings never repeat a waiter across pages
  and never show a waiter both delivered and claimed; no call failed.

Operation counts are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    PostgresSignalStore,
    SignalWaiter,
    WaiterCounts,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaiterState,
    WaitTimeoutError,
)

SOAK_SECONDS = float(os.environ.get("FLOWSIGNALS_SOAK_SECONDS", "30"))
THREADS = 8
WAIT_THREADS = 3
RUNS = [uuid.UUID(int=n) for n in range(1, 7)]
STEPS = [f"step-{n}" for n in range(6)]
SIGNALS = ["approved", "paid"]
PURGER = "soak-purger"

AUDIT = """
CREATE TABLE soak_audit (
    id bigserial PRIMARY KEY,
    event text NOT NULL,
    app text NOT NULL,
    statement_at timestamptz NOT NULL,
    run_id uuid NOT NULL,
    step_key text NOT NULL,
    signal_name text NOT NULL,
    delivered_at timestamptz,
    claimed_at timestamptz,
    payload_json text
);
CREATE FUNCTION soak_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row flow_signal_waiters;
    kind text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        kind := 'deleted';
    ELSE
        row := NEW;
        IF NEW.delivered_at IS NOT NULL AND NEW.claimed_at IS NOT NULL THEN
            kind := 'delivered and claimed';
        ELSIF OLD.delivered_at IS NULL AND NEW.delivered_at IS NOT NULL THEN
            kind := 'delivered';
        ELSIF OLD.claimed_at IS NULL AND NEW.claimed_at IS NOT NULL THEN
            kind := 'claimed';
        ELSIF OLD.delivered_at IS DISTINCT FROM NEW.delivered_at
              OR OLD.payload_json IS DISTINCT FROM NEW.payload_json
              OR OLD.claimed_at IS DISTINCT FROM NEW.claimed_at THEN
            kind := 'overwritten';
        ELSE
            RETURN NEW;  -- a re-registration: signal name and deadline only
        END IF;
    END IF;
    INSERT INTO soak_audit (event, app, statement_at, run_id, step_key, signal_name,
                            delivered_at, claimed_at, payload_json)
    -- statement_timestamp(), the clock the store's statements judge by: under the extended
    -- protocol now() (the transaction's start, at Bind) is a little earlier than it.
    VALUES (kind, current_setting('application_name'), statement_timestamp(), row.run_id,
            row.step_key,
            row.signal_name, row.delivered_at, row.claimed_at, row.payload_json);
    RETURN row;
END $$;
CREATE TRIGGER soak_audit AFTER UPDATE OR DELETE ON flow_signal_waiters
    FOR EACH ROW EXECUTE FUNCTION soak_audit();
"""


def _deadline(rng: random.Random) -> datetime | None:
    kind = rng.choice(["none", "none", "future", "past", "soon"])
    now = datetime.now(timezone.utc)
    if kind == "soon":
        # Passes while the others deliver and claim: the deadline race, many times over.
        return now + timedelta(seconds=rng.uniform(0, 0.3))
    return {"none": None, "future": now + timedelta(hours=1), "past": now - timedelta(hours=1)}[
        kind
    ]


@dataclass
class Record:
    """What the threads were told, merged after they stop."""

    ops: Counter[str] = field(default_factory=Counter)
    # payload -> (run, signal sent to, result); payloads are unique, so each is one delivery.
    deliveries: dict[str, tuple[uuid.UUID, str, DeliveryResult]] = field(default_factory=dict)
    claims: list[SignalWaiter] = field(default_factory=list)
    waits_returned: list[SignalWaiter] = field(default_factory=list)
    waits_expired: list[SignalWaiter] = field(default_factory=list)
    purged: int = 0
    removed: int = 0

    def merge(self, other: Record) -> None:
        self.ops.update(other.ops)
        self.deliveries.update(other.deliveries)
        self.claims += other.claims
        self.waits_returned += other.waits_returned
        self.waits_expired += other.waits_expired
        self.purged += other.purged
        self.removed += other.removed


def _list_pages(store: PostgresSignalStore, rng: random.Random, mine: Record) -> None:
    filters: dict[str, Any] = {}
    if rng.random() < 0.5:
        filters["run_id"] = rng.choice(RUNS)
    if rng.random() < 0.3:
        filters["signal_name"] = rng.choice(SIGNALS)
    state = rng.choice([None, *WaiterState])
    seen: list[tuple[datetime, uuid.UUID, str]] = []
    after: SignalWaiter | None = None
    for _ in range(50):
        page = store.list_waiters(state=state, limit=rng.choice([1, 3, 10]), after=after, **filters)
        mine.ops["list page"] += 1
        for waiter in page:
            assert waiter.delivered_at is None or waiter.claimed_at is None, waiter
            if state is WaiterState.DELIVERED:
                assert waiter.delivered_at is not None and waiter.payload_json is not None
            elif state is WaiterState.CLAIMED:
                assert waiter.claimed_at is not None and waiter.delivered_at is None
            elif state in (WaiterState.PENDING, WaiterState.EXPIRED):
                assert waiter.delivered_at is None and waiter.claimed_at is None
            seen.append((waiter.created_at, waiter.run_id, waiter.step_key))
        if not page:
            break
        after = page[-1]
    # Keyset pages never repeat a waiter and never go backwards, whatever changes meanwhile.
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def _worker(
    store: PostgresSignalStore, index: int, mine: Record, running: Callable[[], bool]
) -> None:
    rng = random.Random(index)
    n = 0
    while running():
        n += 1
        run, step, signal = rng.choice(RUNS), rng.choice(STEPS), rng.choice(SIGNALS)
        roll = rng.random()
        if roll < 0.30:
            store.register_waiter(run, step, signal, _deadline(rng))
            mine.ops["register"] += 1
        elif roll < 0.65:
            payload = f'{{"thread": {index}, "n": {n}}}'
            result = store.deliver_signal(run, signal, payload)
            mine.deliveries[payload] = (run, signal, result)
            mine.ops[f"deliver {result.status.name}"] += 1
        elif roll < 0.77:
            store.get_waiter(run, step)
            mine.ops["get"] += 1
        elif roll < 0.82:
            removed = store.remove_waiter(run, step)
            mine.removed += removed
            mine.ops["remove " + ("hit" if removed else "miss")] += 1
        elif roll < 0.92:
            claimed = store.claim_expired(limit=rng.choice([1, 2, 5]))
            mine.claims += claimed
            mine.ops["claim call"] += 1
            mine.ops["claimed"] += len(claimed)
        elif roll < 0.96:
            _list_pages(store, rng, mine)
            mine.ops["list"] += 1
        else:
            counts = store.count_waiters(run_id=rng.choice([None, run]))
            assert min(counts.pending, counts.delivered, counts.expired, counts.claimed) >= 0
            mine.ops["count"] += 1


def _waiter(
    store: PostgresSignalStore, index: int, mine: Record, running: Callable[[], bool]
) -> None:
    rng = random.Random(1000 + index)
    while running():
        run, step = rng.choice(RUNS), rng.choice(STEPS)
        try:
            waiter = store.wait_for_signal(run, step, timeout=rng.uniform(0, 0.3))
        except WaitTimeoutError:
            mine.ops["wait timeout"] += 1
        except WaiterNotFoundError:
            mine.ops["wait not found"] += 1
        except WaiterExpiredError as exc:
            mine.waits_expired.append(exc.waiter)
            mine.ops["wait expired" if exc.waiter.claimed_at is None else "wait claimed"] += 1
        else:
            mine.waits_returned.append(waiter)
            mine.ops["wait returned"] += 1


def _purger(
    store: PostgresSignalStore, index: int, mine: Record, running: Callable[[], bool]
) -> None:
    rng = random.Random(2000 + index)
    while running():
        older_than = rng.choice([timedelta(0), timedelta(seconds=1), timedelta(days=1)])
        purged = store.purge(older_than=older_than, batch_size=rng.choice([1, 5, 1000]))
        mine.purged += purged
        mine.ops["purge call"] += 1
        mine.ops["purged"] += purged
        time.sleep(rng.uniform(0, 0.2))


@pytest.mark.slow
def test_soak_mixed_operations_keep_every_invariant(
    pg_store: PostgresSignalStore, database_url: str
) -> None:
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(AUDIT)

    stop_at = time.monotonic() + SOAK_SECONDS
    total = Record()
    lock = threading.Lock()
    failures: list[BaseException] = []
    purger_store = PostgresSignalStore(database_url, application_name=PURGER)
    jobs: list[tuple[Callable[..., None], PostgresSignalStore, int]] = [
        *((_worker, pg_store, i) for i in range(THREADS)),
        *((_waiter, pg_store, i) for i in range(WAIT_THREADS)),
        (_purger, purger_store, 0),
    ]
    barrier = threading.Barrier(len(jobs))

    def thread_main(job: Callable[..., None], store: PostgresSignalStore, index: int) -> None:
        mine = Record()
        barrier.wait()
        try:
            job(store, index, mine, lambda: time.monotonic() < stop_at)
        except BaseException as exc:
            with lock:
                failures.append(exc)
        with lock:
            total.merge(mine)

    threads = [threading.Thread(target=thread_main, args=job) for job in jobs]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SOAK_SECONDS + 60)
            assert not thread.is_alive(), "a soak thread hung"
    finally:
        purger_store.close()
    elapsed = time.monotonic() - started
    assert failures == []
    time.sleep(0.5)  # every "soon" deadline has passed: states no longer change by themselves

    with pg_store.engine.connect() as conn:
        audit = [row._asdict() for row in conn.execute(text("SELECT * FROM soak_audit"))]
        rows = [row._asdict() for row in conn.execute(text("SELECT * FROM flow_signal_waiters"))]
    _check_invariants(total, audit, rows, pg_store)

    ops = total.ops
    calls = sum(n for name, n in ops.items() if name not in ("claimed", "purged", "list page"))
    print(
        f"\nsoak: {THREADS}+{WAIT_THREADS}+1 threads, {elapsed:.1f} s, {calls} calls"
        f" ({calls / elapsed:.0f}/s): {dict(sorted(ops.items()))};"
        f" audit: {dict(Counter(a['event'] for a in audit))}; rows now: {len(rows)}"
    )
    for outcome in ("DELIVERED", "ALREADY_DELIVERED", "EXPIRED", "NOT_FOUND"):
        assert ops[f"deliver {outcome}"] > 0, outcome
    for name in ("remove hit", "claimed", "purged", "list", "count"):
        assert ops[name] > 0, name
    for name in ("wait returned", "wait timeout", "wait not found", "wait expired"):
        assert ops[name] > 0, name


def _check_invariants(
    total: Record,
    audit: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    store: PostgresSignalStore,
) -> None:
    events = Counter(a["event"] for a in audit)
    # A recorded delivery or claim is never overwritten, and never both on one row.
    assert events["overwritten"] == 0 and events["delivered and claimed"] == 0, events
    assert [r for r in rows if r["delivered_at"] is not None and r["claimed_at"] is not None] == []

    # Each recorded delivery is exactly one DELIVERED result, and vice versa.
    recorded = [a for a in audit if a["event"] == "delivered"]
    delivered_results = {p: d for p, d in total.deliveries.items() if d[2].delivered}
    assert sorted(a["payload_json"] for a in recorded) == sorted(delivered_results)
    for a in recorded:
        run, signal, result = delivered_results[a["payload_json"]]
        assert (a["run_id"], a["signal_name"]) == (run, signal)
        assert (a["step_key"], a["delivered_at"]) == (result.step_key, result.delivered_at)

    # Each recorded claim is exactly one claimed waiter returned, and vice versa: no waiter
    # was claimed twice (a key claimed again was removed or purged and registered afresh).
    claim_events = sorted(
        (a["run_id"], a["step_key"], a["claimed_at"]) for a in audit if a["event"] == "claimed"
    )
    claims = sorted((w.run_id, w.step_key, w.claimed_at) for w in total.claims)
    assert claims == claim_events
    assert len(set(claims)) == len(claims)
    for waiter in total.claims:
        assert waiter.delivered_at is None and waiter.payload_json is None
        assert waiter.expires_at is not None and waiter.claimed_at is not None
        assert waiter.expires_at <= waiter.claimed_at  # by the server's clock

    # Every wait that returned holds its waiter's one recorded delivery.
    for waiter in total.waits_returned:
        assert waiter.payload_json is not None and waiter.claimed_at is None
        run, _, result = delivered_results[waiter.payload_json]
        assert (waiter.run_id, waiter.step_key) == (run, result.step_key)
        assert waiter.delivered_at == result.delivered_at
    # Every expired wait saw an undelivered waiter, and a claim it saw was recorded.
    claimed_set = set(claims)
    for waiter in total.waits_expired:
        assert waiter.delivered_at is None and waiter.payload_json is None
        if waiter.claimed_at is not None:
            assert (waiter.run_id, waiter.step_key, waiter.claimed_at) in claimed_set
        else:
            assert waiter.expires_at is not None

    # The purger deleted only finished waiters, finished before its statement began.
    deleted = [a for a in audit if a["event"] == "deleted"]
    for a in deleted:
        if a["app"] == PURGER:
            finished = a["delivered_at"] or a["claimed_at"]
            assert finished is not None and finished <= a["statement_at"], a

    # Counts add up.
    assert total.purged == sum(1 for a in deleted if a["app"] == PURGER)
    assert total.removed == sum(1 for a in deleted if a["app"] != PURGER)
    delivered_now = [r for r in rows if r["delivered_at"] is not None]
    deleted_delivered = [a for a in deleted if a["delivered_at"] is not None]
    assert len(delivered_results) == len(delivered_now) + len(deleted_delivered)
    claimed_now = [r for r in rows if r["claimed_at"] is not None]
    deleted_claimed = [a for a in deleted if a["claimed_at"] is not None]
    assert len(claims) == len(claimed_now) + len(deleted_claimed)
    counts = store.count_waiters()
    assert counts.total == len(rows)
    assert (counts.delivered, counts.claimed) == (len(delivered_now), len(claimed_now))
    # Every waiter is listed under exactly one state, as counted. (No deadline passes between
    # these reads: the test waited out the "soon" ones.)
    listed = {state: store.list_waiters(state=state, limit=10_000) for state in WaiterState}
    assert sorted((w.run_id, w.step_key) for ws in listed.values() for w in ws) == sorted(
        (r["run_id"], r["step_key"]) for r in rows
    )
    assert counts == WaiterCounts(**{state.value: len(listed[state]) for state in WaiterState})

    # Every delivered row now holds exactly the payload of its one recorded delivery.
    for row in delivered_now:
        run, signal, result = delivered_results[row["payload_json"]]
        assert (row["run_id"], row["step_key"]) == (run, result.step_key)
        assert row["delivered_at"] == result.delivered_at

    # ALREADY_DELIVERED always names a delivery that really happened, to that run.
    happened = {(a["run_id"], a["step_key"], a["delivered_at"]) for a in recorded}
    for run, _, result in total.deliveries.values():
        if result.status is DeliveryStatus.ALREADY_DELIVERED:
            assert (run, result.step_key, result.delivered_at) in happened
        elif result.status is DeliveryStatus.EXPIRED:
            assert result.step_key is not None and result.delivered_at is None
        elif result.status is DeliveryStatus.NOT_FOUND:
            assert result.step_key is None and result.delivered_at is None
