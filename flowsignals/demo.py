"""``flowsignals demo``: a concurrent approval-flow workload that checks the store's guarantees.

Every run parks two steps, ``manager-approval`` (signal ``manager_approved``) and
``finance-approval`` (signal ``finance_approved``). A thread pool then sends the approvals:

* on time, once per step; about 20% of them twice at the same instant (a barrier releases both
  senders together), so the two deliveries really race for one waiter;
* late, for about 15% of the runs, which got a deadline of 0.3-1 s and are signalled only after
  it passed;
* to about 5% as many run ids that were never registered.

Some steps are re-registered while the signals fly, as a re-run workflow step would do. Every
waiter is then read back and the outcomes are checked against what the store promises. Each
payload names its sender, so the check knows exactly which sender's payload a waiter must hold.

Run ids are always fresh random UUIDs, so the demo can run again and again on one database;
``--seed`` fixes only the shape of the workload (which runs are late, which signals race, the
order of the sends).
"""

from __future__ import annotations

import enum
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import FrameType
from typing import TextIO, TypeVar

from sqlalchemy import URL, func, select

from flowsignals import migrations
from flowsignals.embedded import EmbeddedPostgres, EmbeddedPostgresUnavailableError
from flowsignals.results import DeliveryResult, DeliveryStatus, SignalWaiter
from flowsignals.store import PostgresSignalStore

__all__ = [
    "STEPS",
    "Check",
    "Execution",
    "Plan",
    "Send",
    "SendKind",
    "Step",
    "WaiterPlan",
    "execute",
    "make_plan",
    "render_report",
    "run_demo",
    "verify",
]

#: Share of runs whose steps get a short deadline and are signalled only after it passed.
LATE_RUN_SHARE = 0.15
#: Share of on-time signals sent twice, racing.
DUPLICATE_SHARE = 0.20
#: Signals to never-registered run ids, as a share of the number of runs.
UNKNOWN_RUN_SHARE = 0.05
#: Share of on-time steps registered a second time while the signals are being sent.
REREGISTER_SHARE = 0.10
#: Range of the short deadlines, in seconds after registration.
LATE_DEADLINE_SECONDS = (0.3, 1.0)
#: Extra wait after a deadline before its late signal, on top of the measured clock offset.
_DEADLINE_MARGIN_SECONDS = 0.05
#: How long one sender of a racing pair waits for the other before giving up the race.
_BARRIER_TIMEOUT_SECONDS = 30.0

_APPROVERS = ("amira", "bjorn", "chen", "dolores", "emeka", "fatima", "gustavo", "hana")
_MISSING_EXTRA_MESSAGE = (
    "flowsignals: error: no database URL given and the embedded PostgreSQL server is not "
    "installed: install `pip install 'flowsignals[embedded]'` or pass --database-url / set "
    "FLOWSIGNALS_DATABASE_URL"
)

T = TypeVar("T")
WaiterKey = tuple[uuid.UUID, str]


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """A step every run parks, and the signal that releases it."""

    key: str
    signal_name: str


#: The two approvals of every run.
STEPS = (Step("manager-approval", "manager_approved"), Step("finance-approval", "finance_approved"))


class SendKind(enum.Enum):
    """Why a signal is sent."""

    #: The only sender of a pending waiter.
    ON_TIME = "on-time"
    #: One of two senders racing for one waiter: exactly one of them may win.
    RACING = "racing pair"
    #: Sent after the waiter's deadline passed.
    LATE = "late"
    #: Sent to a run id that was never registered.
    UNKNOWN = "unknown run"


@dataclass(frozen=True, slots=True)
class WaiterPlan:
    """One step to park.

    Attributes:
        run_id: The run.
        step: The step and its signal.
        deadline_seconds: For a late run, its deadline in seconds after registration.
        reregister: Register it again while the signals are being sent.
    """

    run_id: uuid.UUID
    step: Step
    deadline_seconds: float | None
    reregister: bool

    @property
    def key(self) -> WaiterKey:
        """(run_id, step_key), the waiter's identity."""
        return (self.run_id, self.step.key)


