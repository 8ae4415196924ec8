"""A wait and a delivery never disagree about a deadline, whoever holds the row meanwhile.

A delivery decides under the waiter's row lock; until it commits, a plain read still shows the
waiter undelivered. These tests hold that lock across the deadline (a caller's open
transaction, a delivery queued behind it) and check that the wait, the deliveries and the table
all end with the same story.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    PostgresSignalStore,
    WaiterExpiredError,
    WaitTimeoutError,
)
from tests.integration.faults import Call, admin_connection, lock_waiters, wait_until

PATIENCE = 30.0


@pytest.fixture(params=["listen", "polling"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[PostgresSignalStore]:
    options: dict[str, Any] = {"listen": False, "poll_interval": 0.01}
    with PostgresSignalStore(database_url, **(options if request.param == "polling" else {})) as s:
        yield s


def _server_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def _until_past(engine: Engine, deadline: datetime) -> None:
    wait_until(lambda: _server_now(engine) > deadline, "the server's clock to pass the deadline")


def test_a_delivery_committed_after_the_deadline_is_what_the_wait_returns(
    store: PostgresSignalStore, engine: Engine
) -> None:
    # Decided under the lock before the deadline, committed after it: the waiter was delivered
    # in time. Until the commit a wait cannot know that; it must not say "expired".
    run = uuid.uuid4()
    deadline = _server_now(engine) + timedelta(seconds=0.4)
    store.register_waiter(run, "a", "sig", deadline)
    with engine.connect() as conn:
        result = store.deliver_signal(run, "sig", '"in time"', conn=conn)
        assert result.status is DeliveryStatus.DELIVERED
        assert result.delivered_at is not None and result.delivered_at < deadline
        _until_past(engine, deadline)
        with pytest.raises(WaitTimeoutError):
            store.wait_for_signal(run, "a", timeout=0.3)
        waiting = Call(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.3)
        assert waiting.running
        conn.commit()
    assert waiting.result().payload_json == '"in time"'
    assert store.wait_for_signal(run, "a", timeout=0).delivered_at == result.delivered_at


def test_a_delivery_queued_past_the_deadline_finds_the_waiter_expired(
    store: PostgresSignalStore, engine: Engine, database_url: str
) -> None:
    # The second delivery starts before the deadline but gets the row only after it (the
    # first rolls back): it judges the deadline when it holds the row, so it is EXPIRED, as
    # the wait says.
    run = uuid.uuid4()
    deadline = _server_now(engine) + timedelta(seconds=0.4)
    store.register_waiter(run, "a", "sig", deadline)
    with admin_connection(database_url) as admin, engine.connect() as conn:
        assert store.deliver_signal(run, "sig", '"first"', conn=conn).delivered
        second = Call(lambda: store.deliver_signal(run, "sig", '"second"'))
        wait_until(lambda: lock_waiters(admin, "flowsignals"), "the second delivery to queue")
        assert _server_now(engine) < deadline, "the machine was too slow to set this up"
        _until_past(engine, deadline)
        waiting = Call(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.3)
        assert waiting.running  # the row is held: undecided
        conn.rollback()
    outcome: DeliveryResult = second.result()
    assert outcome == DeliveryResult(DeliveryStatus.EXPIRED, "a", None)
    with pytest.raises(WaiterExpiredError):
        waiting.result()
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.delivered_at is None and waiter.payload_json is None


def test_a_delivery_queued_behind_an_older_waiter_skips_a_newer_one_that_expired(
    store: PostgresSignalStore, engine: Engine, database_url: str
) -> None:
    # Two waiters of one signal: "a" (no deadline) and the newer "b" (a short one). A caller
    # delivers to "a" and holds it; a second delivery queues behind it before b's deadline.
    # The caller commits after the deadline: the second delivery must not hand b a payload
    # after its deadline passed and a wait on b was told so.
    run = uuid.uuid4()
    store.register_waiter(run, "a", "sig")
    deadline = _server_now(engine) + timedelta(seconds=0.4)
    store.register_waiter(run, "b", "sig", deadline)
    with admin_connection(database_url) as admin, engine.connect() as conn:
        first = store.deliver_signal(run, "sig", '"first"', conn=conn)
        assert first.status is DeliveryStatus.DELIVERED and first.step_key == "a"
        second = Call(lambda: store.deliver_signal(run, "sig", '"second"'))
        wait_until(lambda: lock_waiters(admin, "flowsignals"), "the second delivery to queue")
        assert _server_now(engine) < deadline, "the machine was too slow to set this up"
        _until_past(engine, deadline)
        waiting = Call(lambda: store.wait_for_signal(run, "b", timeout=PATIENCE))
        time.sleep(0.3)
        conn.commit()
    assert second.result() == DeliveryResult(
        DeliveryStatus.ALREADY_DELIVERED, "a", first.delivered_at
    )
    with pytest.raises(WaiterExpiredError):
        waiting.result()
    waiter = store.get_waiter(run, "b")
    assert waiter is not None and waiter.delivered_at is None


def test_deliveries_and_waits_racing_a_deadline_always_agree(
    store: PostgresSignalStore, engine: Engine
) -> None:
    # Many rounds of one delivery (in a caller's transaction held for a moment, or on its own)
    # and two waits, all around a deadline a few milliseconds away. Whatever interleaving
    # happens, the waits' answer is the delivery's answer.
    for round_ in range(30):
        run = uuid.uuid4()
        deadline = _server_now(engine) + timedelta(milliseconds=20 + round_ % 7 * 5)
        store.register_waiter(run, "a", "sig", deadline)
        barrier = threading.Barrier(3)

        def deliver(
            run: uuid.UUID = run,
            barrier: threading.Barrier = barrier,
            hold: float = round_ % 3 * 0.01,
            alone: bool = round_ % 2 == 1,
        ) -> DeliveryStatus:
            barrier.wait()
            if alone:
                return store.deliver_signal(run, "sig", '"x"').status
            with engine.begin() as conn:
                status = store.deliver_signal(run, "sig", '"x"', conn=conn).status
                time.sleep(hold)
            return status

        def wait(run: uuid.UUID = run, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                store.wait_for_signal(run, "a", timeout=PATIENCE)
            except WaiterExpiredError:
                return "expired"
            return "delivered"

        delivery, *waits = Call(deliver), Call(wait), Call(wait)
        status = delivery.result()
        expected = "delivered" if status is DeliveryStatus.DELIVERED else "expired"
        assert status in (DeliveryStatus.DELIVERED, DeliveryStatus.EXPIRED)
        assert [w.result() for w in waits] == [expected, expected], f"round {round_}"
        waiter = store.get_waiter(run, "a")
        assert waiter is not None and (waiter.delivered_at is not None) == (expected == "delivered")
