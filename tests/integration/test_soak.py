"""Bounded soak: 8 threads mix every operation on overlapping runs; then the invariants hold.

Runs by default for ``FLOWSIGNALS_SOAK_SECONDS`` (30 s). A test-only trigger audits every
change of ``delivered_at`` in the database itself, so the invariants are checked against what
really happened, not against what the threads believe:

* no delivery ever overwrote a recorded one (no waiter delivered twice);
* every recorded delivery is exactly one DELIVERED result, with the same step, time, payload
  and signal, so every delivered waiter holds exactly one payload, sent by one of its senders;
* DELIVERED results == delivered rows now + delivered rows removed since;
* every ALREADY_DELIVERED names a real delivery (its step and time); no call failed.

Operation counts are printed (``pytest -s``) for the record.

Pending on issue 4: wait_for_signal, claim_expired, purge and list_waiters join the mix.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from flowsignals import DeliveryResult, DeliveryStatus, PostgresSignalStore

SOAK_SECONDS = float(os.environ.get("FLOWSIGNALS_SOAK_SECONDS", "30"))
THREADS = 8
RUNS = [uuid.UUID(int=n) for n in range(1, 7)]
STEPS = [f"step-{n}" for n in range(6)]
SIGNALS = ["approved", "paid"]

AUDIT = """
CREATE TABLE soak_audit (
    id bigserial PRIMARY KEY,
    event text NOT NULL,
    run_id uuid NOT NULL,
    step_key text NOT NULL,
    signal_name text NOT NULL,
    delivered_at timestamptz,
    payload_json text
);
CREATE FUNCTION soak_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.delivered_at IS NOT NULL THEN
            INSERT INTO soak_audit (event, run_id, step_key, signal_name, delivered_at,
                                    payload_json)
            VALUES ('removed delivered', OLD.run_id, OLD.step_key, OLD.signal_name,
                    OLD.delivered_at, OLD.payload_json);
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.delivered_at IS NULL AND NEW.delivered_at IS NOT NULL THEN
        INSERT INTO soak_audit (event, run_id, step_key, signal_name, delivered_at, payload_json)
        VALUES ('delivered', NEW.run_id, NEW.step_key, NEW.signal_name, NEW.delivered_at,
                NEW.payload_json);
    ELSIF OLD.delivered_at IS DISTINCT FROM NEW.delivered_at
          OR OLD.payload_json IS DISTINCT FROM NEW.payload_json THEN
        INSERT INTO soak_audit (event, run_id, step_key, signal_name, delivered_at, payload_json)
        VALUES ('overwritten', NEW.run_id, NEW.step_key, NEW.signal_name, NEW.delivered_at,
                NEW.payload_json);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER soak_audit AFTER UPDATE OR DELETE ON flow_signal_waiters
    FOR EACH ROW EXECUTE FUNCTION soak_audit();