@dataclass(frozen=True, slots=True)
class Send:
    """One signal to deliver.

    Attributes:
        sender_id: Unique per send; carried in the payload.
        run_id: The run it goes to.
        step_key: The step it is meant for (for an unknown run, the one it would be).
        signal_name: The signal.
        kind: Why it is sent.
        payload_json: The JSON payload, naming the sender.
    """

    sender_id: str
    run_id: uuid.UUID
    step_key: str
    signal_name: str
    kind: SendKind
    payload_json: str

    @property
    def key(self) -> WaiterKey:
        """The waiter this send is meant for."""
        return (self.run_id, self.step_key)


@dataclass(frozen=True, slots=True)
class RacingPair:
    """Two sends of one signal, released together by a barrier."""

    first: Send
    second: Send


@dataclass(frozen=True, slots=True)
class Reregistration:
    """Register an already registered step again, as a re-run step does."""

    waiter: WaiterPlan


#: What the on-time phase submits, in order.
Task = Send | RacingPair | Reregistration


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the demo will do, decided up front from the seed.

    Attributes:
        seed: The seed the plan was drawn from.
        waiters: Every step to park.
        on_time: The on-time phase, in submission order (sends, racing pairs, unknown-run
            sends and mid-run re-registrations, shuffled).
        late: The signals sent after their deadlines passed.
    """

    seed: int
    waiters: tuple[WaiterPlan, ...]
    on_time: tuple[Task, ...]
    late: tuple[Send, ...]

    @property
    def sends(self) -> tuple[Send, ...]:
        """Every send, on-time and late."""
        sends: list[Send] = []
        for task in self.on_time:
            if isinstance(task, Send):
                sends.append(task)
            elif isinstance(task, RacingPair):
                sends += (task.first, task.second)
        return (*sends, *self.late)

    @property
    def pairs(self) -> tuple[RacingPair, ...]:
        """The racing pairs."""
        return tuple(task for task in self.on_time if isinstance(task, RacingPair))

    @property
    def reregistered(self) -> tuple[WaiterPlan, ...]:
        """The steps re-registered mid-run."""
        return tuple(task.waiter for task in self.on_time if isinstance(task, Reregistration))


def make_plan(runs: int, seed: int) -> Plan:
    """Draw the workload for ``runs`` runs; run ids are fresh, everything else follows ``seed``.

    Args:
        runs: Number of workflow runs (each parks one waiter per step of :data:`STEPS`).
        seed: Seed of the plan's random choices.
    """
    rng = random.Random(seed)
    senders = iter(range(1, 1_000_000_000))

    def send(run_id: uuid.UUID, step: Step, kind: SendKind) -> Send:
        sender_id = f"sender-{next(senders):06d}"
        payload = {
            "sender_id": sender_id,
            "decision": "approved",
            "approver": rng.choice(_APPROVERS),
            "step": step.key,
        }
        return Send(sender_id, run_id, step.key, step.signal_name, kind, json.dumps(payload))

    run_ids = [uuid.uuid4() for _ in range(runs)]
    late_runs = set(rng.sample(run_ids, min(_share(runs, LATE_RUN_SHARE), max(runs - 1, 0))))
    low, high = LATE_DEADLINE_SECONDS
    deadlines = {run_id: round(rng.uniform(low, high), 3) for run_id in run_ids}

    on_time_steps = [
        (run_id, step) for run_id in run_ids if run_id not in late_runs for step in STEPS
    ]
    racing = set(rng.sample(range(len(on_time_steps)), _share(len(on_time_steps), DUPLICATE_SHARE)))
    again = set(rng.sample(range(len(on_time_steps)), _share(len(on_time_steps), REREGISTER_SHARE)))

    waiters: list[WaiterPlan] = []
    for run_id in run_ids:
        for step in STEPS:
            is_late = run_id in late_runs
            reregister = not is_late and on_time_steps.index((run_id, step)) in again
            waiters.append(
                WaiterPlan(run_id, step, deadlines[run_id] if is_late else None, reregister)
            )

    tasks: list[Task] = []
    for index, (run_id, step) in enumerate(on_time_steps):
        if index in racing:
            first = send(run_id, step, SendKind.RACING)
            tasks.append(RacingPair(first, send(run_id, step, SendKind.RACING)))
        else:
            tasks.append(send(run_id, step, SendKind.ON_TIME))
    for _ in range(_share(runs, UNKNOWN_RUN_SHARE)):
        tasks.append(send(uuid.uuid4(), rng.choice(STEPS), SendKind.UNKNOWN))
    rng.shuffle(tasks)
    # Mid-run: somewhere in the middle half of the sends, never before the first of them.
    for waiter in (w for w in waiters if w.reregister):
        tasks.insert(
            rng.randint(len(tasks) // 4, max(3 * len(tasks) // 4, 1)), Reregistration(waiter)
        )

    late = [
        send(w.run_id, w.step, SendKind.LATE) for w in waiters if w.deadline_seconds is not None
    ]
    rng.shuffle(late)
    return Plan(seed, tuple(waiters), tuple(tasks), tuple(late))


def _share(total: int, fraction: float) -> int:
    # At least one of each kind whenever there is anything to choose from, so a small demo
    # still exercises every outcome.
    return 0 if total == 0 else min(total, max(1, round(total * fraction)))


# -- execution -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one send got back: a result, or the error it raised."""

    send: Send
    result: DeliveryResult | None
    error: str | None = None
    #: ``time.perf_counter()`` when the call started and ended.
    span: tuple[float, float] = (math.nan, math.nan)


