"""The documented contract, run against both stores (PostgreSQL also in a quoted schema).

InMemorySignalStore is the model PostgresSignalStore is held to, so every case here runs on
both and asserts the exact same values. Deadlines are an hour away from now in either
direction, so the application's and the server's clocks cannot disagree about them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    InMemorySignalStore,
    InvalidArgumentError,
    SignalStore,
    StoreClosedError,
)

HOUR = timedelta(hours=1)


def _past() -> datetime:
    return datetime.now(timezone.utc) - HOUR


def _future() -> datetime:
    return datetime.now(timezone.utc) + HOUR


def test_both_stores_satisfy_the_protocol(store: SignalStore) -> None:
    assert isinstance(store, SignalStore)


def test_register_then_get_returns_the_pending_waiter(store: SignalStore, run: uuid.UUID) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    deadline = datetime(2999, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    store.register_waiter(run, "approve-step", "manager_approved", deadline)

    waiter = store.get_waiter(run, "approve-step")

    assert waiter is not None
    assert waiter.run_id == run
    assert waiter.step_key == "approve-step"
    assert waiter.signal_name == "manager_approved"
    assert waiter.expires_at == deadline
    assert waiter.expires_at is not None and waiter.expires_at.tzinfo == timezone.utc
    assert waiter.created_at.tzinfo == timezone.utc
    assert before <= waiter.created_at <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert waiter.delivered_at is None
    assert waiter.payload_json is None
    assert not waiter.is_delivered


def test_get_unknown_waiter_is_none(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    assert store.get_waiter(run, "b") is None
    assert store.get_waiter(uuid.uuid4(), "a") is None


def test_run_id_as_string_is_the_same_run(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(str(run).upper(), "a", "sig")
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.run_id == run
    assert store.deliver_signal(str(run), "sig", "1").status is DeliveryStatus.DELIVERED


def test_reregister_updates_signal_and_deadline_but_keeps_created_at(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "first", None)
    original = store.get_waiter(run, "a")
    deadline = _future()

    store.register_waiter(run, "a", "second", deadline)

    again = store.get_waiter(run, "a")
    assert original is not None and again is not None
    assert again.signal_name == "second"
    assert again.expires_at == deadline
    assert again.created_at == original.created_at
    assert store.deliver_signal(run, "first", "{}") == DeliveryResult(DeliveryStatus.NOT_FOUND)
    assert store.deliver_signal(run, "second", "{}").step_key == "a"


def test_reregister_after_delivery_keeps_the_delivery(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    delivered = store.deliver_signal(run, "sig", '{"approved": true}')
    first = store.get_waiter(run, "a")

    store.register_waiter(run, "a", "sig", _future())

    again = store.get_waiter(run, "a")
    assert first is not None and again is not None
    assert again.payload_json == '{"approved": true}'
    assert again.delivered_at == delivered.delivered_at == first.delivered_at
    assert again.created_at == first.created_at
    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(
        DeliveryStatus.ALREADY_DELIVERED, "a", delivered.delivered_at
    )


def test_deliver_without_waiter_is_not_found_and_writes_nothing(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "other")
    assert store.deliver_signal(run, "sig", '{"x": 1}') == DeliveryResult(DeliveryStatus.NOT_FOUND)
    assert store.deliver_signal(uuid.uuid4(), "other", "{}") == DeliveryResult(
        DeliveryStatus.NOT_FOUND
    )
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.payload_json is None and waiter.delivered_at is None


def test_deliver_records_payload_and_reports_step_and_time(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "sig", _future())
    result = store.deliver_signal(run, "sig", '{"by": "alice"}')
    waiter = store.get_waiter(run, "a")

    assert result.status is DeliveryStatus.DELIVERED
    assert result.delivered
    assert result.step_key == "a"
    assert waiter is not None
    assert result.delivered_at is not None and result.delivered_at.tzinfo == timezone.utc
    assert waiter.delivered_at == result.delivered_at
    assert waiter.payload_json == '{"by": "alice"}'
    assert waiter.created_at <= result.delivered_at


def test_second_delivery_is_already_delivered_with_the_first_step_and_time(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "sig")
    first = store.deliver_signal(run, "sig", '"first"')
    second = store.deliver_signal(run, "sig", '"second"')

    assert second == DeliveryResult(DeliveryStatus.ALREADY_DELIVERED, "a", first.delivered_at)
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.payload_json == '"first"'


def test_expired_waiter_is_never_delivered(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig", _past())
    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(DeliveryStatus.EXPIRED, "a")
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.delivered_at is None and waiter.payload_json is None


def test_deadline_just_passed_counts_as_expired(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig", datetime.now(timezone.utc))
    assert store.deliver_signal(run, "sig", "{}").status is DeliveryStatus.EXPIRED


def test_extending_the_deadline_revives_an_expired_waiter(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "sig", _past())
    store.register_waiter(run, "a", "sig", _future())
    assert store.deliver_signal(run, "sig", "{}").status is DeliveryStatus.DELIVERED


def test_two_waiters_of_one_signal_are_served_oldest_first(
    store: SignalStore, run: uuid.UUID
) -> None:
    # "z" is registered first, so it is older although its key sorts last.
    store.register_waiter(run, "z", "sig")
    store.register_waiter(run, "a", "sig")

    first = store.deliver_signal(run, "sig", "1")
    second = store.deliver_signal(run, "sig", "2")
    third = store.deliver_signal(run, "sig", "3")

    assert (first.status, first.step_key) == (DeliveryStatus.DELIVERED, "z")
    assert (second.status, second.step_key) == (DeliveryStatus.DELIVERED, "a")
    assert third == DeliveryResult(DeliveryStatus.ALREADY_DELIVERED, "a", second.delivered_at)
    z, a = store.get_waiter(run, "z"), store.get_waiter(run, "a")
    assert z is not None and a is not None
    assert (z.payload_json, a.payload_json) == ("1", "2")


def test_an_expired_older_waiter_is_skipped_for_a_pending_one(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "old", "sig", _past())
    store.register_waiter(run, "new", "sig", _future())
    result = store.deliver_signal(run, "sig", "{}")
    assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "new")
    # Now one is delivered and one expired: the delivery is what the sender needs to hear of.
    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(
        DeliveryStatus.ALREADY_DELIVERED, "new", result.delivered_at
    )


def test_expired_names_the_oldest_expired_waiter(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "second", "sig", _past())
    store.register_waiter(run, "first", "sig", _past())
    # Registered in that order, so "second" is the older one.
    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(
        DeliveryStatus.EXPIRED, "second"
    )


def test_signal_names_and_step_keys_are_case_sensitive(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "Step", "Approve")
    assert store.get_waiter(run, "step") is None
    assert store.deliver_signal(run, "approve", "{}").status is DeliveryStatus.NOT_FOUND
    assert store.deliver_signal(run, "Approve", "{}").status is DeliveryStatus.DELIVERED


def test_runs_are_isolated(store: SignalStore) -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    store.register_waiter(one, "a", "sig")
    store.register_waiter(two, "a", "sig")
    assert store.deliver_signal(one, "sig", "1").step_key == "a"
    other = store.get_waiter(two, "a")
    assert other is not None and other.delivered_at is None
    assert store.deliver_signal(two, "sig", "2").status is DeliveryStatus.DELIVERED


def test_remove_reports_whether_a_waiter_was_removed(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    store.register_waiter(run, "b", "sig")
    store.deliver_signal(run, "sig", "{}")

    assert store.remove_waiter(run, "a") is True
    assert store.remove_waiter(run, "a") is False
    assert store.remove_waiter(run, "never") is False
    assert store.get_waiter(run, "a") is None
    b = store.get_waiter(run, "b")
    assert b is not None and b.delivered_at is None


def test_a_removed_waiter_can_be_registered_afresh(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    store.deliver_signal(run, "sig", "1")
    store.remove_waiter(run, "a")
    store.register_waiter(run, "a", "sig")
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.delivered_at is None and waiter.payload_json is None


PAYLOADS = [
    pytest.param('  {\n\t"b" : 1 ,  "a":[ ]\r\n}  ', id="odd-whitespace-and-key-order"),
    pytest.param('{"a": 1, "a": 2}', id="duplicate-keys"),
    pytest.param('{"name": "Zoë Ωmega 東京 🚀"}', id="non-ascii"),
    pytest.param('{"nul": "\\u0000", "quote": "\\"", "slash": "\\/"}', id="escapes-kept-as-text"),
    pytest.param('"\\ud83d\\ude80 \\ud800"', id="surrogate-escapes"),
    pytest.param("1e400", id="number-beyond-double"),
    pytest.param("1" * 5000, id="integer-of-5000-digits"),
    pytest.param("-0.0", id="negative-zero"),
    pytest.param("12345678901234567890123456789", id="big-integer"),
    pytest.param("null", id="null"),
    pytest.param("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", id="nested"),
    pytest.param("[" + ",".join(['"€"'] * 3000) + "]", id="3000-euro-signs"),
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_round_trips_byte_for_byte(
    store: SignalStore, run: uuid.UUID, payload: str
) -> None:
    store.register_waiter(run, "a", "sig")
    assert store.deliver_signal(run, "sig", payload).status is DeliveryStatus.DELIVERED
    waiter = store.get_waiter(run, "a")
    assert waiter is not None
    assert waiter.payload_json == payload
    assert waiter.payload_json.encode("utf-8") == payload.encode("utf-8")


def test_payload_exactly_at_the_size_limit_is_accepted(run: uuid.UUID) -> None:
    store = InMemorySignalStore(max_payload_bytes=10)
    store.register_waiter(run, "a", "sig")
    assert store.deliver_signal(run, "sig", '"\u20ac\u20ac"').status is DeliveryStatus.DELIVERED


def test_unusual_but_valid_names_round_trip(store: SignalStore, run: uuid.UUID) -> None:
    names = ["x" * 256, "Ωmega approval/東京", "a\tb", "'; DROP TABLE flow_signal_waiters; --"]
    for index, name in enumerate(names):
        store.register_waiter(run, name, f"signal {index} {name}"[:256])
    for index, name in enumerate(names):
        waiter = store.get_waiter(run, name)
        assert waiter is not None
        assert (waiter.step_key, waiter.signal_name) == (name, f"signal {index} {name}"[:256])
        result = store.deliver_signal(run, waiter.signal_name, "{}")
        assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, name)


def test_deadline_in_another_offset_is_the_same_instant(store: SignalStore, run: uuid.UUID) -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    deadline = datetime(2999, 6, 1, 12, 0, tzinfo=plus_five)
    store.register_waiter(run, "a", "sig", deadline)
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.expires_at == deadline
    assert waiter.expires_at == datetime(2999, 6, 1, 6, 30, tzinfo=timezone.utc)
    assert waiter.expires_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "deadline",
    [
        datetime(1, 1, 2, tzinfo=timezone.utc),
        datetime(9999, 12, 30, tzinfo=timezone.utc),
    ],
    ids=["earliest", "latest"],
)
def test_deadlines_at_the_edges_of_the_range_round_trip(
    store: SignalStore, run: uuid.UUID, deadline: datetime
) -> None:
    store.register_waiter(run, "a", "sig", deadline)
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.expires_at == deadline


def test_a_closed_store_refuses_every_call(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.register_waiter(run, "b", "sig"),
        lambda: store.deliver_signal(run, "sig", "{}"),
        lambda: store.get_waiter(run, "a"),
        lambda: store.remove_waiter(run, "a"),
        lambda: store.wait_for_signal(run, "a", timeout=0),
        lambda: store.claim_expired(),
        lambda: store.purge(older_than=timedelta(0)),
        lambda: store.list_waiters(),
        lambda: store.count_waiters(),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError, match="the store is closed"):
            call()
    # A bad argument is still a bad argument, named as such, on both stores.
    with pytest.raises(InvalidArgumentError, match=r"^conn: "):
        store.get_waiter(run, "a", conn="not a connection")  # type: ignore[arg-type]


def test_closing_the_store_ends_a_running_wait(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            store.wait_for_signal(run, "a", timeout=60)
        except BaseException as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=wait)
    waiting.start()
    time.sleep(0.2)
    store.close()
    waiting.join(30)
    assert not waiting.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StoreClosedError)
