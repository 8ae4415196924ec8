"""claim_expired, purge, list_waiters and count_waiters: the same exact values on both stores.

Deadlines are an hour away in either direction, so the application's and the server's clocks
cannot disagree about them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from flowsignals import (
    DeliveryStatus,
    InMemorySignalStore,
    InvalidArgumentError,
    SignalStore,
    SignalWaiter,
    WaiterCounts,
    WaiterCursor,
    WaiterState,
)
from tests.integration.faults import OffsetOutOfRange

HOUR = timedelta(hours=1)


def _past() -> datetime:
    return datetime.now(timezone.utc) - HOUR


def _future() -> datetime:
    return datetime.now(timezone.utc) + HOUR


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[SignalStore]:
    if request.param == "memory":
        yield InMemorySignalStore()
    else:
        yield request.getfixturevalue("pg_store")


@pytest.fixture
def run() -> uuid.UUID:
    return uuid.uuid4()


def _one_of_each(store: SignalStore, run: uuid.UUID) -> None:
    """Register one waiter in each state: pending, delivered, expired, claimed."""
    store.register_waiter(run, "claimed", "sig-c", _past())
    assert [w.step_key for w in store.claim_expired()] == ["claimed"]
    store.register_waiter(run, "pending", "sig-p", _future())
    store.register_waiter(run, "delivered", "sig-d")
    assert store.deliver_signal(run, "sig-d", '"done"').status is DeliveryStatus.DELIVERED
    store.register_waiter(run, "expired", "sig-e", _past())


def test_claim_expired_claims_each_expired_waiter_once(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "late-2", "sig", _past() + timedelta(minutes=1))
    store.register_waiter(run, "late-1", "sig", _past())
    store.register_waiter(run, "on-time", "sig", _future())
    store.register_waiter(run, "forever", "sig")
    store.register_waiter(run, "delivered", "other", _future())
    store.deliver_signal(run, "other", "{}")

    claimed = store.claim_expired(limit=10)

    assert [w.step_key for w in claimed] == ["late-1", "late-2"]  # earliest deadline first
    for waiter in claimed:
        assert waiter.claimed_at is not None and waiter.claimed_at.tzinfo == timezone.utc
        assert waiter.is_claimed and not waiter.is_delivered
        assert store.get_waiter(run, waiter.step_key) == waiter
    assert store.claim_expired(limit=10) == []
    on_time = store.get_waiter(run, "on-time")
    assert on_time is not None and on_time.claimed_at is None


def test_claim_expired_respects_the_limit(store: SignalStore, run: uuid.UUID) -> None:
    for index in range(5):
        store.register_waiter(run, f"s{index}", "sig", _past() + timedelta(seconds=index))
    first = store.claim_expired(limit=2)
    second = store.claim_expired(limit=2)
    third = store.claim_expired(limit=2)
    assert [[w.step_key for w in batch] for batch in (first, second, third)] == [
        ["s0", "s1"],
        ["s2", "s3"],
        ["s4"],
    ]


def test_delivery_to_a_claimed_waiter_is_expired_even_after_reregistering(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "sig", _past())
    (claimed,) = store.claim_expired()

    store.register_waiter(run, "a", "sig", _future())  # a claim is a tombstone, like a delivery

    again = store.get_waiter(run, "a")
    assert again is not None
    assert again.claimed_at == claimed.claimed_at
    assert again.expires_at is not None and again.expires_at > datetime.now(timezone.utc)
    result = store.deliver_signal(run, "sig", "{}")
    assert (result.status, result.step_key, result.delivered_at) == (
        DeliveryStatus.EXPIRED,
        "a",
        None,
    )
    after = store.get_waiter(run, "a")
    assert after is not None and after.payload_json is None and after.delivered_at is None
    assert store.claim_expired() == []


def test_a_claimed_older_waiter_is_skipped_for_a_pending_one(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "old", "sig", _past())
    store.claim_expired()
    store.register_waiter(run, "new", "sig")
    result = store.deliver_signal(run, "sig", "{}")
    assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "new")


def test_count_waiters_by_state(store: SignalStore, run: uuid.UUID) -> None:
    _one_of_each(store, run)
    other = uuid.uuid4()
    store.register_waiter(other, "pending", "sig-p")

    assert store.count_waiters(run_id=run) == WaiterCounts(
        pending=1, delivered=1, expired=1, claimed=1
    )
    assert store.count_waiters() == WaiterCounts(pending=2, delivered=1, expired=1, claimed=1)
    assert store.count_waiters(signal_name="sig-p") == WaiterCounts(pending=2)
    assert store.count_waiters(run_id=run, signal_name="sig-p") == WaiterCounts(pending=1)
    counts = store.count_waiters(run_id=uuid.uuid4())
    assert counts == WaiterCounts() and counts.total == 0
    assert store.count_waiters().total == 5
    assert store.count_waiters()["pending"] == store.count_waiters()[WaiterState.PENDING] == 2


@pytest.mark.parametrize("state", list(WaiterState))
def test_list_waiters_by_state(store: SignalStore, run: uuid.UUID, state: WaiterState) -> None:
    _one_of_each(store, run)
    for given in (state, state.value):
        listed = store.list_waiters(run_id=run, state=given)
        assert [w.step_key for w in listed] == [state.value]


def test_list_waiters_filters_by_run_and_signal(store: SignalStore, run: uuid.UUID) -> None:
    _one_of_each(store, run)
    other = uuid.uuid4()
    store.register_waiter(other, "x", "sig-p")
    assert [w.step_key for w in store.list_waiters(run_id=run)] == [
        "claimed",
        "pending",
        "delivered",
        "expired",
    ]
    assert [(w.run_id, w.step_key) for w in store.list_waiters(signal_name="sig-p")] == [
        (run, "pending"),
        (other, "x"),
    ]
    assert store.list_waiters(run_id=other, signal_name="sig-d") == []
    delivered = store.list_waiters(run_id=run, signal_name="sig-d")
    assert [w.payload_json for w in delivered] == ['"done"']


def test_list_waiters_pages_by_keyset_without_repeats_or_gaps(
    store: SignalStore, run: uuid.UUID
) -> None:
    for index in range(23):
        store.register_waiter(run, f"step-{index:02d}", "sig")
    everything = store.list_waiters(limit=100)
    assert len(everything) == 23

    pages: list[list[str]] = []
    after: Any = None
    for _ in range(20):
        page = store.list_waiters(limit=5, after=after)
        if not page:
            break
        pages.append([w.step_key for w in page])
        # Alternate between the two forms of ``after``; new waiters appear meanwhile.
        after = page[-1] if len(pages) % 2 else WaiterCursor.from_token(page[-1].cursor.token())
        if len(pages) <= 3:
            store.register_waiter(uuid.uuid4(), "newcomer", "sig")

    listed = [step for page in pages for step in page]
    assert listed == [w.step_key for w in everything] + ["newcomer"] * 3
    assert [len(p) for p in pages[:4]] == [5, 5, 5, 5]


def test_purge_deletes_only_finished_waiters(store: SignalStore, run: uuid.UUID) -> None:
    _one_of_each(store, run)
    store.register_waiter(run, "forever", "sig-f")

    assert store.purge(older_than=HOUR) == 0  # all finished just now
    time.sleep(0.01)
    assert store.purge(older_than=timedelta(0)) == 2

    assert store.get_waiter(run, "delivered") is None
    assert store.get_waiter(run, "claimed") is None
    assert sorted(w.step_key for w in store.list_waiters(run_id=run)) == [
        "expired",
        "forever",
        "pending",
    ]
    assert store.purge(older_than=timedelta(0)) == 0


def test_purge_limit_and_batches(store: SignalStore, run: uuid.UUID) -> None:
    for index in range(7):
        store.register_waiter(run, f"s{index}", f"sig{index}")
        store.deliver_signal(run, f"sig{index}", "{}")
    time.sleep(0.01)
    assert store.purge(older_than=timedelta(0), limit=3, batch_size=2) == 3
    assert store.purge(older_than=timedelta(0), batch_size=2) == 4
    assert store.count_waiters(run_id=run).total == 0


Call = Callable[[SignalStore], object]

_T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


BAD: list[Any] = [
    pytest.param(lambda s: s.claim_expired(limit=0), "limit", id="claim-limit-zero"),
    pytest.param(lambda s: s.claim_expired(limit=10_001), "limit", id="claim-limit-huge"),
    pytest.param(lambda s: s.claim_expired(limit=True), "limit", id="claim-limit-bool"),
    pytest.param(lambda s: s.claim_expired(limit="5"), "limit", id="claim-limit-str"),
    pytest.param(lambda s: s.purge(older_than=3600), "older_than", id="purge-seconds"),
    pytest.param(lambda s: s.purge(older_than=-HOUR), "older_than", id="purge-negative"),
    pytest.param(lambda s: s.purge(older_than=HOUR, limit=0), "limit", id="purge-limit"),
    pytest.param(lambda s: s.purge(older_than=HOUR, batch_size=0), "batch_size", id="purge-batch"),
    pytest.param(lambda s: s.list_waiters(state="done"), "state", id="list-state"),
    pytest.param(lambda s: s.list_waiters(state=1), "state", id="list-state-int"),
    pytest.param(lambda s: s.list_waiters(limit=-1), "limit", id="list-limit"),
    pytest.param(lambda s: s.list_waiters(run_id="nope"), "run_id", id="list-run"),
    pytest.param(lambda s: s.list_waiters(signal_name=" x"), "signal_name", id="list-signal"),
    pytest.param(lambda s: s.list_waiters(after="cursor"), "after", id="list-after-str"),
    pytest.param(
        lambda s: s.list_waiters(after=WaiterCursor(datetime(2020, 1, 1), uuid.uuid4(), "a")),
        "after",
        id="list-after-naive",
    ),
    pytest.param(
        lambda s: s.list_waiters(after=SignalWaiter("nope", "a", "sig", _T0, None, None, None)),  # type: ignore[arg-type]
        "after",
        id="list-after-made-up-waiter-run",
    ),
    pytest.param(
        lambda s: s.list_waiters(after=SignalWaiter(uuid.uuid4(), "a\x00", "s", _T0, *[None] * 3)),
        "after",
        id="list-after-made-up-waiter-step",
    ),
    pytest.param(
        lambda s: s.list_waiters(
            after=WaiterCursor(datetime(2030, 1, 1, tzinfo=OffsetOutOfRange()), uuid.uuid4(), "a")
        ),
        "after",
        id="list-after-broken-tzinfo",
    ),
    pytest.param(
        lambda s: s.list_waiters(after=WaiterCursor("yesterday", uuid.uuid4(), "a")),  # type: ignore[arg-type]
        "after",
        id="list-after-created-str",
    ),
    pytest.param(lambda s: s.count_waiters(run_id=7), "run_id", id="count-run"),
    pytest.param(lambda s: s.count_waiters(signal_name=""), "signal_name", id="count-signal"),
    pytest.param(lambda s: s.claim_expired(conn="conn"), "conn", id="claim-conn"),
]


@pytest.mark.parametrize(("call", "argument"), BAD)
def test_bad_arguments_name_the_argument_and_change_nothing(
    store: SignalStore, run: uuid.UUID, call: Call, argument: str
) -> None:
    _one_of_each(store, run)
    before = store.list_waiters()
    with pytest.raises(InvalidArgumentError) as caught:
        call(store)
    assert caught.value.argument == argument
    assert str(caught.value).startswith(f"{argument}: ")
    assert store.list_waiters() == before


def test_a_cursor_with_a_str_run_id_pages_alike_on_both_stores(
    store: SignalStore, run: uuid.UUID
) -> None:
    store.register_waiter(run, "a", "sig")
    store.register_waiter(run, "b", "sig")
    first = store.get_waiter(run, "a")
    assert first is not None
    cursor = WaiterCursor(first.created_at, str(run), "a")  # type: ignore[arg-type]
    assert [w.step_key for w in store.list_waiters(run_id=run, after=cursor)] == ["b"]


@pytest.mark.parametrize("days", [800_000, 3_000_000, timedelta.max.days])
def test_a_purge_age_beyond_any_finish_time_purges_nothing(
    store: SignalStore, run: uuid.UUID, days: int
) -> None:
    store.register_waiter(run, "a", "sig")
    assert store.deliver_signal(run, "sig", "1").delivered
    assert store.purge(older_than=timedelta(days=days)) == 0
    assert store.count_waiters(run_id=run).delivered == 1


def test_in_memory_clock_decides_expiry_and_purge_age(run: uuid.UUID) -> None:
    now = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    store = InMemorySignalStore(clock=lambda: now[0])
    store.register_waiter(run, "a", "sig", now[0] + timedelta(minutes=5))
    assert store.claim_expired() == []
    now[0] += timedelta(minutes=5)
    (claimed,) = store.claim_expired()
    assert claimed.claimed_at == now[0]
    now[0] += timedelta(days=7)
    assert store.purge(older_than=timedelta(days=7)) == 0  # exactly 7 days: not more
    now[0] += timedelta(microseconds=1)
    assert store.purge(older_than=timedelta(days=7)) == 1
