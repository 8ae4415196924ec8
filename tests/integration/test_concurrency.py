"""Racing deliveries and registrations on a real server: exact outcome counts, many rounds.

Threads line up on a barrier before each call so the calls really overlap. Without the
locking read in the delivery statement these tests fail within a few rounds (losers are told
NOT_FOUND, or the second of two waiters is never served).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from flowsignals import DeliveryResult, DeliveryStatus, InMemorySignalStore, PostgresSignalStore

THREADS = 16
ROUNDS = 25

T = TypeVar("T")


def race(count: int, call: Callable[[int], T]) -> list[T]:
    """Run ``call(i)`` for i in range(count) on as many threads, released together."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = call(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return [r for r in results if r is not None]


def _send(
    store: PostgresSignalStore | InMemorySignalStore,
    run: uuid.UUID,
    signal: str,
    payload_template: str,
    index: int,
) -> DeliveryResult:
    return store.deliver_signal(run, signal, payload_template.format(index))


def _register(store: PostgresSignalStore, run: uuid.UUID, index: int) -> bool:
    store.register_waiter(run, "step", f"signal-{index}")
    return True


def _statuses(results: list[DeliveryResult]) -> Counter[DeliveryStatus]:
    return Counter(result.status for result in results)


def _check_one_waiter_race(store: PostgresSignalStore | InMemorySignalStore) -> None:
    for _ in range(ROUNDS):
        run = uuid.uuid4()
        store.register_waiter(run, "approve", "approved")

        results = race(THREADS, partial(_send, store, run, "approved", '{{"sender": {}}}'))

        assert _statuses(results) == {
            DeliveryStatus.DELIVERED: 1,
            DeliveryStatus.ALREADY_DELIVERED: THREADS - 1,
        }
        winner_index = next(i for i, r in enumerate(results) if r.delivered)
        winner = results[winner_index]
        for result in results:
            assert result.step_key == "approve"
            assert result.delivered_at == winner.delivered_at
        waiter = store.get_waiter(run, "approve")
        assert waiter is not None
        assert waiter.payload_json == f'{{"sender": {winner_index}}}'
        assert waiter.delivered_at == winner.delivered_at


def test_sixteen_deliveries_to_one_waiter_exactly_one_wins(pg_store: PostgresSignalStore) -> None:
    _check_one_waiter_race(pg_store)


def test_sixteen_deliveries_to_one_waiter_in_memory() -> None:
    _check_one_waiter_race(InMemorySignalStore())


def test_sixteen_deliveries_to_two_waiters_serve_both_oldest_first(
    pg_store: PostgresSignalStore,
) -> None:
    for _ in range(ROUNDS):
        run = uuid.uuid4()
        pg_store.register_waiter(run, "older", "sig")
        pg_store.register_waiter(run, "newer", "sig")

        results = race(THREADS, partial(_send, pg_store, run, "sig", "{}"))

        assert _statuses(results) == {
            DeliveryStatus.DELIVERED: 2,
            DeliveryStatus.ALREADY_DELIVERED: THREADS - 2,
        }
        delivered = sorted((r.delivered_at, r.step_key) for r in results if r.delivered)
        assert {step for _, step in delivered} == {"older", "newer"}
        for result in results:
            assert result.step_key in {"older", "newer"}
            assert result.status is not DeliveryStatus.NOT_FOUND


def test_fewer_senders_than_waiters_serve_the_oldest(pg_store: PostgresSignalStore) -> None:
    senders, waiters = 3, 5
    for _ in range(ROUNDS):
        run = uuid.uuid4()
        for index in range(waiters):
            pg_store.register_waiter(run, f"step-{index}", "sig")

        results = race(senders, partial(_send, pg_store, run, "sig", "{}"))

        assert _statuses(results) == {DeliveryStatus.DELIVERED: senders}
        assert sorted(r.step_key or "" for r in results) == ["step-0", "step-1", "step-2"]
        untouched = [pg_store.get_waiter(run, f"step-{i}") for i in (3, 4)]
        assert all(w is not None and w.delivered_at is None for w in untouched)


def test_concurrent_registrations_of_one_key_never_fail(pg_store: PostgresSignalStore) -> None:
    for _ in range(ROUNDS):
        run = uuid.uuid4()

        race(THREADS, partial(_register, pg_store, run))

        waiter = pg_store.get_waiter(run, "step")
        assert waiter is not None
        assert waiter.signal_name in {f"signal-{i}" for i in range(THREADS)}
        result = pg_store.deliver_signal(run, waiter.signal_name, "{}")
        assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "step")


def test_registration_racing_delivery_never_loses_the_payload(
    pg_store: PostgresSignalStore,
) -> None:
    for _ in range(ROUNDS):
        run = uuid.uuid4()
        pg_store.register_waiter(run, "step", "sig")

        def call(index: int, run: uuid.UUID = run) -> DeliveryResult | None:
            if index % 2:
                pg_store.register_waiter(run, "step", "sig")
                return None
            return pg_store.deliver_signal(run, "sig", f'"{index}"')

        results = [r for r in race(8, call) if r is not None]

        assert _statuses(results) == {
            DeliveryStatus.DELIVERED: 1,
            DeliveryStatus.ALREADY_DELIVERED: 3,
        }
        winner = next(i for i, r in zip(range(0, 8, 2), results, strict=True) if r.delivered)
        waiter = pg_store.get_waiter(run, "step")
        assert waiter is not None and waiter.payload_json == f'"{winner}"'
