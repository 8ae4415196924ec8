"""Model-based test: random operation sequences on PostgresSignalStore and the in-memory model.

A Hypothesis state machine drives every operation (register, deliver, get, remove,
claim_expired, purge, list_waiters, count_waiters and wait_for_signal with a zero or tiny
timeout) over a handful of runs, step keys and signal names against both stores side by side;
every result must agree. The in-memory store is the model: it keeps the documented semantics,
so a disagreement is a bug in one of the two, decided against the documentation.

Times differ between the stores (each has its own clock), so results are compared on
everything else and on whether a time is present, and the invariants check that both stores
order waiters the same way by creation, delivery and claim. Deadlines are a day or two in the
past, a day in the future or None, so the two clocks cannot disagree about them. They are fixed
when the module loads, so several waiters share a deadline: "earliest deadline first" is then
decided by the documented tiebreak (run_id, step_key), and both stores must make it alike.
Purge ages are 0 (everything finished) or a year (nothing), for the same reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from flowsignals import (
    DeliveryResult,
    FlowSignalsError,
    InMemorySignalStore,
    PostgresSignalStore,
    SignalStore,
    SignalWaiter,
    WaiterCursor,
    WaiterExpiredError,
    WaiterState,
)

RUNS = [uuid.UUID(int=1), uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")]
# Case, non-ASCII and a prefix: names compare exactly and sort by code point.
STEPS = ["a", "B", "b", "é"]
SIGNALS = ["approved", "Approved"]
PAYLOADS = ["{}", '{"b": 1, "a": 2}', ' [1 , "\\u0000"] ', '"é"', '{"a": 1, "a": 2}']
#: None most often: a delivery without a key. Two keys, so repeats and clashes both happen.
KEYS = [None, None, "k1", "k2"]

_LOADED = datetime.now(timezone.utc)
#: Fixed instants (shared by every waiter given that kind), far from any clock's "now".
FIXED_DEADLINES = {
    "past": _LOADED - timedelta(days=1),
    "long past": _LOADED - timedelta(days=2),
    "future": _LOADED + timedelta(days=1),
}
DEADLINES = ["none", "fresh past", *FIXED_DEADLINES]
#: 0: every finished waiter is old enough; a year: none is.
PURGE_AGES = [timedelta(0), timedelta(days=365)]
#: Zero reads once; tiny is a few reads at most. Neither may ever be mistaken for a delivery.
WAIT_TIMEOUTS = [0, 0.0, timedelta(0), 0.01]

MODEL_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Key = tuple[uuid.UUID, str]


def _deadline(kind: str) -> datetime | None:
    if kind == "none":
        return None
    if kind == "fresh past":
        # A deadline of its own: claims of these are ordered by the deadline alone.
        return datetime.now(timezone.utc) - timedelta(days=1)
    return FIXED_DEADLINES[kind]


def _comparable(waiter: SignalWaiter | None) -> tuple[Any, ...] | None:
    # Everything but the store's own clock readings, whose presence is compared instead.
    if waiter is None:
        return None
    return (
        waiter.run_id,
        waiter.step_key,
        waiter.signal_name,
        waiter.expires_at,
        waiter.delivered_at is not None,
        waiter.payload_json,
        waiter.claimed_at is not None,
        waiter.idempotency_key,
    )


def _comparables(waiters: list[SignalWaiter]) -> list[tuple[Any, ...] | None]:
    return [_comparable(w) for w in waiters]


def _comparable_result(result: DeliveryResult) -> tuple[Any, ...]:
    return (result.status, result.step_key, result.delivered_at is not None)


def _wait_outcome(store: SignalStore, run: uuid.UUID, step: str, timeout: Any) -> tuple[Any, ...]:
    """What a wait returned, or the exact type of what it raised (and whose waiter)."""
    try:
        waiter = store.wait_for_signal(run, step, timeout=timeout)
    except WaiterExpiredError as exc:
        return (WaiterExpiredError, _comparable(exc.waiter))
    except FlowSignalsError as exc:
        return (type(exc), getattr(exc, "run_id", None), getattr(exc, "step_key", None))
    assert waiter.delivered_at is not None and waiter.payload_json is not None
    return ("returned", _comparable(waiter))


def _pages(
    store: SignalStore, limit: int, filters: dict[str, Any], token: bool
) -> list[list[SignalWaiter]]:
    """Every page of a listing, each started after the previous page's last waiter."""
    pages: list[list[SignalWaiter]] = []
    after: SignalWaiter | WaiterCursor | None = None
    while True:
        page = store.list_waiters(limit=limit, after=after, **filters)
        assert len(page) <= limit
        pages.append(page)
        if len(page) < limit:
            return pages
        last = page[-1]
        after = WaiterCursor.from_token(last.cursor.token()) if token else last
        assert len(pages) <= len(RUNS) * len(STEPS) + 1, "pagination does not end"


