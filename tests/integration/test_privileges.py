"""Least privilege: the runtime needs four table grants and schema usage; migrations need the owner.

The grants are the ones docs/guarantees.md lists:

    GRANT USAGE ON SCHEMA <schema> TO <runtime role>;
    GRANT SELECT, INSERT, UPDATE, DELETE ON <schema>.flow_signal_waiters TO <runtime role>;

Every operation runs as that role, wait_for_signal included: LISTEN, and the ``pg_notify``
inside deliveries, removals and claims, need no grant of their own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import ProgrammingError

from flowsignals import (
    DeliveryStatus,
    PostgresSignalStore,
    SignalWaiter,
    WaiterCounts,
    WaiterExpiredError,
    WaiterState,
    migrations,
)
from flowsignals.urls import to_sqlalchemy_url
from tests.integration.faults import admin_connection, wait_until

RUNTIME_GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON flow_signal_waiters TO {role}",
]


def _as_role(url: str, role: str) -> str:
    return (
        make_url(to_sqlalchemy_url(url))
        .set(username=role, password=None)
        .render_as_string(hide_password=False)
    )


def _run(conn: psycopg.Connection[Any], statement: str, role: str) -> None:
    conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))


@pytest.fixture
def runtime_role(database_url: str, empty_database_url: str, pg_url: str) -> Iterator[str]:
    """A LOGIN role with only the runtime grants on the test database: no DDL, no ownership."""
    role = f"fs_runtime_{uuid.uuid4().hex[:8]}"
    with admin_connection(pg_url) as admin:
        _run(admin, "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", role)
    try:
        for url in (database_url, empty_database_url):
            with admin_connection(url) as conn:
                # PostgreSQL < 15 lets PUBLIC create in schema public; the role must not.
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        with admin_connection(database_url) as conn:
            for grant in RUNTIME_GRANTS:
                _run(conn, grant, role)
        yield role
    finally:
        for url in (database_url, empty_database_url):
            with admin_connection(url) as conn:
                _run(conn, "DROP OWNED BY {role}", role)
        with admin_connection(pg_url) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            _run(admin, "DROP ROLE {role}", role)


def test_the_runtime_grants_are_enough_for_every_operation(
    database_url: str, runtime_role: str
) -> None:
    url = _as_role(database_url, runtime_role)
    run = uuid.uuid4()
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    with PostgresSignalStore(url) as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar() == runtime_role
        store.register_waiter(run, "a", "sig")
        store.register_waiter(run, "a", "sig")  # the upsert's conflict path (UPDATE)
        store.register_waiter(run, "b", "sig")
        result = store.deliver_signal(run, "sig", '{"ok": true}')
        assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "a")
        assert store.deliver_signal(uuid.uuid4(), "sig", "{}").status is DeliveryStatus.NOT_FOUND
        waiter = store.get_waiter(run, "a")
        assert waiter is not None and waiter.payload_json == '{"ok": true}'
        assert store.remove_waiter(run, "b") is True

        store.register_waiter(run, "late", "sig-late", past)
        (claimed,) = store.claim_expired()
        assert (claimed.step_key, claimed.claimed_at is not None) == ("late", True)
        assert [w.step_key for w in store.list_waiters(run_id=run)] == ["a", "late"]
        assert store.list_waiters(state=WaiterState.CLAIMED) == [claimed]
        assert store.count_waiters(run_id=run) == WaiterCounts(delivered=1, claimed=1)
        assert store.purge(older_than=timedelta(0)) == 2
        assert store.count_waiters() == WaiterCounts()

        with store.engine.begin() as conn:
            store.register_waiter(run, "c", "sig", conn=conn)
            assert store.deliver_signal(run, "sig", "1", conn=conn).step_key == "c"
            assert store.get_waiter(run, "c", conn=conn) is not None
            assert store.remove_waiter(run, "c", conn=conn) is True
            store.register_waiter(run, "d", "sig-d", past, conn=conn)
            assert [w.step_key for w in store.claim_expired(conn=conn)] == ["d"]
            assert store.count_waiters(conn=conn) == WaiterCounts(claimed=1)
            assert len(store.list_waiters(conn=conn)) == 1
            # Finish times are statement times: the claim finished before this purge began.
            assert store.purge(older_than=timedelta(0), conn=conn) == 1
            assert store.count_waiters(conn=conn) == WaiterCounts()


def test_the_runtime_role_waits_with_listen_notify(
    database_url: str, runtime_role: str, pg_url: str
) -> None:
    # The listener connects as the runtime role and LISTENs without any grant; a delivery's
    # and a claim's pg_notify wake the waits (the recheck is an hour, so only a notification
    # can end them this soon).
    url = _as_role(database_url, runtime_role)
    run = uuid.uuid4()
    with PostgresSignalStore(url, recheck_interval=3600) as store:
        store.register_waiter(run, "a", "sig")
        store.register_waiter(
            run, "late", "sig-late", datetime.now(timezone.utc) + timedelta(hours=1)
        )
        outcomes: dict[str, object] = {}

        def wait(step: str) -> None:
            try:
                outcomes[step] = store.wait_for_signal(run, step, timeout=60)
            except WaiterExpiredError as exc:
                outcomes[step] = exc

        threads = [threading.Thread(target=wait, args=(step,)) for step in ("a", "late")]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: store.listener is not None and store.listener.backend_pid is not None,
            "the listener to LISTEN",
        )
        assert store.listener is not None
        with admin_connection(pg_url) as admin:
            listening = admin.execute(
                "SELECT usename FROM pg_stat_activity WHERE pid = %s",
                (store.listener.backend_pid,),
            ).fetchall()
        assert listening == [(runtime_role,)]
        time.sleep(0.1)
        assert store.deliver_signal(run, "sig", '"granted"').delivered
        # The deadline moves into the past (re-registering sends no notification), then the
        # claim's notification ends the wait.
        store.register_waiter(run, "late", "sig-late", datetime.now(timezone.utc) - timedelta(1))
        assert [w.step_key for w in store.claim_expired()] == ["late"]
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive(), "a wait was not woken"
    returned = outcomes["a"]
    assert isinstance(returned, SignalWaiter) and returned.payload_json == '"granted"'
    expired = outcomes["late"]
    assert isinstance(expired, WaiterExpiredError) and expired.waiter.claimed_at is not None


def test_migrations_need_more_than_the_runtime_grants(
    database_url: str, empty_database_url: str, runtime_role: str
) -> None:
    with pytest.raises(ProgrammingError) as caught:
        migrations.upgrade(_as_role(empty_database_url, runtime_role))
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)
    with pytest.raises(ProgrammingError) as caught:
        migrations.downgrade(_as_role(database_url, runtime_role), revision="base")
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)

    # The owner migrates both; the runtime role's grants were untouched by its failed attempts.
    migrations.upgrade(empty_database_url)
    assert migrations.current(empty_database_url) == migrations.HEAD
    engine = create_engine(to_sqlalchemy_url(_as_role(database_url, runtime_role)))
    try:
        with PostgresSignalStore(engine) as store:
            store.register_waiter(uuid.uuid4(), "a", "sig")
    finally:
        engine.dispose()
