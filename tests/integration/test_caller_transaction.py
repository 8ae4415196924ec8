"""Store calls inside a caller's transaction: lock waits against it, and the caller's
connection stays the caller's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    InvalidArgumentError,
    PostgresSignalStore,
    SignalWaiter,
)

Kind = Literal["connection", "session"]

#: How the second delivery's backend is found in pg_stat_activity.
WAITER_APPLICATION = "fs-lock-waiter"


@contextmanager
def _caller(engine: Engine, kind: Kind) -> Iterator[Connection | Session]:
    """A caller's Connection or Session; the test commits or rolls back, never the store."""
    if kind == "connection":
        with engine.connect() as conn:
            yield conn
    else:
        with Session(engine) as session:
            yield session


def _as_connection(caller: Connection | Session) -> Connection:
    return caller.connection() if isinstance(caller, Session) else caller


def _blocked_on(engine: Engine, xid: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the WAITER_APPLICATION backend is waiting for a lock held by ``xid``.

    Returns what pg_stat_activity and pg_locks say about it; fails after ``timeout``.
    """
    query = text(
        "SELECT a.state, a.wait_event_type, a.wait_event, l.locktype, l.mode,"
        "       l.transactionid::text AS transactionid"
        "  FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted"
        " WHERE a.application_name = :app"
    )
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query, {"app": WAITER_APPLICATION})]
        if rows and rows[0]["transactionid"] == xid:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < deadline, f"second delivery never blocked on {xid}: {rows}"
        time.sleep(0.02)


@pytest.fixture
def second_store(database_url: str) -> Iterator[PostgresSignalStore]:
    """Another store (own pool, own connections), recognisable in pg_stat_activity."""
    with PostgresSignalStore(database_url, application_name=WAITER_APPLICATION) as store:
        yield store


@pytest.mark.parametrize("kind", ["connection", "session"])
@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_second_delivery_waits_for_the_callers_transaction(
    pg_store: PostgresSignalStore,
    second_store: PostgresSignalStore,
    engine: Engine,
    kind: Kind,
    ending: Literal["commit", "rollback"],
) -> None:
    run = uuid.uuid4()
    pg_store.register_waiter(run, "approve", "approved")
    registered = pg_store.get_waiter(run, "approve")
    assert registered is not None

    with _caller(engine, kind) as caller, ThreadPoolExecutor(1) as pool:
        xid = _as_connection(caller).execute(text("SELECT pg_current_xact_id()::text")).scalar()
        first = pg_store.deliver_signal(run, "approved", '{"by": "caller"}', conn=caller)
        assert first.status is DeliveryStatus.DELIVERED and first.step_key == "approve"

        second: Future[DeliveryResult] = pool.submit(
            second_store.deliver_signal, run, "approved", '{"by": "second"}'
        )
        waiting = _blocked_on(engine, str(xid))

        # It neither skipped the locked row nor answered early: it is queued on the caller.
        assert waiting == {
            "state": "active",
            "wait_event_type": "Lock",
            "wait_event": "transactionid",
            "locktype": "transactionid",
            "mode": "ShareLock",
            "transactionid": xid,
        }
        assert not second.done()
        if ending == "commit":
            caller.commit()
        else:
            caller.rollback()
        result = second.result(timeout=10)

    stored = pg_store.get_waiter(run, "approve")
    assert stored is not None
    if ending == "commit":
        assert result == DeliveryResult(
            DeliveryStatus.ALREADY_DELIVERED, "approve", first.delivered_at
        )
        assert stored == _delivered(registered, first.delivered_at, '{"by": "caller"}')
    else:
        assert result.status is DeliveryStatus.DELIVERED
        assert result.step_key == "approve"
        assert result.delivered_at is not None and first.delivered_at is not None
        # The second statement started while the caller's transaction was open.
        assert result.delivered_at > first.delivered_at
        assert stored == _delivered(registered, result.delivered_at, '{"by": "second"}')


def _delivered(waiter: SignalWaiter, at: Any, payload: str) -> SignalWaiter:
    return SignalWaiter(
        run_id=waiter.run_id,
        step_key=waiter.step_key,
        signal_name=waiter.signal_name,
        created_at=waiter.created_at,
        expires_at=waiter.expires_at,
        delivered_at=at,
        payload_json=payload,
    )


@pytest.mark.parametrize("kind", ["connection", "session"])
def test_the_callers_connection_stays_usable_after_every_store_call(
    pg_store: PostgresSignalStore, engine: Engine, kind: Kind
) -> None:
    run = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE caller_rows (id uuid PRIMARY KEY)"))

    with _caller(engine, kind) as caller:
        caller.execute(text("INSERT INTO caller_rows VALUES (:id)"), {"id": run})
        checks: list[Any] = []

        def usable(outcome: Any) -> None:
            # Same open transaction: the caller's uncommitted row is still there, and the
            # connection takes more statements.
            assert _as_connection(caller).in_transaction()
            count = caller.execute(text("SELECT count(*) FROM caller_rows")).scalar()
            assert count == 1
            checks.append(outcome)

        def refused(call: Callable[[], object], argument: str) -> None:
            with pytest.raises(InvalidArgumentError) as raised:
                call()
            assert raised.value.argument == argument
            usable(argument)

        pg_store.register_waiter(run, "a", "sig", conn=caller)
        usable("register")
        refused(lambda: pg_store.register_waiter(run, " a", "sig", conn=caller), "step_key")
        assert pg_store.deliver_signal(run, "sig", "[1]", conn=caller).status is (
            DeliveryStatus.DELIVERED
        )
        usable("deliver")
        refused(lambda: pg_store.deliver_signal(run, "sig", "[1,]", conn=caller), "payload_json")
        waiter = pg_store.get_waiter(run, "a", conn=caller)
        assert waiter is not None and waiter.payload_json == "[1]"
        usable("get")
        refused(lambda: pg_store.get_waiter("not-a-uuid", "a", conn=caller), "run_id")
        pg_store.register_waiter(run, "b", "sig", conn=caller)
        assert pg_store.remove_waiter(run, "b", conn=caller) is True
        usable("remove")
        refused(lambda: pg_store.remove_waiter(run, "", conn=caller), "step_key")
        caller.commit()

    assert checks == [
        "register",
        "step_key",
        "deliver",
        "payload_json",
        "get",
        "run_id",
        "remove",
        "step_key",
    ]
    # Everything done on the caller's connection was committed by the caller's commit.
    waiter = pg_store.get_waiter(run, "a")
    assert waiter is not None and waiter.payload_json == "[1]"
    assert pg_store.get_waiter(run, "b") is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM caller_rows")).scalar_one() == run