class StoresAgree(RuleBasedStateMachine):
    """Both stores receive the same calls; every answer and the stored state must agree."""

    pg: PostgresSignalStore  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.model = InMemorySignalStore()
        with self.pg.engine.begin() as conn:
            conn.execute(text("DELETE FROM flow_signal_waiters"))
        # created_at is never reset while a waiter exists: remember the first one seen.
        self.created: dict[Key, datetime] = {}
        self.calls = 0

    @rule(
        run=st.sampled_from(RUNS),
        step=st.sampled_from(STEPS),
        signal=st.sampled_from(SIGNALS),
        deadline=st.sampled_from(DEADLINES),
    )
    def register(self, run: uuid.UUID, step: str, signal: str, deadline: str) -> None:
        expires_at = _deadline(deadline)
        self.pg.register_waiter(run, step, signal, expires_at)
        self.model.register_waiter(run, step, signal, expires_at)
        self.calls += 1

    @rule(
        run=st.sampled_from(RUNS),
        signal=st.sampled_from(SIGNALS),
        payload=st.sampled_from(PAYLOADS),
        key=st.sampled_from(KEYS),
    )
    def deliver(self, run: uuid.UUID, signal: str, payload: str, key: str | None) -> None:
        got = self.pg.deliver_signal(run, signal, payload, idempotency_key=key)
        want = self.model.deliver_signal(run, signal, payload, idempotency_key=key)
        assert _comparable_result(got) == _comparable_result(want)
        if got.delivered_at is not None:
            assert got.delivered_at.tzinfo == timezone.utc
        self.calls += 1

    @rule(run=st.sampled_from(RUNS), step=st.sampled_from(STEPS))
    def get(self, run: uuid.UUID, step: str) -> None:
        got = self.pg.get_waiter(run, step)
        assert _comparable(got) == _comparable(self.model.get_waiter(run, step))
        self.calls += 1

    @rule(run=st.sampled_from(RUNS), step=st.sampled_from(STEPS))
    def remove(self, run: uuid.UUID, step: str) -> None:
        assert self.pg.remove_waiter(run, step) == self.model.remove_waiter(run, step)
        self.created.pop((run, step), None)
        self.calls += 1

    @rule(limit=st.sampled_from([1, 2, 100]))
    def claim_expired(self, limit: int) -> None:
        got = self.pg.claim_expired(limit=limit)
        want = self.model.claim_expired(limit=limit)
        # The same waiters, in the same order: earliest deadline first.
        assert _comparables(got) == _comparables(want)
        for waiter in got:
            assert waiter.claimed_at is not None and waiter.claimed_at.tzinfo == timezone.utc
            assert self.pg.get_waiter(waiter.run_id, waiter.step_key) == waiter
        self.calls += 1

    @rule(older_than=st.sampled_from(PURGE_AGES), batch_size=st.sampled_from([1, 2, 1000]))
    def purge(self, older_than: timedelta, batch_size: int) -> None:
        got = self.pg.purge(older_than=older_than, batch_size=batch_size)
        assert got == self.model.purge(older_than=older_than, batch_size=batch_size)
        # A purged key registered again is a new waiter, with a new created_at.
        self.created = {k: v for k, v in self.created.items() if self.model.get_waiter(*k)}
        self.calls += 1

    @rule(
        run=st.sampled_from([None, *RUNS]),
        signal=st.sampled_from([None, *SIGNALS]),
        state=st.sampled_from([None, *WaiterState, "pending"]),
        limit=st.sampled_from([1, 2, 3, 100]),
        token=st.booleans(),
    )
    def list_waiters(
        self,
        run: uuid.UUID | None,
        signal: str | None,
        state: WaiterState | str | None,
        limit: int,
        token: bool,
    ) -> None:
        filters = {"run_id": run, "signal_name": signal, "state": state}
        got = _pages(self.pg, limit, filters, token)
        want = _pages(self.model, limit, filters, token)
        assert [_comparables(page) for page in got] == [_comparables(page) for page in want]
        for page in got:
            for waiter in page:
                assert self.pg.get_waiter(waiter.run_id, waiter.step_key) == waiter
        self.calls += 1

    @rule(run=st.sampled_from([None, *RUNS]), signal=st.sampled_from([None, *SIGNALS]))
    def count_waiters(self, run: uuid.UUID | None, signal: str | None) -> None:
        got = self.pg.count_waiters(run_id=run, signal_name=signal)
        assert got == self.model.count_waiters(run_id=run, signal_name=signal)
        listed = self.pg.list_waiters(run_id=run, signal_name=signal, limit=10_000)
        assert got.total == len(listed)
        self.calls += 1

    @rule(
        run=st.sampled_from(RUNS),
        step=st.sampled_from([*STEPS, "never registered"]),
        timeout=st.sampled_from(WAIT_TIMEOUTS),
    )
    def wait(self, run: uuid.UUID, step: str, timeout: Any) -> None:
        got = _wait_outcome(self.pg, run, step, timeout)
        assert got == _wait_outcome(self.model, run, step, timeout)
        self.calls += 1

    @precondition(lambda self: self.calls > 0)
    @invariant()
    def stored_state_agrees(self) -> None:
        pg = self._pg_waiters()
        model = {
            key: waiter
            for key in ((run, step) for run in RUNS for step in STEPS)
            if (waiter := self.model.get_waiter(*key)) is not None
        }
        assert {k: _comparable(w) for k, w in pg.items()} == {
            k: _comparable(w) for k, w in model.items()
        }
        # Both stores order waiters the same way by creation, delivery and claim, which is
        # what "oldest first", "the latest earlier delivery" and purge ages are decided on.
        for field in ("created_at", "delivered_at", "claimed_at"):
            assert _order(pg, field) == _order(model, field), field
        for key, waiter in pg.items():
            # Never delivered and claimed both.
            assert waiter.delivered_at is None or waiter.claimed_at is None
            assert self.created.setdefault(key, waiter.created_at) == waiter.created_at
            for value in (
                waiter.created_at,
                waiter.expires_at,
                waiter.delivered_at,
                waiter.claimed_at,
            ):
                assert value is None or value.tzinfo == timezone.utc

    def _pg_waiters(self) -> dict[Key, SignalWaiter]:
        # One query for the whole table (get_waiter per key would be 8 round trips a step).
        with self.pg.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT run_id, step_key, signal_name, created_at, expires_at, delivered_at,"
                    " payload_json, claimed_at, idempotency_key FROM flow_signal_waiters"
                )
            ).all()
        waiters = {}
        for row in rows:
            waiter = SignalWaiter(*(v.astimezone(timezone.utc) if _is_dt(v) else v for v in row))
            waiters[waiter.run_id, waiter.step_key] = waiter
        return waiters


