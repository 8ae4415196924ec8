"""The store behind a real pgbouncer in transaction pooling mode.

Skipped (with the reason) where pgbouncer is not installed; ``.ci/run`` installs it.

Waits behind transaction pooling must poll (``listen=False``): a LISTEN issued through
pgbouncer stays on whichever server connection ran it, which pgbouncer then lends to other
clients, so the listener never receives a notification and waits in LISTEN mode end only by
their periodic re-check. Both are shown here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from flowsignals import (
    DeliveryStatus,
    PostgresSignalStore,
    SignalWaiter,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
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


def _waits(
    store: PostgresSignalStore, run: uuid.UUID, steps: list[str], timeout: float
) -> dict[str, object]:
    """Start a wait per step on its own thread; the returned dict fills in as they end."""
    outcomes: dict[str, object] = {}

    def wait(step: str) -> None:
        try:
            outcomes[step] = store.wait_for_signal(run, step, timeout=timeout)
        except BaseException as exc:
            outcomes[step] = exc

    threads = [threading.Thread(target=wait, args=(step,), daemon=True) for step in steps]
    for thread in threads:
        thread.start()
    outcomes["_threads"] = threads
    return outcomes


def _join(outcomes: dict[str, object]) -> dict[str, object]:
    threads = outcomes.pop("_threads")
    assert isinstance(threads, list)
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a wait hung behind pgbouncer"
    return outcomes


def test_waits_in_polling_mode_return_their_payloads(bouncer_url: str) -> None:
    # Eight waits polling through a pool of four server connections, every outcome once.
    run = uuid.uuid4()
    steps = [f"step-{i}" for i in range(8)]
    with PostgresSignalStore(
        bouncer_url, prepared_statements=False, listen=False, poll_interval=0.1
    ) as store:
        for step in steps:
            store.register_waiter(run, step, f"sig-{step}")
        outcomes = _waits(store, run, steps, timeout=60)
        time.sleep(0.3)
        for step in steps:
            assert store.deliver_signal(run, f"sig-{step}", f'"{step}"').delivered
        results = _join(outcomes)
        assert store.listener is None
        for step in steps:
            waiter = results[step]
            assert isinstance(waiter, SignalWaiter), waiter
            assert (waiter.step_key, waiter.payload_json) == (step, f'"{step}"')

        store.register_waiter(run, "pending", "never")
        with pytest.raises(WaitTimeoutError):
            store.wait_for_signal(run, "pending", timeout=0.3)
        with pytest.raises(WaiterNotFoundError):
            store.wait_for_signal(run, "unknown", timeout=0.3)
        store.register_waiter(run, "late", "late", datetime.now(timezone.utc) - timedelta(1))
        with pytest.raises(WaiterExpiredError):
            store.wait_for_signal(run, "late", timeout=0.3)


def test_listen_behind_transaction_pooling_receives_no_notification(bouncer_url: str) -> None:
    # What LISTEN mode does behind transaction pooling: the listener connects and LISTENs
    # without an error, but its LISTEN stays on the server connection that ran it, which
    # pgbouncer lends to other clients; no notification ever reaches the listener. With the
    # re-check an hour away, a wait on a waiter delivered at once still returns the payload,
    # but only from the last read it makes when its timeout runs out.
    run = uuid.uuid4()
    timeout = 2.0
    with PostgresSignalStore(
        bouncer_url, prepared_statements=False, recheck_interval=3600
    ) as store:
        store.register_waiter(run, "warm-up", "warm-up")
        store.deliver_signal(run, "warm-up", "{}")
        store.wait_for_signal(run, "warm-up", timeout=10)  # starts the listener
        listener = store.listener
        assert listener is not None
        deadline = time.monotonic() + 10
        while listener.backend_pid is None:
            assert time.monotonic() < deadline, "the listener never connected"
            time.sleep(0.02)
        dispatched: list[str] = []
        original = listener._dispatch

        def spy(payload: str) -> None:
            dispatched.append(payload)
            original(payload)

        listener._dispatch = spy  # type: ignore[method-assign]
        store.register_waiter(run, "a", "sig")
        started = time.monotonic()
        outcomes = _waits(store, run, ["a"], timeout=timeout)
        time.sleep(0.3)
        assert store.deliver_signal(run, "sig", '"sent"').delivered
        (outcome,) = _join(outcomes).values()
        elapsed = time.monotonic() - started
        assert isinstance(outcome, SignalWaiter) and outcome.payload_json == '"sent"'
        assert dispatched == []  # the delivery's notification never arrived
        assert listener.connections == 1  # and no reconnection woke the wait either
        assert elapsed >= timeout * 0.9  # so it ran to its timeout: a lower bound, not a race

    # The re-check still bounds the delay: LISTEN mode silently degrades to polling every
    # recheck_interval. Behind transaction pooling, poll on purpose (listen=False).
    with PostgresSignalStore(bouncer_url, prepared_statements=False, recheck_interval=0.2) as store:
        store.register_waiter(run, "b", "sig-b")
        outcomes = _waits(store, run, ["b"], timeout=60)
        time.sleep(0.3)
        assert store.deliver_signal(run, "sig-b", '"b"').delivered
        (outcome,) = _join(outcomes).values()
        assert isinstance(outcome, SignalWaiter) and outcome.payload_json == '"b"'
