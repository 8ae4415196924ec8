"""Model-based test: random operation sequences on PostgresSignalStore and the in-memory model.

A Hypothesis state machine drives register, deliver, get and remove over a handful of runs,
step keys and signal names against both stores side by side; every result must agree. The
in-memory store is the model: it keeps the documented semantics, so a disagreement is a bug in
one of the two, decided against the documentation.

Times differ between the stores (each has its own clock), so results are compared on status,
step key and whether a time is present, and the invariants check that both stores order
waiters the same way by creation and by delivery. Deadlines are a day in the past, a day in the
future or None, so the two clocks cannot disagree about them.

Pending on issue 4: rules for claim_expired, purge and list_waiters slot in as further
``@rule`` methods comparing both stores the same way.
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
    InMemorySignalStore,
    PostgresSignalStore,
    SignalWaiter,
)

RUNS = [uuid.UUID(int=1), uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")]
# Case, non-ASCII and a prefix: names compare exactly and sort by code point.
STEPS = ["a", "B", "b", "é"]
SIGNALS = ["approved", "Approved"]
PAYLOADS = ["{}", '{"b": 1, "a": 2}', ' [1 , "\\u0000"] ', '"é"', '{"a": 1, "a": 2}']
DEADLINES = ["none", "past", "future"]

MODEL_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _deadline(kind: str) -> datetime | None:
    now = datetime.now(timezone.utc)
    return {"none": None, "past": now - timedelta(days=1), "future": now + timedelta(days=1)}[kind]


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
    )


def _comparable_result(result: DeliveryResult) -> tuple[Any, ...]:
    return (result.status, result.step_key, result.delivered_at is not None)


class StoresAgree(RuleBasedStateMachine):
    """Both stores receive the same calls; every answer and the stored state must agree."""

    pg: PostgresSignalStore  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.model = InMemorySignalStore()
        with self.pg.engine.begin() as conn:
            conn.execute(text("DELETE FROM flow_signal_waiters"))
        # created_at is never reset while a waiter exists: remember the first one seen.
        self.created: dict[tuple[uuid.UUID, str], datetime] = {}
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
    )
    def deliver(self, run: uuid.UUID, signal: str, payload: str) -> None:
        got = self.pg.deliver_signal(run, signal, payload)
        want = self.model.deliver_signal(run, signal, payload)
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
        # Both stores order waiters the same way by creation and by delivery, which is what
        # "oldest first" and "the latest earlier delivery" are decided on.
        assert _order(pg, "created_at") == _order(model, "created_at")
        assert _order(pg, "delivered_at") == _order(model, "delivered_at")
        for key, waiter in pg.items():
            assert self.created.setdefault(key, waiter.created_at) == waiter.created_at
            for value in (waiter.created_at, waiter.expires_at, waiter.delivered_at):
                assert value is None or value.tzinfo == timezone.utc

    def _pg_waiters(self) -> dict[tuple[uuid.UUID, str], SignalWaiter]:
        # One query for the whole table (get_waiter per key would be 15 round trips a step).
        with self.pg.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT run_id, step_key, signal_name, created_at, expires_at,"
                    " delivered_at, payload_json FROM flow_signal_waiters"
                )
            ).all()
        waiters = {}
        for row in rows:
            waiter = SignalWaiter(*(v.astimezone(timezone.utc) if _is_dt(v) else v for v in row))
            waiters[waiter.run_id, waiter.step_key] = waiter
        return waiters


def _is_dt(value: object) -> bool:
    return isinstance(value, datetime)


def _order(
    waiters: dict[tuple[uuid.UUID, str], SignalWaiter], field: str
) -> list[tuple[uuid.UUID, str]]:
    timed = [(getattr(w, field), key) for key, w in waiters.items() if getattr(w, field)]
    return [key for _, key in sorted(timed)]


def test_postgres_store_agrees_with_the_model(pg_store: PostgresSignalStore) -> None:
    StoresAgree.pg = pg_store
    run_state_machine_as_test(StoresAgree, settings=MODEL_SETTINGS)


@pytest.mark.parametrize("kind", DEADLINES)
def test_deadline_kinds_are_what_the_model_assumes(kind: str) -> None:
    # Far enough from now that neither clock can see them differently during a test.
    value = _deadline(kind)
    now = datetime.now(timezone.utc)
    if value is not None:
        assert abs(value - now) > timedelta(hours=23)
