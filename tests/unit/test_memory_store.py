"""InMemorySignalStore specifics: its clock plays the server's, and it has no transactions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flowsignals import DeliveryResult, DeliveryStatus, InMemorySignalStore, InvalidArgumentError


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_deadlines_follow_the_injected_clock() -> None:
    clock = FakeClock()
    store = InMemorySignalStore(clock=clock)
    run = uuid.uuid4()
    store.register_waiter(run, "a", "sig", clock.now + timedelta(minutes=5))

    clock.now += timedelta(minutes=5)  # exactly at the deadline: expired

    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(DeliveryStatus.EXPIRED, "a")
    clock.now -= timedelta(microseconds=1)
    result = store.deliver_signal(run, "sig", "{}")
    assert result == DeliveryResult(DeliveryStatus.DELIVERED, "a", clock.now)


def test_created_at_strictly_increases_even_when_the_clock_stands_still() -> None:
    clock = FakeClock()
    store = InMemorySignalStore(clock=clock)
    run = uuid.uuid4()
    store.register_waiter(run, "b", "sig")
    store.register_waiter(run, "a", "sig")
    a, b = store.get_waiter(run, "a"), store.get_waiter(run, "b")
    assert a is not None and b is not None
    assert b.created_at == clock.now
    assert a.created_at == clock.now + timedelta(microseconds=1)
    assert store.deliver_signal(run, "sig", "1").step_key == "b"


def test_a_naive_clock_is_refused() -> None:
    store = InMemorySignalStore(clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(InvalidArgumentError, match=r"^clock: "):
        store.register_waiter(uuid.uuid4(), "a", "sig")


def test_context_manager_and_close() -> None:
    with InMemorySignalStore() as store:
        store.register_waiter(uuid.uuid4(), "a", "sig")
    store.close()