def _is_dt(value: object) -> bool:
    return isinstance(value, datetime)


def _order(waiters: dict[Key, SignalWaiter], field: str) -> list[Key]:
    timed = [(getattr(w, field), key) for key, w in waiters.items() if getattr(w, field)]
    return [key for _, key in sorted(timed)]


def test_postgres_store_agrees_with_the_model(pg_store: PostgresSignalStore) -> None:
    StoresAgree.pg = pg_store
    run_state_machine_as_test(StoresAgree, settings=MODEL_SETTINGS)


def test_claim_expired_breaks_deadline_ties_as_the_model_does(
    pg_store: PostgresSignalStore,
) -> None:
    # Found by the state machine's fixed deadlines. Registered against the tiebreak order, so
    # the row stored first is the one that must wait: a claim with a limit must take the
    # earliest deadline and then the smallest (run_id, step_key), as the model does, so which
    # waiters a limited claim fails never depends on how rows happen to lie on disk.
    model = InMemorySignalStore()
    deadline = FIXED_DEADLINES["past"]
    order = [(RUNS[1], "b"), (RUNS[1], "a"), (RUNS[0], "é"), (RUNS[0], "B")]
    for store in (pg_store, model):
        for run, step in order:
            store.register_waiter(run, step, "sig", deadline)
    for _ in order:
        got, want = pg_store.claim_expired(limit=1), model.claim_expired(limit=1)
        assert _comparables(got) == _comparables(want)
    assert [(w.run_id, w.step_key) for w in pg_store.list_waiters(state="claimed")] == order


@pytest.mark.parametrize("kind", DEADLINES)
def test_deadline_kinds_are_what_the_model_assumes(kind: str) -> None:
    # Far enough from now that neither clock can see them differently during a test.
    value = _deadline(kind)
    now = datetime.now(timezone.utc)
    if value is not None:
        assert abs(value - now) > timedelta(hours=23)
