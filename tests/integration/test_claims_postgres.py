"""claim_expired, purge and list_waiters on a real server: races, locks, batches, index use."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from flowsignals import DeliveryStatus, PostgresSignalStore, WaiterState
from flowsignals import statements as sql
from tests.integration.test_concurrency import race

CLAIMERS = 8
ROUNDS = 20


def _server_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        value: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return value


def test_parallel_claimers_never_get_the_same_waiter_twice(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    for _ in range(ROUNDS):
        run = uuid.uuid4()
        with engine.begin() as conn:
            for index in range(40):
                pg_store.register_waiter(run, f"s{index}", "sig", past, conn=conn)

        batches = race(CLAIMERS, lambda _: pg_store.claim_expired(limit=7))

        claimed = Counter((w.run_id, w.step_key) for batch in batches for w in batch)
        assert set(claimed.values()) == {1}
        assert len(claimed) == 40  # 8 x 7 >= 40, and no claimer waits for another's rows
        assert pg_store.claim_expired() == []
        assert pg_store.count_waiters(run_id=run).claimed == 40


def test_a_claim_skips_a_waiter_a_delivery_holds_and_the_delivery_wins(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    deadline = _server_now(engine) + timedelta(seconds=0.3)
    pg_store.register_waiter(run, "a", "sig", deadline)
    with engine.connect() as delivering:
        # Delivered before the deadline, not yet committed when the deadline passes.
        result = pg_store.deliver_signal(run, "sig", '"mine"', conn=delivering)
        assert result.status is DeliveryStatus.DELIVERED
        time.sleep(0.5)
        assert pg_store.claim_expired() == []  # locked: skipped, not waited for
        delivering.commit()
    assert pg_store.claim_expired() == []  # delivered: never claimable
    waiter = pg_store.get_waiter(run, "a")
    assert waiter is not None and waiter.payload_json == '"mine"' and waiter.claimed_at is None


def test_a_delivery_waiting_on_a_claim_sees_the_claim(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    # The delivery's transaction starts before the deadline, so by its now() the waiter is
    # pending; only the claimed_at it reads after the claim's lock is released stops it.
    run = uuid.uuid4()
    deadline = _server_now(engine) + timedelta(seconds=0.3)
    pg_store.register_waiter(run, "a", "sig", deadline)
    outcome: list[Any] = []
    with engine.connect() as delivering, engine.connect() as claiming:
        delivering.execute(text("SELECT now()"))  # fixes the delivery's now() before the deadline
        time.sleep(0.5)
        (claimed,) = pg_store.claim_expired(conn=claiming)

        thread = threading.Thread(
            target=lambda: outcome.append(pg_store.deliver_signal(run, "sig", "1", conn=delivering))
        )
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits for the claim's row lock
        claiming.commit()
        thread.join(30)
        delivering.commit()
    assert [r.status for r in outcome] == [DeliveryStatus.EXPIRED]
    waiter = pg_store.get_waiter(run, "a")
    assert waiter is not None and waiter.delivered_at is None
    assert waiter.claimed_at == claimed.claimed_at


def test_a_rolled_back_claim_leaves_the_waiter_claimable(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    pg_store.register_waiter(run, "a", "sig", datetime.now(timezone.utc) - timedelta(hours=1))
    with engine.connect() as conn:
        assert len(pg_store.claim_expired(conn=conn)) == 1
        conn.rollback()
    assert [w.step_key for w in pg_store.claim_expired()] == ["a"]


def test_delivery_racing_the_deadline_has_exactly_one_outcome(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    for round_ in range(ROUNDS):
        run = uuid.uuid4()
        deadline = _server_now(engine) + timedelta(milliseconds=30)
        pg_store.register_waiter(run, "a", "sig", deadline)
        claims: list[str] = []

        def call(
            index: int,
            run: uuid.UUID = run,
            delay: float = (round_ % 5) * 0.01,
            claims: list[str] = claims,
        ) -> DeliveryStatus | None:
            time.sleep(delay)
            if index == 0:
                return pg_store.deliver_signal(run, "sig", "{}").status
            for _ in range(10):
                claims.extend(w.step_key for w in pg_store.claim_expired() if w.run_id == run)
                time.sleep(0.005)
            return None

        (status,) = [s for s in race(4, call) if s is not None]
        time.sleep(0.05)
        claims.extend(w.step_key for w in pg_store.claim_expired() if w.run_id == run)
        waiter = pg_store.get_waiter(run, "a")
        assert waiter is not None
        if status is DeliveryStatus.DELIVERED:
            assert claims == [] and waiter.claimed_at is None and waiter.delivered_at is not None
        else:
            assert status is DeliveryStatus.EXPIRED
            assert claims == ["a"] and waiter.delivered_at is None


def _backdate(engine: Engine, run: uuid.UUID, column: str, age: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE flow_signal_waiters SET {column} = now() - :age WHERE run_id = :run"),
            {"age": age, "run": run},
        )


def test_purge_judges_age_by_the_servers_clock(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    old, recent, claimed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for run in (old, recent):
        pg_store.register_waiter(run, "a", "sig")
        pg_store.deliver_signal(run, "sig", "{}")
    pg_store.register_waiter(claimed, "a", "sig", datetime.now(timezone.utc) - timedelta(days=30))
    pg_store.claim_expired()
    _backdate(engine, old, "delivered_at", timedelta(days=8))
    _backdate(engine, recent, "delivered_at", timedelta(days=6))
    _backdate(engine, claimed, "claimed_at", timedelta(days=8))

    assert pg_store.purge(older_than=timedelta(days=7)) == 2
    assert [w.run_id for w in pg_store.list_waiters()] == [recent]


def test_purge_runs_in_batches_of_one_statement_each(
    pg_store: PostgresSignalStore, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4()
    with engine.begin() as conn:
        for index in range(25):
            pg_store.register_waiter(run, f"s{index}", f"sig{index}", conn=conn)
            pg_store.deliver_signal(run, f"sig{index}", "{}", conn=conn)
    _backdate(engine, run, "delivered_at", timedelta(days=1))
    statements: list[str] = []
    real_execute = pg_store._executor.execute

    def counting(conn: Any, statement: str, params: Any) -> Any:
        statements.append(statement)
        return real_execute(conn, statement, params)

    monkeypatch.setattr(pg_store._executor, "execute", counting)
    assert pg_store.purge(older_than=timedelta(hours=1), batch_size=10) == 25
    assert len(statements) == 3  # 10 + 10 + 5: the short batch ends it

    statements.clear()
    with engine.connect() as conn:
        assert pg_store.purge(older_than=timedelta(0), batch_size=10, conn=conn) == 0
        conn.rollback()
    assert len(statements) == 1


def test_purge_in_a_callers_transaction_is_undone_by_rollback(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    pg_store.register_waiter(run, "a", "sig")
    pg_store.deliver_signal(run, "sig", "{}")
    _backdate(engine, run, "delivered_at", timedelta(days=1))
    with engine.connect() as conn:
        assert pg_store.purge(older_than=timedelta(hours=1), conn=conn) == 1
        conn.rollback()
    assert pg_store.get_waiter(run, "a") is not None


EXPLAINED = {
    "claim_expired": (sql.for_schema(None).claim_expired, {"limit": 100, "channel": "x"}),
    "purge": (sql.for_schema(None).purge_batch, {"age": timedelta(days=7), "batch": 1000}),
    "list": (
        sql.list_waiters(None, by_run=False, by_signal=False, state=None, after=True),
        {
            "limit": 100,
            "after_created": datetime.now(timezone.utc),
            "after_run": uuid.uuid4(),
            "after_step": "a",
        },
    ),
    "list-pending-of-a-run": (
        sql.list_waiters(
            None, by_run=True, by_signal=False, state=WaiterState.PENDING, after=False
        ),
        {"limit": 100, "run": uuid.uuid4()},
    ),
}


@pytest.mark.parametrize("name", list(EXPLAINED))
def test_maintenance_statements_can_use_an_index(engine: Engine, name: str) -> None:
    statement, params = EXPLAINED[name]
    raw = engine.raw_connection()
    try:
        with raw.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    assert "Seq Scan" not in plan, plan
