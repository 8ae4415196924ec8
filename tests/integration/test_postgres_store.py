"""PostgresSignalStore specifics: one statement per operation, the caller's transaction, the
server's clock, the engine it builds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    InvalidArgumentError,
    PostgresSignalStore,
    WaiterExpiredError,
)
from flowsignals.urls import to_sqlalchemy_url


class CountingCursor(psycopg.Cursor[Any]):
    """Counts every statement the store's own connections send."""

    statements: ClassVar[list[str]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> CountingCursor:
        CountingCursor.statements.append(str(query))
        super().execute(query, params, **kwargs)
        return self


@pytest.fixture
def counted_store(database_url: str) -> Iterator[PostgresSignalStore]:
    CountingCursor.statements = []
    options = {"connect_args": {"cursor_factory": CountingCursor}}
    with PostgresSignalStore(database_url, engine_options=options) as store:
        # The first connection runs SQLAlchemy's one-time dialect set-up; count after it.
        store.get_waiter(uuid.uuid4(), "warm-up")
        yield store


def _one_statement(store: PostgresSignalStore, call: Any) -> Any:
    CountingCursor.statements.clear()
    result = call()
    assert len(CountingCursor.statements) == 1, CountingCursor.statements
    return result


def test_every_operation_is_one_statement_in_every_outcome(
    counted_store: PostgresSignalStore,
) -> None:
    store, run = counted_store, uuid.uuid4()
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    one = _one_statement

    one(store, lambda: store.register_waiter(run, "a", "sig"))
    one(store, lambda: store.register_waiter(run, "a", "sig"))  # the repeat
    one(store, lambda: store.register_waiter(run, "late", "late-sig", past))
    assert one(store, lambda: store.deliver_signal(run, "none", "{}")).status is (
        DeliveryStatus.NOT_FOUND
    )
    assert one(store, lambda: store.deliver_signal(run, "late-sig", "{}")).status is (
        DeliveryStatus.EXPIRED
    )
    assert one(store, lambda: store.deliver_signal(run, "sig", "{}")).status is (
        DeliveryStatus.DELIVERED
    )
    assert one(store, lambda: store.deliver_signal(run, "sig", "{}")).status is (
        DeliveryStatus.ALREADY_DELIVERED
    )
    one(store, lambda: store.register_waiter(run, "b", "keyed"))
    keyed = one(store, lambda: store.deliver_signal(run, "keyed", "{}", idempotency_key="k"))
    assert keyed.status is DeliveryStatus.DELIVERED
    assert (
        one(store, lambda: store.deliver_signal(run, "keyed", "{}", idempotency_key="k")) == keyed
    )
    assert one(store, lambda: store.get_waiter(run, "a")) is not None
    assert one(store, lambda: store.get_waiter(run, "zzz")) is None
    assert one(store, lambda: store.remove_waiter(run, "a")) is True
    assert one(store, lambda: store.remove_waiter(run, "a")) is False


def test_operations_in_a_caller_connection_are_one_statement_each(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    run = uuid.uuid4()
    with engine.begin() as conn:
        pg_store.register_waiter(run, "a", "sig", conn=conn)
        pg_store.deliver_signal(run, "sig", "{}", conn=conn)
        pg_store.deliver_signal(run, "sig", "{}", conn=conn)
        pg_store.get_waiter(run, "a", conn=conn)
        pg_store.remove_waiter(run, "a", conn=conn)
    assert len(sent) == 5


def test_register_in_a_session_then_rollback_leaves_nothing(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    with Session(engine) as session:
        pg_store.register_waiter(run, "a", "sig", conn=session)
        assert pg_store.get_waiter(run, "a", conn=session) is not None
        session.rollback()
    assert pg_store.get_waiter(run, "a") is None


def test_register_with_the_callers_own_row_commits_both(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id uuid PRIMARY KEY, state text)"))
    with Session(engine) as session:
        session.execute(text("INSERT INTO orders VALUES (:id, 'awaiting-approval')"), {"id": run})
        pg_store.register_waiter(run, "approve", "approved", conn=session)
        # Not visible outside the caller's transaction until it commits.
        assert pg_store.get_waiter(run, "approve") is None
        session.commit()
    assert pg_store.get_waiter(run, "approve") is not None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM orders")).scalar_one() == "awaiting-approval"


def test_store_never_ends_the_callers_transaction(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    run = uuid.uuid4()
    with engine.connect() as conn:
        pg_store.register_waiter(run, "a", "sig", conn=conn)
        pg_store.deliver_signal(run, "sig", "1", conn=conn)
        assert conn.in_transaction()
        with pytest.raises(InvalidArgumentError):
            pg_store.deliver_signal(run, "sig", "not json", conn=conn)
        # The refused call sent nothing, so the transaction is intact and usable.
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
        conn.rollback()
    assert pg_store.get_waiter(run, "a") is None


def test_expiry_is_judged_by_the_servers_clock_at_each_statement(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    # Deadlines are judged by the server's clock when the delivery runs (clock_timestamp() as
    # it holds the row), not by now(), which stands still at a transaction's start: a delivery
    # made after the deadline inside a transaction begun before it is EXPIRED, as a wait on
    # that waiter says at the same moment. With now(), the step could be told "expired" by its
    # wait while the table recorded a delivery.
    run = uuid.uuid4()
    with engine.begin() as conn:
        started = conn.execute(text("SELECT now()")).scalar_one()
        pg_store.register_waiter(run, "a", "sig", started + timedelta(seconds=0.3), conn=conn)
        time.sleep(0.5)
        assert conn.execute(text("SELECT now()")).scalar_one() == started
        result = pg_store.deliver_signal(run, "sig", "{}", conn=conn)
    assert result == DeliveryResult(DeliveryStatus.EXPIRED, "a")
    with pytest.raises(WaiterExpiredError):
        pg_store.wait_for_signal(run, "a", timeout=0)
    # Before its deadline, a delivery in a transaction is stamped with its statement's time.
    with engine.begin() as conn:
        started = conn.execute(text("SELECT now()")).scalar_one()
        pg_store.register_waiter(run, "b", "sig-b", started + timedelta(hours=1), conn=conn)
        time.sleep(0.2)
        delivered = pg_store.deliver_signal(run, "sig-b", "{}", conn=conn)
    assert delivered.status is DeliveryStatus.DELIVERED
    assert delivered.delivered_at is not None
    assert delivered.delivered_at >= started + timedelta(seconds=0.2)


def test_waiters_created_together_are_served_by_step_key(
    pg_store: PostgresSignalStore, engine: Engine
) -> None:
    # One transaction gives both the same created_at; the step key breaks the tie.
    run = uuid.uuid4()
    with engine.begin() as conn:
        pg_store.register_waiter(run, "b", "sig", conn=conn)
        pg_store.register_waiter(run, "a", "sig", conn=conn)
    a, b = pg_store.get_waiter(run, "a"), pg_store.get_waiter(run, "b")
    assert a is not None and b is not None and a.created_at == b.created_at
    assert pg_store.deliver_signal(run, "sig", "1").step_key == "a"
    assert pg_store.deliver_signal(run, "sig", "2").step_key == "b"


def test_results_are_utc_whatever_the_session_time_zone(database_url: str) -> None:
    options = {"connect_args": {"options": "-c timezone=Pacific/Kiritimati"}}
    with PostgresSignalStore(database_url, engine_options=options) as store:
        run = uuid.uuid4()
        deadline = datetime(9999, 12, 30, tzinfo=timezone.utc)
        store.register_waiter(run, "a", "sig", deadline)
        result = store.deliver_signal(run, "sig", "{}")
        waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.expires_at == deadline
    for value in (waiter.created_at, waiter.expires_at, waiter.delivered_at, result.delivered_at):
        assert value is not None and value.utcoffset() == timedelta(0)


def test_a_store_on_a_callers_engine_leaves_it_open(database_url: str) -> None:
    engine = create_engine(to_sqlalchemy_url(database_url))
    with PostgresSignalStore(engine) as store:
        store.register_waiter(uuid.uuid4(), "a", "sig")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM flow_signal_waiters")).scalar_one() == 1
    engine.dispose()


def test_own_engine_reports_application_name_and_is_disposed(database_url: str) -> None:
    store = PostgresSignalStore(database_url, application_name="fs-test-app")
    with store.engine.connect() as conn:
        name = conn.execute(text("SELECT current_setting('application_name')")).scalar_one()
    assert name == "fs-test-app"
    store.close()
    store.close()  # idempotent
    assert store.engine.pool.status().startswith("Pool size: 5  Connections in pool: 0")


def test_both_url_forms_work(database_url: str) -> None:
    sqlalchemy_form = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    for url in (database_url, sqlalchemy_form):
        with PostgresSignalStore(url) as store:
            run = uuid.uuid4()
            store.register_waiter(run, "a", "sig")
            assert store.get_waiter(run, "a") is not None


def test_a_url_for_another_database_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^database: "):
        PostgresSignalStore("mysql://user@localhost/db")


def test_repr_hides_the_password() -> None:
    store = PostgresSignalStore("postgresql://user:s3cret@localhost/db")
    assert "s3cret" not in repr(store)
    store.close()


def test_an_unreachable_server_raises_sqlalchemys_operational_error() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    store = PostgresSignalStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=5")
    with pytest.raises(OperationalError) as caught:
        store.get_waiter(uuid.uuid4(), "a")
    assert isinstance(caught.value.orig, psycopg.OperationalError)
    store.close()