"""


def _deadline(rng: random.Random) -> datetime | None:
    kind = rng.choice(["none", "none", "future", "past"])
    now = datetime.now(timezone.utc)
    return {"none": None, "future": now + timedelta(hours=1), "past": now - timedelta(hours=1)}[
        kind
    ]


@pytest.mark.slow
def test_soak_mixed_operations_keep_every_invariant(pg_store: PostgresSignalStore) -> None:
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(AUDIT)

    stop_at = time.monotonic() + SOAK_SECONDS
    lock = threading.Lock()
    ops = Counter[str]()
    failures: list[BaseException] = []
    # payload -> (run, signal sent to, result); payloads are unique, so each is one delivery.
    deliveries: dict[str, tuple[uuid.UUID, str, DeliveryResult]] = {}
    barrier = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        rng = random.Random(index)
        local = Counter[str]()
        mine: dict[str, tuple[uuid.UUID, str, DeliveryResult]] = {}
        barrier.wait()
        n = 0
        try:
            while time.monotonic() < stop_at:
                n += 1
                run, step, signal = rng.choice(RUNS), rng.choice(STEPS), rng.choice(SIGNALS)
                roll = rng.random()
                if roll < 0.35:
                    pg_store.register_waiter(run, step, signal, _deadline(rng))
                    local["register"] += 1
                elif roll < 0.75:
                    payload = f'{{"thread": {index}, "n": {n}}}'
                    result = pg_store.deliver_signal(run, signal, payload)
                    mine[payload] = (run, signal, result)
                    local[f"deliver {result.status.name}"] += 1
                elif roll < 0.92:
                    pg_store.get_waiter(run, step)
                    local["get"] += 1
                else:
                    removed = pg_store.remove_waiter(run, step)
                    local["remove " + ("hit" if removed else "miss")] += 1
        except BaseException as exc:
            with lock:
                failures.append(exc)
        with lock:
            ops.update(local)
            deliveries.update(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SOAK_SECONDS + 60)
        assert not thread.is_alive(), "a soak worker hung"
    elapsed = time.monotonic() - started
    assert failures == []

    with pg_store.engine.connect() as conn:
        audit = [row._asdict() for row in conn.execute(text("SELECT * FROM soak_audit"))]
        rows = [
            row._asdict()
            for row in conn.execute(
                text("SELECT * FROM flow_signal_waiters WHERE delivered_at IS NOT NULL")
            )
        ]
    _check_invariants(deliveries, audit, rows)

    total = sum(ops.values())
    print(
        f"\nsoak: {THREADS} threads, {elapsed:.1f} s, {total} operations"
        f" ({total / elapsed:.0f}/s): {dict(sorted(ops.items()))};"
        f" audit: {dict(Counter(a['event'] for a in audit))}; delivered rows now: {len(rows)}"
    )
    assert ops["deliver DELIVERED"] > 0 and ops["deliver ALREADY_DELIVERED"] > 0
    assert ops["deliver EXPIRED"] > 0 and ops["deliver NOT_FOUND"] > 0
    assert ops["remove hit"] > 0


def _check_invariants(
    deliveries: dict[str, tuple[uuid.UUID, str, DeliveryResult]],
    audit: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> None:
    # No waiter was ever delivered twice: a recorded delivery is never overwritten.
    assert [a for a in audit if a["event"] == "overwritten"] == []

    recorded = [a for a in audit if a["event"] == "delivered"]
    delivered_results = {p: d for p, d in deliveries.items() if d[2].delivered}
    # Each recorded delivery is exactly one DELIVERED result, and vice versa.
    assert sorted(a["payload_json"] for a in recorded) == sorted(delivered_results)
    for a in recorded:
        run, signal, result = delivered_results[a["payload_json"]]
        assert (a["run_id"], a["signal_name"]) == (run, signal)
        assert (a["step_key"], a["delivered_at"]) == (result.step_key, result.delivered_at)

    # Counts add up: DELIVERED == delivered rows now + delivered rows removed since.
    removed = [a for a in audit if a["event"] == "removed delivered"]
    assert len(delivered_results) == len(rows) + len(removed)
    # Every delivered row now holds exactly the payload of its one recorded delivery.
    for row in rows:
        run, signal, result = delivered_results[row["payload_json"]]
        assert (row["run_id"], row["step_key"]) == (run, result.step_key)
        assert row["delivered_at"] == result.delivered_at

    # ALREADY_DELIVERED always names a delivery that really happened, to that run.
    happened = {(a["run_id"], a["step_key"], a["delivered_at"]) for a in recorded}
    for run, _, result in deliveries.values():
        if result.status is DeliveryStatus.ALREADY_DELIVERED:
            assert (run, result.step_key, result.delivered_at) in happened
        elif result.status is DeliveryStatus.EXPIRED:
            assert result.step_key is not None and result.delivered_at is None
        elif result.status is DeliveryStatus.NOT_FOUND:
            assert result.step_key is None and result.delivered_at is None
