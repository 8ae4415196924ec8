"""The store's own connection pool: bounded, reused, closed with the store."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from flowsignals import InvalidArgumentError, PostgresSignalStore, StoreClosedError


def _backends(store: PostgresSignalStore, name: str) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                {"n": name},
            ).scalar_one()
        )


def test_sequential_calls_reuse_one_connection(database_url: str) -> None:
    with PostgresSignalStore(database_url, application_name="fs-pool-reuse") as store:
        run = uuid.uuid4()
        for index in range(50):
            store.register_waiter(run, f"s{index}", "sig")
        pool = store._pool
        assert pool is not None and pool.size == 1
        # The engine for callers opened one more, for this count itself.
        assert _backends(store, "fs-pool-reuse") == 2


def test_pool_is_bounded_and_a_full_pool_times_out(database_url: str) -> None:
    with PostgresSignalStore(database_url, max_connections=2, pool_timeout=0.2) as store:
        pool = store._pool
        assert pool is not None
        with (
            pool.cursor(),
            pool.cursor(),
            pytest.raises(PoolTimeoutError, match=r"no connection free within 0\.2 s"),
        ):
            store.get_waiter(uuid.uuid4(), "a")
        assert store.get_waiter(uuid.uuid4(), "a") is None
        assert pool.size == 2


def test_many_threads_share_a_small_pool(database_url: str) -> None:
    with PostgresSignalStore(database_url, max_connections=3) as store:
        run = uuid.uuid4()
        barrier = threading.Barrier(12)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                barrier.wait()
                for round_ in range(20):
                    store.register_waiter(run, f"t{index}-{round_}", "sig")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        pool = store._pool
        assert pool is not None and pool.size <= 3
        with store.engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM flow_signal_waiters")).scalar_one()
        assert count == 240


def test_a_closed_store_refuses_calls_and_closes_its_connections(database_url: str) -> None:
    store = PostgresSignalStore(database_url, application_name="fs-pool-close")
    store.get_waiter(uuid.uuid4(), "a")
    store.close()
    with pytest.raises(StoreClosedError, match="the store is closed"):
        store.get_waiter(uuid.uuid4(), "a")
    # The client closed its sockets; the server ends those backends a moment later.
    with PostgresSignalStore(database_url) as other, other.engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fs-pool-close'"
        )
        for _ in range(200):
            if conn.execute(query).scalar_one() == 0:
                break
            time.sleep(0.05)
        assert conn.execute(query).scalar_one() == 0


@pytest.mark.parametrize(
    ("name", "value"), [("max_connections", 0), ("max_connections", 1.5), ("pool_timeout", -1)]
)
def test_bad_pool_settings_are_refused(database_url: str, name: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{name}: "):
        PostgresSignalStore(database_url, **{name: value})


def test_an_interrupt_during_checkout_gives_the_slot_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresSignalStore(database_url, max_connections=1, pool_timeout=1) as store:
        pool = store._pool
        assert pool is not None
        store.get_waiter(uuid.uuid4(), "a")

        def interrupted(conn: object) -> bool:
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(pool, "_alive", interrupted)
            with pytest.raises(KeyboardInterrupt):
                store.get_waiter(uuid.uuid4(), "a")
        # The one slot came back: the next call gets a connection instead of timing out.
        assert pool.size == 0
        assert store.get_waiter(uuid.uuid4(), "a") is None
        assert pool.size == 1


def test_connections_are_reused_when_descriptors_run_past_1023(database_url: str) -> None:
    pipes = [os.pipe() for _ in range(600)]
    try:
        with PostgresSignalStore(database_url) as store:
            for _ in range(20):
                store.get_waiter(uuid.uuid4(), "a")
            pool = store._pool
            assert pool is not None and pool.size == 1
            conn_fd = pool._idle[0].connection.fileno()
            assert conn_fd > 1023
    finally:
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def test_a_wait_outlasts_a_busy_pool(database_url: str) -> None:
    with PostgresSignalStore(
        database_url, max_connections=1, pool_timeout=0.1, listen=False, poll_interval=0.05
    ) as store:
        run = uuid.uuid4()
        store.register_waiter(run, "a", "sig")
        pool = store._pool
        assert pool is not None
        results: list[object] = []
        with pool.cursor():
            waiting = threading.Thread(
                target=lambda: results.append(store.wait_for_signal(run, "a", timeout=30))
            )
            waiting.start()
            time.sleep(0.5)  # several of the wait's reads find the only connection taken
        assert store.deliver_signal(run, "sig", '"late"').delivered
        waiting.join(30)
        assert len(results) == 1
        waiter = results[0]
        assert getattr(waiter, "payload_json", None) == '"late"'
