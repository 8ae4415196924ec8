"""The store behind a real pgbouncer in transaction pooling mode.

Skipped (with the reason) where pgbouncer is not installed; ``.ci/run`` installs it.

Pending on issue 4: a wait in polling mode through pgbouncer (LISTEN does not survive
transaction pooling) returning its payload.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from flowsignals import DeliveryStatus, PostgresSignalStore
from flowsignals.urls import to_sqlalchemy_url
from tests.integration.pgbouncer import PgBouncer, find_pgbouncer

THREADS = 8
CYCLES = 300


@pytest.fixture(scope="session")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    executable = find_pgbouncer()
    if executable is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
    bouncer = PgBouncer(executable, pg_url, pool_size=4)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def bouncer_url(pgbouncer: PgBouncer, database_url: str) -> str:
    return pgbouncer.url(database_url)


def _cycles(store: PostgresSignalStore, cycles: int, threads: int) -> Counter[str]:
    """Run ``cycles`` register/deliver/get cycles spread over ``threads``; count outcomes."""
    outcomes = Counter[str]()
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        barrier.wait()
        for cycle in range(index, cycles, threads):
            run = uuid.uuid4()
            payload = f'{{"cycle": {cycle}}}'
            try:
                store.register_waiter(run, "step", "sig")
                result = store.deliver_signal(run, "sig", payload)
                waiter = store.get_waiter(run, "step")
            except DBAPIError as exc:
                with lock:
                    outcomes[type(exc.orig).__name__] += 1
                continue
            ok = (
                result.status is DeliveryStatus.DELIVERED
                and waiter is not None
                and waiter.payload_json == payload
            )
            with lock:
                outcomes["ok" if ok else "wrong result"] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
        assert not thread.is_alive()
    return outcomes


def test_300_cycles_on_8_threads_without_prepared_statements(bouncer_url: str) -> None:
    with PostgresSignalStore(bouncer_url, prepared_statements=False) as store:
        outcomes = _cycles(store, CYCLES, THREADS)
    print(f"\npgbouncer, prepared_statements=False: {dict(outcomes)}")
    assert outcomes == {"ok": CYCLES}


def test_prepared_statements_break_behind_transaction_pooling(bouncer_url: str) -> None:
    # Why the switch is required: psycopg names prepared statements _pg3_0, _pg3_1, ... per
    # client connection; behind transaction pooling a name is unknown on the next server
    # connection, already taken there, or bound to another statement. The last can even run
    # silently as the wrong operation (get_waiter and remove_waiter bind the same parameters),
    # which is why "wrong result" is counted too.
    with PostgresSignalStore(bouncer_url, prepared_statements=True) as store:
        outcomes = _cycles(store, CYCLES, THREADS)
    print(f"\npgbouncer, prepared_statements=True: {dict(outcomes)}")
    errors = {name: count for name, count in outcomes.items() if name != "ok"}
    assert errors, "prepared statements unexpectedly survived transaction pooling"
    assert set(errors) <= {
        "InvalidSqlStatementName",  # prepared statement "_pg3_0" does not exist
        "DuplicatePreparedStatement",  # prepared statement "_pg3_0" already exists
        "ProtocolViolation",  # bind message supplies 3 parameters, but ... requires 2
        "InvalidDatetimeFormat",  # a text parameter bound to another statement's timestamp
        "wrong result",
    }


def test_a_callers_transaction_through_pgbouncer(bouncer_url: str) -> None:
    # A caller's engine behind pgbouncer must turn prepared statements off itself; the store
    # keeps psycopg's policy for an engine it is given.
    engine = create_engine(to_sqlalchemy_url(bouncer_url), connect_args={"prepare_threshold": None})
    try:
        store = PostgresSignalStore(engine)
        run = uuid.uuid4()
        with engine.connect() as conn:
            for _ in range(10):
                with conn.begin():
                    store.register_waiter(run, "a", "sig", conn=conn)
                    store.register_waiter(run, "b", "sig", conn=conn)
                with conn.begin() as tx:
                    assert store.remove_waiter(run, "b", conn=conn) is True
                    tx.rollback()
        assert store.deliver_signal(run, "sig", "1").step_key == "a"
        assert store.deliver_signal(run, "sig", "2").step_key == "b"
    finally:
        engine.dispose()
