"""The invariants the demo checks: what the store promises, judged against what happened."""

from __future__ import annotations

from dataclasses import dataclass

from flowsignals.demo.execution import Execution, SendOutcome
from flowsignals.demo.plan import Plan, SendKind, WaiterKey
from flowsignals.results import DeliveryResult, DeliveryStatus


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant and whether it held.

    Attributes:
        description: What must hold.
        passed: Whether it held for every case.
        held: Cases where it held.
        total: Cases checked.
        failures: Up to a few examples of where it did not.
    """

    description: str
    passed: bool
    held: int
    total: int
    failures: tuple[str, ...] = ()


class _Tally:
    def __init__(self, description: str) -> None:
        self.description = description
        self.held = 0
        self.total = 0
        self.failures: list[str] = []

    def record(self, ok: bool, failure: str) -> None:
        self.total += 1
        if ok:
            self.held += 1
        elif len(self.failures) < 3:
            self.failures.append(failure)

    def check(self) -> Check:
        passed = self.held == self.total
        return Check(self.description, passed, self.held, self.total, tuple(self.failures))


def verify(plan: Plan, execution: Execution) -> list[Check]:
    """Check the outcomes of ``execution`` against the store's guarantees."""
    by_waiter: dict[WaiterKey, list[SendOutcome]] = {}
    for outcome in execution.outcomes:
        by_waiter.setdefault(outcome.send.key, []).append(outcome)

    on_time = _Tally("on-time waiters hold the payload of their one DELIVERED sender")
    for waiter in plan.waiters:
        if waiter.deadline_seconds is not None:
            continue
        stored = execution.waiters.get(waiter.key)
        winners = [o for o in by_waiter.get(waiter.key, []) if o.status is DeliveryStatus.DELIVERED]
        ok = (
            stored is not None
            and len(winners) == 1
            and winners[0].result is not None
            and winners[0].result.step_key == waiter.step.key
            and stored.payload_json == winners[0].send.payload_json
            and stored.delivered_at == winners[0].result.delivered_at
        )
        on_time.record(ok, f"{_name(waiter.key)}: {len(winners)} DELIVERED, stored {stored}")

    duplicates = _Tally("every duplicate got ALREADY_DELIVERED naming its step")
    for pair in plan.pairs:
        outcomes = [o for o in by_waiter.get(pair.first.key, []) if o.send.kind is SendKind.RACING]
        winners = [o for o in outcomes if o.status is DeliveryStatus.DELIVERED]
        losers = [o for o in outcomes if o not in winners]
        ok = (
            len(winners) == 1
            and len(losers) == 1
            and losers[0].result is not None
            and winners[0].result is not None
            and losers[0].result.status is DeliveryStatus.ALREADY_DELIVERED
            and losers[0].result.step_key == pair.first.step_key
            and losers[0].result.delivered_at == winners[0].result.delivered_at
        )
        duplicates.record(ok, f"{_name(pair.first.key)}: {[_result(o) for o in outcomes]}")

    late = _Tally("every late signal got EXPIRED; its waiter holds no payload")
    for outcome in (o for o in execution.outcomes if o.send.kind is SendKind.LATE):
        stored = execution.waiters.get(outcome.send.key)
        ok = (
            outcome.result is not None
            and outcome.result.status is DeliveryStatus.EXPIRED
            and outcome.result.step_key == outcome.send.step_key
            and stored is not None
            and stored.payload_json is None
            and stored.delivered_at is None
        )
        late.record(ok, f"{_name(outcome.send.key)}: {_result(outcome)}, stored {stored}")

    unknown = _Tally("every signal to an unknown run got NOT_FOUND")
    for outcome in (o for o in execution.outcomes if o.send.kind is SendKind.UNKNOWN):
        ok = outcome.result == DeliveryResult(DeliveryStatus.NOT_FOUND)
        unknown.record(ok, f"{_name(outcome.send.key)}: {_result(outcome)}")

    kept = _Tally("re-registration mid-run kept created_at and the delivery")
    for waiter in plan.reregistered:
        before = execution.created_before.get(waiter.key)
        stored = execution.waiters.get(waiter.key)
        ok = (
            before is not None
            and stored is not None
            and stored.created_at == before
            and stored.payload_json is not None
        )
        kept.record(ok, f"{_name(waiter.key)}: created_at {before} -> {stored}")

    calls = _Tally("no store call raised an error")
    calls.total = calls.held = sum(len(v) for v in execution.latencies.values())
    for error in execution.errors:
        calls.held -= 1
        if len(calls.failures) < 3:
            calls.failures.append(error)

    return [t.check() for t in (on_time, duplicates, late, unknown, kept, calls)]


def _result(outcome: SendOutcome) -> str:
    if outcome.result is None:
        return f"error {outcome.error}"
    return f"{outcome.result.status.name} step={outcome.result.step_key}"


def _name(key: WaiterKey) -> str:
    return f"{key[0]}/{key[1]}"