@dataclass(slots=True)
class Execution:
    """What happened when the plan ran.

    Attributes:
        outcomes: One per send.
        latencies: Seconds per store call, by operation (``register``, ``deliver``, ``get``).
        work_seconds: Wall time of the phases that call the store.
        waited_seconds: Time spent only waiting for the late runs' deadlines to pass.
        created_before: ``created_at`` of each re-registered step, read before re-registering.
        waiters: Every planned waiter as read back at the end (``None``: not found).
        errors: Messages of store calls that raised.
    """

    outcomes: list[SendOutcome] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"register": [], "deliver": [], "get": []}
    )
    work_seconds: float = 0.0
    waited_seconds: float = 0.0
    created_before: dict[WaiterKey, datetime | None] = field(default_factory=dict)
    waiters: dict[WaiterKey, SignalWaiter | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class _Runner:
    """Runs store calls on a thread pool, timing each one."""

    def __init__(self, store: PostgresSignalStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._lock = threading.Lock()
        self._barriers: list[threading.Barrier] = []
        self.execution = Execution()
        self.clock_offset = _server_clock_offset(store)

    def server_now(self) -> datetime:
        """The database server's time, estimated from this machine's clock."""
        return datetime.now(timezone.utc) + self.clock_offset

    def timed(self, operation: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.execution.latencies[operation].append(elapsed)

    def register(self, waiter: WaiterPlan) -> datetime | None:
        expires_at = None
        if waiter.deadline_seconds is not None:
            expires_at = self.server_now() + timedelta(seconds=waiter.deadline_seconds)
        self._guard(
            lambda: self.timed(
                "register",
                lambda: self._store.register_waiter(
                    waiter.run_id, waiter.step.key, waiter.step.signal_name, expires_at
                ),
            )
        )
        return expires_at

    def get(self, key: WaiterKey) -> SignalWaiter | None:
        return self._guard(lambda: self.timed("get", lambda: self._store.get_waiter(*key)))

    def deliver(self, send: Send, barrier: threading.Barrier | None = None) -> SendOutcome:
        if barrier is not None:
            # A broken barrier means the partner never came (or we are stopping): send alone.
            with suppress(threading.BrokenBarrierError):
                barrier.wait()
        started = time.perf_counter()
        try:
            result = self.timed(
                "deliver",
                lambda: self._store.deliver_signal(
                    send.run_id, send.signal_name, send.payload_json
                ),
            )
        except Exception as exc:
            self._record_error(exc)
            return SendOutcome(send, None, f"{type(exc).__name__}: {exc}")
        return SendOutcome(send, result, span=(started, time.perf_counter()))

    def submit_task(self, task: Task) -> list[Future[SendOutcome | None]]:
        if isinstance(task, Send):
            return [self._executor.submit(self.deliver, task)]
        if isinstance(task, RacingPair):
            # Submitted back to back, so the partner is always the next task a free thread
            # takes: with at least two threads the pair cannot deadlock.
            barrier = threading.Barrier(2, timeout=_BARRIER_TIMEOUT_SECONDS)
            self._barriers.append(barrier)
            return [
                self._executor.submit(self.deliver, task.first, barrier),
                self._executor.submit(self.deliver, task.second, barrier),
            ]
        return [self._executor.submit(self._reregister, task.waiter)]

    def abort(self) -> None:
        for barrier in self._barriers:
            barrier.abort()

    def _reregister(self, waiter: WaiterPlan) -> None:
        self.register(waiter)
        return None

    def _guard(self, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except Exception as exc:
            self._record_error(exc)
            return None

    def _record_error(self, exc: Exception) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        with self._lock:
            self.execution.errors.append(f"{type(exc).__name__}: {message}")


def execute(plan: Plan, store: PostgresSignalStore, threads: int) -> Execution:
    """Run ``plan`` on ``store`` with ``threads`` concurrent callers.

    Phases: register every waiter; read ``created_at`` of the steps to re-register; send the
    on-time signals (with the races, the unknown runs and the re-registrations); wait for the
    last short deadline; send the late signals; read every waiter back.

    Raises:
        KeyboardInterrupt: Interrupted; queued calls are cancelled and waiting racers released.
    """
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowsignals-demo")
    runner = _Runner(store, executor)
    execution = runner.execution
    try:
        started = time.perf_counter()
        register_futures = [executor.submit(runner.register, w) for w in plan.waiters]
        deadlines = [future.result() for future in register_futures]
        for waiter in plan.reregistered:
            created = runner.get(waiter.key)
            execution.created_before[waiter.key] = None if created is None else created.created_at

        futures = [future for task in plan.on_time for future in runner.submit_task(task)]
        for future in futures:
            outcome = future.result()
            if outcome is not None:
                execution.outcomes.append(outcome)
        execution.work_seconds += time.perf_counter() - started

        # The deadlines are the server's; wait until the last one has passed by its clock.
        last = max((d for d in deadlines if d is not None), default=None)
        if last is not None:
            remaining = (last - runner.server_now()).total_seconds() + _DEADLINE_MARGIN_SECONDS
            if remaining > 0:
                time.sleep(remaining)
                execution.waited_seconds = remaining

        started = time.perf_counter()
        late_futures = [executor.submit(runner.deliver, send) for send in plan.late]
        execution.outcomes += [future.result() for future in late_futures]
        read_futures = [executor.submit(runner.get, w.key) for w in plan.waiters]
        for waiter, read in zip(plan.waiters, read_futures, strict=True):
            execution.waiters[waiter.key] = read.result()
        execution.work_seconds += time.perf_counter() - started
    except BaseException:
        runner.abort()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return execution


def _server_clock_offset(store: PostgresSignalStore) -> timedelta:
    """How far the database server's clock is ahead of this machine's (deadlines are its)."""
    before = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        server_now: datetime = conn.execute(select(func.now())).scalar_one()
    after = datetime.now(timezone.utc)
    return server_now - (before + (after - before) / 2)


# -- verification --------------------------------------------------------------------------


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
        winners = [
            o for o in by_waiter.get(waiter.key, []) if _status(o) is DeliveryStatus.DELIVERED
        ]
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
        winners = [o for o in outcomes if _status(o) is DeliveryStatus.DELIVERED]
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


def _status(outcome: SendOutcome) -> DeliveryStatus | None:
    return None if outcome.result is None else outcome.result.status


def _result(outcome: SendOutcome) -> str:
    if outcome.result is None:
        return f"error {outcome.error}"
    return f"{outcome.result.status.name} step={outcome.result.step_key}"


def _name(key: WaiterKey) -> str:
    return f"{key[0]}/{key[1]}"


# -- report --------------------------------------------------------------------------------


def render_report(
    plan: Plan, execution: Execution, checks: Sequence[Check], *, color: bool = False
) -> str:
    """Return the readable summary: workload, outcomes, latency, throughput and invariants."""
    lines: list[str] = []
    sends = plan.sends
    racing = _racing_overlap(execution)
    kinds = Counter(send.kind for send in sends)
    late_runs = len({w.run_id for w in plan.waiters if w.deadline_seconds is not None})
    low, high = LATE_DEADLINE_SECONDS
    lines += [
        "Workload",
        *_table(
            [],
            [
                ["waiters registered", str(len(plan.waiters)), f"{len(STEPS)} steps per run"],
                ["on-time signals", str(kinds[SendKind.ON_TIME] + len(plan.pairs)), ""],
                [
                    "  sent twice, racing",
                    str(len(plan.pairs)),
                    f"pairs released by a barrier; {racing} overlapped in time",
                ],
                [
                    "late signals",
                    str(kinds[SendKind.LATE]),
                    f"{late_runs} runs with a {low:g}-{high:g} s deadline",
                ],
                ["unknown-run signals", str(kinds[SendKind.UNKNOWN]), ""],
                ["re-registrations", str(len(plan.reregistered)), "while signals are sent"],
            ],
            indent=2,
        ),
        "",
    ]

    columns = list(SendKind)
    counts = Counter((o.send.kind, _status(o)) for o in execution.outcomes)
    statuses: list[DeliveryStatus | None] = [
        DeliveryStatus.DELIVERED,
        DeliveryStatus.ALREADY_DELIVERED,
        DeliveryStatus.EXPIRED,
        DeliveryStatus.NOT_FOUND,
    ]
    if any(o.result is None for o in execution.outcomes):
        statuses.append(None)
    outcome_rows = [
        [
            "  " + ("ERROR" if status is None else status.name),
            *(str(counts[(kind, status)]) for kind in columns),
            str(sum(counts[(kind, status)] for kind in columns)),
        ]
        for status in statuses
    ]
    lines += [
        *_table(["Delivery outcomes", *(k.value for k in columns), "total"], outcome_rows),
        "",
    ]

    latency_rows = []
    total_calls = 0
    for operation, samples in execution.latencies.items():
        total_calls += len(samples)
        latency_rows.append(
            [
                "  " + operation,
                str(len(samples)),
                _ms(_percentile(samples, 50)),
                _ms(_percentile(samples, 99)),
                _ms(max(samples, default=math.nan)),
            ]
        )
    lines += [*_table(["Latency", "calls", "p50 ms", "p99 ms", "max ms"], latency_rows), ""]

    seconds = execution.work_seconds
    rate = total_calls / seconds if seconds > 0 else math.nan
    lines += [
        f"Throughput: {total_calls:,} store calls in {seconds:.2f} s = {rate:,.0f} ops/s "
        f"(not counting {execution.waited_seconds:.2f} s spent waiting for deadlines)",
        "",
        "Invariants",
    ]
    check_rows = []
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL"
        if color:
            verdict = f"\033[{32 if check.passed else 31}m{verdict}\033[0m"
        check_rows.append(["  " + verdict, check.description, f"{check.held}/{check.total}"])
    lines += _table([], check_rows)
    for check in checks:
        lines += [f"    FAIL {check.description}: {failure}" for failure in check.failures]
    failed = sum(not check.passed for check in checks)
    lines += [
        "",
        f"Result: all {len(checks)} invariants PASS"
        if not failed
        else f"Result: {failed} of {len(checks)} invariants FAIL",
    ]
    return "\n".join(lines)


def _racing_overlap(execution: Execution) -> int:
    """How many racing pairs had their two delivery calls in flight at the same time."""
    spans: dict[WaiterKey, list[tuple[float, float]]] = {}
    for outcome in execution.outcomes:
        if outcome.send.kind is SendKind.RACING:
            spans.setdefault(outcome.send.key, []).append(outcome.span)
    return sum(
        len(pair) == 2 and max(pair[0][0], pair[1][0]) < min(pair[0][1], pair[1][1])
        for pair in spans.values()
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: int = 0) -> list[str]:
    """Align columns: the first and text columns to the left, numeric columns to the right."""
    body = [list(row) for row in rows]
    everything = [list(headers), *body] if headers else body
    if not everything:
        return []
    count = len(everything[0])
    widths = [max(len(_visible(row[i])) for row in everything) for i in range(count)]
    right = [i > 0 and all(_is_number(row[i]) for row in body) for i in range(count)]
    lines = []
    for row in everything:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - len(_visible(cell)))
            cells.append(pad + cell if right[i] else cell + pad)
        lines.append(" " * indent + "  ".join(cells).rstrip())
    return lines


def _visible(cell: str) -> str:
    # Colour escapes take no room on screen.
    for code in ("\033[31m", "\033[32m", "\033[0m"):
        cell = cell.replace(code, "")
    return cell


def _is_number(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).replace(",", "").replace("/", "", 1).isdigit()


def _percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


# -- entry point ---------------------------------------------------------------------------


def run_demo(
    database_url: str | URL | None,
    *,
    schema: str | None = None,
    runs: int = 300,
    threads: int = 8,
    seed: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo and print its report; return the exit code.

    Args:
        database_url: The database to migrate and use; ``None`` starts an embedded server in a
            temporary directory and removes it afterwards (also on Ctrl-C or SIGTERM).
        schema: Schema for flowsignals' table (created by the migration if missing).
        runs: Workflow runs; each parks two steps.
        threads: Concurrent callers, at least 2 (racing pairs need two threads).
        seed: Seed of the workload plan; ``None`` draws one (printed, to repeat the shape).
        out: Where the report goes; default ``sys.stdout``.

    Returns:
        0 if every invariant held, 1 if one failed or the embedded server could not start,
        2 if no URL was given and the ``embedded`` extra is missing.

    Raises:
        sqlalchemy.exc.DBAPIError: The database is unreachable or refused the migration.
    """
    stream = sys.stdout if out is None else out
    if threads < 2:
        raise ValueError("threads must be at least 2: the racing pairs need two callers")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    plan = make_plan(runs, seed)
    print(f"flowsignals demo: {runs} approval runs, {threads} threads, seed {seed}", file=stream)
    if database_url is not None:
        return _run_on(database_url, plan, schema, threads, stream)

    try:
        server = EmbeddedPostgres()
    except EmbeddedPostgresUnavailableError:
        print(_MISSING_EXTRA_MESSAGE, file=sys.stderr)
        return 2
    print("database: starting an embedded PostgreSQL server in a temporary directory", file=stream)
    stream.flush()
    with _sigterm_as_interrupt():
        try:
            server.start()
        except RuntimeError as exc:
            print(f"flowsignals: error: the embedded server did not start: {exc}", file=sys.stderr)
            return 1
        try:
            return _run_on(server.url, plan, schema, threads, stream, label="embedded, ")
        finally:
            server.stop()
            print("database: embedded server stopped and removed", file=stream)


def _run_on(
    database_url: str | URL,
    plan: Plan,
    schema: str | None,
    threads: int,
    stream: TextIO,
    label: str = "",
) -> int:
    store = PostgresSignalStore(
        database_url,
        schema=schema,
        application_name="flowsignals-demo",
        # One pooled connection per sender thread, plus room for the main thread's reads.
        engine_options={"pool_size": threads, "max_overflow": 2},
    )
    with store:
        shown = store.engine.url.render_as_string(hide_password=True)
        print(f"database: {label}{shown}", file=stream)
        migrations.upgrade(store.engine, schema)
        print(f"schema: migrated to {migrations.current(store.engine, schema)}", file=stream)
        print("", file=stream)
        stream.flush()
        execution = execute(plan, store, threads)
    checks = verify(plan, execution)
    color = stream.isatty() and "NO_COLOR" not in os.environ
    print(render_report(plan, execution, checks, color=color), file=stream)
    stream.flush()
    return 0 if all(check.passed for check in checks) else 1


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so the embedded server is stopped on either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
