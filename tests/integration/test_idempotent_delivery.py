"""deliver_signal(..., idempotency_key=...): a retried delivery is delivered once, on both stores.

The case it exists for: a delivery whose reply was lost after the server committed it. With
several pending waiters of one signal, a retry without a key fills the next waiter too; with
the key it reports the first delivery again and writes nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    InvalidArgumentError,
    PostgresSignalStore,
    SignalStore,
)
from tests.integration.faults import (
    Call,
    ReplyDropper,
    admin_connection,
    lock_waiters,
    wait_until,
)
from tests.integration.test_concurrency import race


def _two_pending(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "first", "approved")
    store.register_waiter(run, "second", "approved")


def test_a_repeat_with_the_same_key_reports_the_first_delivery_and_writes_nothing(
    store: SignalStore, run: uuid.UUID
) -> None:
    _two_pending(store, run)
    first = store.deliver_signal(run, "approved", '{"by": "ana"}', idempotency_key="mail-17")
    assert (first.status, first.step_key) == (DeliveryStatus.DELIVERED, "first")

    again = store.deliver_signal(
        run, "approved", '{"by": "someone else"}', idempotency_key="mail-17"
    )

    assert again == first
    waiter = store.get_waiter(run, "first")
    assert waiter is not None
    assert (waiter.payload_json, waiter.idempotency_key) == ('{"by": "ana"}', "mail-17")
    second = store.get_waiter(run, "second")
    assert second is not None and second.delivered_at is None and second.idempotency_key is None


def test_other_keys_and_no_key_are_new_deliveries(store: SignalStore, run: uuid.UUID) -> None:
    _two_pending(store, run)
    store.register_waiter(run, "third", "approved")
    a = store.deliver_signal(run, "approved", "1", idempotency_key="a")
    b = store.deliver_signal(run, "approved", "2", idempotency_key="b")
    c = store.deliver_signal(run, "approved", "3")
    assert [(r.status, r.step_key) for r in (a, b, c)] == [
        (DeliveryStatus.DELIVERED, "first"),
        (DeliveryStatus.DELIVERED, "second"),
        (DeliveryStatus.DELIVERED, "third"),
    ]
    # All full: a new key is ALREADY_DELIVERED (the latest delivery); an old key is still its own.
    late = store.deliver_signal(run, "approved", "4", idempotency_key="c")
    assert (late.status, late.step_key) == (DeliveryStatus.ALREADY_DELIVERED, "third")
    assert store.deliver_signal(run, "approved", "9", idempotency_key="a") == a
    keys = [w.idempotency_key for w in store.list_waiters(run_id=run)]
    assert keys == ["a", "b", None]


def test_a_key_belongs_to_its_run_and_signal(store: SignalStore, run: uuid.UUID) -> None:
    other_run = uuid.uuid4()
    store.register_waiter(run, "approve", "approved")
    store.register_waiter(run, "pay", "paid")
    store.register_waiter(other_run, "approve", "approved")
    results = [
        store.deliver_signal(run, "approved", "1", idempotency_key="k"),
        store.deliver_signal(run, "paid", "2", idempotency_key="k"),
        store.deliver_signal(other_run, "approved", "3", idempotency_key="k"),
    ]
    assert [r.step_key for r in results] == ["approve", "pay", "approve"]
    assert {r.status for r in results} == {DeliveryStatus.DELIVERED}


def test_the_key_survives_reregistration_and_goes_with_removal(
    store: SignalStore, run: uuid.UUID
) -> None:
    _two_pending(store, run)
    first = store.deliver_signal(run, "approved", "1", idempotency_key="k")
    store.register_waiter(run, "first", "approved")  # a re-run step: the tombstone stays
    assert store.deliver_signal(run, "approved", "1", idempotency_key="k") == first
    assert store.remove_waiter(run, "first")
    # Forgotten with its waiter: the same key is now a new delivery.
    again = store.deliver_signal(run, "approved", "1", idempotency_key="k")
    assert (again.status, again.step_key) == (DeliveryStatus.DELIVERED, "second")


def test_a_key_stays_with_the_signal_it_was_delivered_for(
    store: SignalStore, run: uuid.UUID
) -> None:
    # A delivered waiter re-registered to another signal (found by a breaker session): a retry
    # of its delivery is still that delivery, and the key on the new signal is a new delivery.
    _two_pending(store, run)
    store.register_waiter(run, "pay", "paid")
    first = store.deliver_signal(run, "approved", '"ok"', idempotency_key="k")
    store.register_waiter(run, "first", "paid")  # a re-run step, renamed signal: a tombstone

    assert store.deliver_signal(run, "approved", '"ok"', idempotency_key="k") == first
    second = store.get_waiter(run, "second")
    assert second is not None and second.delivered_at is None
    paid = store.deliver_signal(run, "paid", '"money"', idempotency_key="k")
    assert (paid.status, paid.step_key) == (DeliveryStatus.DELIVERED, "pay")
    pay = store.get_waiter(run, "pay")
    assert pay is not None and (pay.payload_json, pay.idempotency_key) == ('"money"', "k")
    # Delivered for "paid" now as well: each signal's delivery answers for itself.
    assert store.deliver_signal(run, "paid", "0", idempotency_key="k") == paid
    assert store.deliver_signal(run, "approved", "0", idempotency_key="k") == first


def test_a_retry_queued_behind_a_reregistration_still_finds_its_delivery(
    pg_store: PostgresSignalStore, engine: Engine, database_url: str, run: uuid.UUID
) -> None:
    # The retry waits on the row lock of a re-registration that moves the delivered waiter to
    # another signal; after the move commits, the waiter is no longer among the signal's
    # locked waiters, but the retry must still find the delivery its key made.
    _two_pending(pg_store, run)
    first = pg_store.deliver_signal(run, "approved", '"ok"', idempotency_key="k")
    with admin_connection(database_url) as admin, engine.connect() as conn:
        pg_store.register_waiter(run, "first", "approved-v2", conn=conn)
        retry = Call(lambda: pg_store.deliver_signal(run, "approved", '"ok"', idempotency_key="k"))
        wait_until(lambda: lock_waiters(admin, "flowsignals"), "the retry to queue")
        conn.commit()
    assert retry.result() == first
    second = pg_store.get_waiter(run, "second")
    assert second is not None and second.delivered_at is None


def test_a_key_that_delivered_nothing_is_not_remembered(store: SignalStore, run: uuid.UUID) -> None:
    assert store.deliver_signal(run, "approved", "1", idempotency_key="k") == DeliveryResult(
        DeliveryStatus.NOT_FOUND
    )
    store.register_waiter(run, "first", "approved")
    result = store.deliver_signal(run, "approved", "1", idempotency_key="k")
    assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "first")


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "must not be empty"),
        (" k", "must not have leading or trailing whitespace"),
        ("k" * 257, "must be at most 256 characters"),
        ("a\x00b", "must not contain NUL"),
        ("\ud800", "must be encodable as UTF-8"),
        (17, "must be a str, not int"),
        (b"k", "must be a str, not bytes"),
    ],
)
def test_a_bad_key_is_refused_and_nothing_is_delivered(
    store: SignalStore, run: uuid.UUID, key: Any, rule: str
) -> None:
    store.register_waiter(run, "first", "approved")
    with pytest.raises(InvalidArgumentError) as caught:
        store.deliver_signal(run, "approved", "1", idempotency_key=key)
    assert caught.value.argument == "idempotency_key"
    assert rule in caught.value.rule
    waiter = store.get_waiter(run, "first")
    assert waiter is not None and waiter.delivered_at is None


def test_racing_repeats_of_one_delivery_fill_one_waiter(pg_store: PostgresSignalStore) -> None:
    # 16 copies of one delivery (one key) against 3 pending waiters, released together, many
    # rounds: the oldest waiter is filled once, and every copy is told so, with its time.
    for _ in range(15):
        run = uuid.uuid4()
        for step in ("a", "b", "c"):
            pg_store.register_waiter(run, step, "approved")

        def deliver(i: int, run: uuid.UUID = run) -> DeliveryResult:
            return pg_store.deliver_signal(run, "approved", f"{i}", idempotency_key="k")

        results = race(16, deliver)
        a = pg_store.get_waiter(run, "a")
        assert a is not None and a.delivered_at is not None
        assert set(results) == {DeliveryResult(DeliveryStatus.DELIVERED, "a", a.delivered_at)}
        assert pg_store.count_waiters(run_id=run).delivered == 1


def test_racing_deliveries_with_their_own_keys_each_fill_one_waiter(
    pg_store: PostgresSignalStore,
) -> None:
    # 4 senders, each sending its delivery 4 times at once (16 calls), against 6 waiters.
    for _ in range(15):
        run = uuid.uuid4()
        for step in "abcdef":
            pg_store.register_waiter(run, step, "approved")

        def send(i: int, run: uuid.UUID = run) -> tuple[int, DeliveryResult]:
            sender = i % 4
            key = f"k{sender}"
            return sender, pg_store.deliver_signal(
                run, "approved", f'"{sender}"', idempotency_key=key
            )

        results = race(16, send)
        steps_by_sender: dict[int, set[str | None]] = {}
        for sender, result in results:
            assert result.status is DeliveryStatus.DELIVERED
            steps_by_sender.setdefault(sender, set()).add(result.step_key)
        assert all(len(steps) == 1 for steps in steps_by_sender.values()), steps_by_sender
        filled = {w.step_key: w for w in pg_store.list_waiters(run_id=run, state="delivered")}
        assert sorted(filled) == ["a", "b", "c", "d"]  # the four oldest, one per sender
        for sender, (only,) in steps_by_sender.items():
            assert only is not None
            assert (filled[only].payload_json, filled[only].idempotency_key) == (
                f'"{sender}"',
                f"k{sender}",
            )


@pytest.fixture
def dropper(database_url: str) -> Iterator[ReplyDropper]:
    with ReplyDropper(database_url) as proxy:
        yield proxy


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_a_lost_reply_then_a_retry(dropper: ReplyDropper, keyed: bool) -> None:
    # The proxy forwards the delivery and drops the server's reply: the server committed, the
    # caller only sees a lost connection. The retry (same key) must not fill a second waiter;
    # without a key it does, which is why the key exists.
    key = "webhook-7" if keyed else None
    with PostgresSignalStore(dropper.url) as store:
        run = uuid.uuid4()
        store.register_waiter(run, "first", "approved")
        store.register_waiter(run, "second", "approved")
        # Prepared once first: a first use sends Parse alone, and that reply is not the one.
        warm_up = store.deliver_signal(uuid.uuid4(), "approved", "0", idempotency_key=key)
        assert warm_up.status is DeliveryStatus.NOT_FOUND
        dropper.drop_next_reply()
        with pytest.raises(OperationalError) as caught:
            store.deliver_signal(run, "approved", '"once"', idempotency_key=key)
        assert caught.value.connection_invalidated
        assert dropper.dropped == 1

        retry = store.deliver_signal(run, "approved", '"once"', idempotency_key=key)

        first = store.get_waiter(run, "first")
        assert first is not None and first.payload_json == '"once"'  # the lost one committed
        filled = Counter(w.step_key for w in store.list_waiters(run_id=run, state="delivered"))
        if keyed:
            assert retry == DeliveryResult(DeliveryStatus.DELIVERED, "first", first.delivered_at)
            assert filled == Counter({"first": 1})
        else:
            assert (retry.status, retry.step_key) == (DeliveryStatus.DELIVERED, "second")
            assert filled == Counter({"first": 1, "second": 1})
